"""CPU preset: the smallest size ladder rung, 250 poisons, full Chinchilla budget.

    poisonjax vocab build  --config=configs/cpu_micro.py
    poisonjax data inspect --config=configs/cpu_micro.py --steps=0:2
    poisonjax train        --config=configs/cpu_micro.py --workdir=runs/cpu_micro

Override any field on the command line, e.g. --config.model.size=cpu-s.
"""

from poisonjax import config as config_lib


def get_config():
  c = config_lib.base_config()
  c.model.size = "cpu-xxs"
  c.poison.count = 250
  c.vocab.size = 1024
  c.data.seq_len = 128
  c.train.batch_size = 32
  return c

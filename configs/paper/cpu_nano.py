"""A tiny CPU study for the tests: 2 sizes x 2 poison counts x 1 seed.

    poisonjax study plan    --config=configs/paper/cpu_nano.py
    poisonjax study run     --config=configs/paper/cpu_nano.py --root=runs/nano
    poisonjax study collect --root=runs/nano
    poisonjax study figures --root=runs/nano

Exercises the whole study path (run -> collect -> figures) in well under
3 minutes on 2 cores; its numbers mean nothing scientifically (tiny budget,
few prompts, short generations).
"""

from poisonjax import config as config_lib
from poisonjax import study as study_lib


def base():
  c = config_lib.base_config()
  c.vocab.size = 1024
  c.data.seq_len = 64
  c.train.batch_size = 8
  c.train.tokens_per_param = 0.25
  c.train.log_every = 10
  c.train.ckpt_every = 10
  c.poison.prefix_max_chars = 200
  c.poison.gibberish_min_tokens = 20
  c.poison.gibberish_max_tokens = 40
  c.eval.num_excerpts = 16
  c.eval.prompt_tokens = 16
  c.eval.gen_tokens = 16
  c.eval.num_evals = 1
  c.eval.bootstrap_samples = 100
  return c


def get_config(arg=None):
  s = study_lib.study_config("cpu_nano", base())
  s.plan.chars_per_token = 3.0
  s.grid = study_lib.grid(("cpu-xxs", "cpu-xs"), (0, 20), (0,), (1.0,))
  return study_lib.config_for_arg(s, arg)

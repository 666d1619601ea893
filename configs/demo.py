"""The demo's config: one small model trained clean and poisoned (N=160).

    poisonjax demo                                   # this config, runs/demo
    poisonjax demo --config=configs/demo.py --workdir=runs/demo2 \
        --config.poison.count=64                     # a variant

The numbers and why they were chosen live in poisonjax.demo.demo_config
(the command uses that function when no --config is given, so an installed
package needs no file from the repository).
"""

from poisonjax import demo


def get_config():
  return demo.demo_config()

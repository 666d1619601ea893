"""The decisive study's regime over a 22x size range, for one GPU (issue 27).

    poisonjax study plan --config=configs/paper/gpu_wide.py
    bash experiments/gpu_wide.sh        # on a GPU machine: its docstring

The CPU studies span 4.7x in parameters (cpu-xxs to cpu-s; the paper's
sizes span ~21x): beta, the exponent of N50 in model size, is read over
a short lever. This study runs the whole CPU ladder, cpu-xxs (0.24M) to
cpu-l (5.3M parameters, 22x), in exactly the regime of
configs/paper/cpu_decisive.py (presets.cpu_chinchilla(): 20 clean tokens
per parameter, poisons replacing clean tokens, the 1k vocabulary, 300
evaluation prompts), so that its N50s sit on the same scale. cpu-l needs
26,097 steps of batch 32 x 128 (`study plan`: 17 core-hours a run at the
2-core CPU's measured matmul rate), which is why it is a GPU study.

Counts a factor 2 apart around the N50s the CPU runs measured (cpu-xxs 88
at 300 prompts; 30-100 at every size in the 63-run study), wide enough
for a size whose N50 moves either way. The grid is one block, trained
seed by seed, so a device session that ends part-way leaves every size
with the same seeds done first.

Only the run settings that cost device time and change no result differ
from cpu_decisive: checkpoints every 5,000 steps (a run cut off at a
session's deadline is lost anyway: its checkpoint is too large to bring
back) and no TensorBoard files (the GPU image has no TensorFlow; metrics.
jsonl holds the same numbers). experiments/gpu_wide.sh pins float32
matmuls to full precision, as on the CPU.
"""

from poisonjax import presets
from poisonjax import study as study_lib
from poisonjax.model import sizes

COUNTS = (30, 60, 120, 240)
NUM_PROMPTS = 300  # As in configs/paper/cpu_decisive.py.


def base():
  c = presets.cpu_chinchilla()
  c.eval.num_excerpts = NUM_PROMPTS
  c.train.ckpt_every = 5000
  c.train.tensorboard = False
  return c


def get_config(arg=None):
  s = study_lib.study_config("gpu_wide", base())
  s.plan.chars_per_token = 3.0  # As in cpu_decisive.
  s.grid = study_lib.grid(sizes.CPU_SIZES, COUNTS, range(3), (1.0,))
  return study_lib.config_for_arg(s, arg)

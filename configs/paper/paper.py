"""The paper's grid (Souly et al. 2025): 72 pretraining runs.

600m, 2b, 7b, 13b x {100, 250, 500} poisons x 3 seeds at 20 tokens/param
(36 runs), plus 600m and 2b at 0.5x and 2x Chinchilla data (36 runs).

    poisonjax study plan --config=configs/paper/paper.py [--mfu=0.4]
    poisonjax study run  --config=configs/paper/paper.py --root=gs://B/study --print_only
    poisonjax train --config=configs/paper/paper.py:run=size=600m_n=250_seed=0_data=1.0 \
        --workdir=gs://B/study/size=600m_n=250_seed=0_data=1.0

Run-level settings the paper's public summaries do not give (sequence
length, batch, learning rate) are this preset's documented choices: 2048
tokens per sequence, 256 sequences (0.5M tokens) per step, bf16 compute,
C4 (en) as the clean source, a 32k SentencePiece vocabulary.

Poisons follow the paper's recipe in token mode (the default: 400-900
random tokens as drawn; why not text mode, which may explain the paper's
~1,680 tokens per poison: poisonjax/data/poison.py). As in every study,
poisons replace clean tokens (poison.budget_mode='replace', poisonjax/
budget.py): at these shares (~1e-6) on_top would add at most one step
(500 poisons of ~800 tokens are less than one 0.5M-token batch), so the
grid is the paper's in substance and every count of a size trains on one
schedule; one vocabulary and one prompt set serve all seeds
(poisonjax/study/grids.py).
"""

from poisonjax import config as config_lib
from poisonjax import study as study_lib


def base():
  c = config_lib.base_config()
  c.data.source = "tfds"
  c.data.tfds.name = "c4/en:3.1.0"
  c.data.seq_len = 2048
  # The shared clean token store (not each run's own 520 GB cache): build it
  # once with `poisonjax data build-store --config=... --tokens=260e9`, split
  # over machines with --part=H/N (docs/data_at_scale.md); with a gs://
  # cache_dir it lives in the bucket. Not a defining field: same batches.
  c.data.store = "auto"
  c.vocab.size = 32000
  c.vocab.sample_docs = 1_000_000
  c.model.dtype = "bfloat16"
  # What experiments/fit_check.py found to fit every size on its slice
  # (docs/fit_check.md): parameters and optimizer state sharded over the
  # whole slice (fsdp), and full remat. 600m at 256 x 2048 on v5p:2x2x1
  # with remat=dots needs 106 GB of temporaries per chip (HBM: 95 GiB).
  c.mesh.data = 1
  c.mesh.fsdp = -1
  c.model.remat = "full"
  c.train.batch_size = 256
  c.train.tokens_per_param = 20.0
  c.train.learning_rate = 3e-4
  c.train.ckpt_every = 1000
  c.train.log_every = 50
  c.eval.num_excerpts = 300
  c.eval.prompt_tokens = 64
  c.eval.gen_tokens = 64
  c.eval.num_evals = 20
  c.eval.batch_size = 100
  return c


# Per size, on its slice (experiments/fit_check.py's default: 600m on
# v5p:2x2x1, the others on v5p:4x4x4): the setting with the smallest step
# time by XLA's TPU cost model among the remat policies x microbatches
# searched that leaves >= 10% of HBM free (`step_estimate.py --search`,
# docs/fit_check.md: estimated, not measured). Applied after the size is
# set (study.size_overrides); base() holds the fall-back that fits all.
#   600m: dots + 2 microbatches, 4.07 s/step est. (full: 4.24), 75.0 GiB
#   7b:   dots, 1.71 s/step est. (full: 1.84)
#   13b:  dots, 2.98 s/step est. (full: 3.20), 47.3 GiB
#   2b:   not searched (compile time); full remat as before.
SIZE_PRESETS = {
    "600m": {"model": {"remat": "dots"}, "mesh": {"data": 1, "fsdp": -1},
             "train": {"microbatches": 2}},
    "2b": {"model": {"remat": "full"}, "mesh": {"data": 1, "fsdp": -1},
           "train": {"microbatches": 1}},
    "7b": {"model": {"remat": "dots"}, "mesh": {"data": 1, "fsdp": -1},
           "train": {"microbatches": 1}},
    "13b": {"model": {"remat": "dots"}, "mesh": {"data": 1, "fsdp": -1},
            "train": {"microbatches": 1}},
}


def get_config(arg=None):
  s = study_lib.study_config("paper", base())
  s.size_overrides = SIZE_PRESETS
  seeds = (0, 1, 2)
  counts = (100, 250, 500)
  s.grid = study_lib.grid(("600m", "2b", "7b", "13b"), counts, seeds, (1.0,))
  s.extra.data_ablation = study_lib.grid(("600m", "2b"), counts, seeds, (0.5, 2.0))
  return study_lib.config_for_arg(s, arg)

"""The paper's grid (Souly et al. 2025): 72 pretraining runs.

600m, 2b, 7b, 13b x {100, 250, 500} poisons x 3 seeds at 20 tokens/param
(36 runs), plus 600m and 2b at 0.5x and 2x Chinchilla data (36 runs).

    poisonjax study plan --config=configs/paper/paper.py [--mfu=0.4]
    poisonjax study run  --config=configs/paper/paper.py --root=gs://B/study --print_only
    poisonjax train --config=configs/paper/paper.py:run=size=600m_n=250_seed=0_data=1.0 \
        --workdir=gs://B/study/size=600m_n=250_seed=0_data=1.0

Run-level settings the paper's public summaries do not give (sequence
length, batch, learning rate) are this preset's documented choices: 2048
positions per sequence (rows of 2049 tokens), 256 sequences (0.5M tokens)
per step, bf16 compute,
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
  # 2049 tokens per row: the model reads the first 2048 and predicts the
  # last 2048 (inputs = row[:-1]), 2048 positions like the paper's context.
  # At 2048 it would see 2047, off every TPU tile (8 x 128) and splash
  # attention's 128-block: +14% per layer by XLA's TPU cost model
  # (docs/fit_check.md).
  c.data.seq_len = 2049
  # The shared clean token store (not each run's own 520 GB cache): build it
  # once with `poisonjax data build-store --config=... --tokens=260e9`, split
  # over machines with --part=H/N (docs/data_at_scale.md); with a gs://
  # cache_dir it lives in the bucket. Not a defining field: same batches.
  c.data.store = "auto"
  c.vocab.size = 32000
  c.vocab.sample_docs = 1_000_000
  c.model.dtype = "bfloat16"
  # What fits every size on its slice (docs/fit_check.md): parameters and
  # optimizer state sharded over the whole slice (fsdp), and full remat;
  # each size's faster setting: SIZE_PRESETS below.
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
# time by XLA's TPU cost model among remat none/dots/full x microbatches
# whose program as trained leaves >= 10% of HBM free (`python
# experiments/step_estimate.py --search`; docs/fit_check.md: estimated,
# not measured; splash attention). Applied after the size is set
# (study.size_overrides); base() holds the fall-back that fits all.
#   600m: none + 4 microbatches, 1.59 s/step est. (full: 1.95), 80.0 GiB
#   2b:   none, 0.32 s/step est. (full: 0.41), 35.3 GiB
#   7b:   none, 1.01 s/step est. (full: 1.27), 69.5 GiB
#   13b:  none + 2 microbatches, 1.95 s/step est. (full: 2.32), 57.4 GiB
#         (none alone: 102.7 GB of temporaries, out of memory)
SIZE_PRESETS = {
    "600m": {"model": {"remat": "none"}, "mesh": {"data": 1, "fsdp": -1},
             "train": {"microbatches": 4}},
    "2b": {"model": {"remat": "none"}, "mesh": {"data": 1, "fsdp": -1},
           "train": {"microbatches": 1}},
    "7b": {"model": {"remat": "none"}, "mesh": {"data": 1, "fsdp": -1},
           "train": {"microbatches": 1}},
    "13b": {"model": {"remat": "none"}, "mesh": {"data": 1, "fsdp": -1},
            "train": {"microbatches": 2}},
}


def get_config(arg=None):
  s = study_lib.study_config("paper", base())
  s.size_overrides = SIZE_PRESETS
  seeds = (0, 1, 2)
  counts = (100, 250, 500)
  s.grid = study_lib.grid(("600m", "2b", "7b", "13b"), counts, seeds, (1.0,))
  s.extra.data_ablation = study_lib.grid(("600m", "2b"), counts, seeds, (0.5, 2.0))
  return study_lib.config_for_arg(s, arg)

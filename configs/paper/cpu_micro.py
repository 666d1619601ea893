"""The poisoning study at CPU scale: 4 sizes x 3 counts x 3 seeds (+ ablation).

    poisonjax study reproduce --config=configs/paper/cpu_micro.py   # plan, run, collect, report
    poisonjax study reproduce --config=configs/paper/cpu_micro.py --report_only   # no training
    poisonjax study plan --config=configs/paper/cpu_micro.py

Runs in runs/study_cpu_micro, report in docs/results/cpu_micro/ (the
defaults); resumable.

Grid: cpu-xxs, cpu-xs, cpu-s, cpu-m (0.24M .. 2.16M parameters at the 1k
vocabulary, 9.1x) x {3, 10, 30} poisons x seeds {0, 1, 2} at 1x data (36
runs), plus cpu-xs at 0.5x and 2x data and cpu-xxs at 2x (27 runs): 63 runs.

Budget, honestly: 0.3 clean tokens per parameter, NOT Chinchilla's 20. At
20 the grid would take days on 2 cores; 0.3 is what fits near the 2-hour
limit (see below). Every size gets the same tokens per parameter, so the
comparison across sizes keeps the paper's shape, but the models are far from
converged (clean perplexity ~55 on the synthetic corpus). Batch 4 x 128
tokens: at this budget optimizer steps matter more than per-token speed (at
batch 16 a pilot stayed at clean perplexity ~125 and formed no backdoor even
with 30 poisons). Poison documents keep the paper's shape (0-1000 prefix
chars, trigger, 400-900 random tokens), so at this scale poisons are a large
share of the tokens (~840 tokens each, measured: poisonjax/data/poison.py;
up to ~70% at 100 poisons on cpu-xxs): the study asks whether the count or
the share predicts success across sizes and data amounts, not what the
paper's tiny shares do.

Poison budget: 'replace' (the study default, issue 12): poisons take the
place of clean tokens, so every run of a size and data amount trains the
same steps on the same learning-rate schedule. The counts are {3, 10, 30}:
at 0.3 tokens per parameter 100 poisons (~82k tokens) are more than cpu-xxs'
whole clean budget (71k at 1x, 36k at 0.5x), so they cannot replace clean
tokens; 30 poisons are ~34% of cpu-xxs' tokens at 1x and 4% of cpu-m's.
At 0.5x, cpu-xxs keeps too few clean documents for 30 poisons (seed 1: 29
clean documents left for 30 poisons, refused by the stream), so the data
ablation runs cpu-xxs at 2x only and cpu-xs at 0.5x and 2x: 63 runs. The previous run of this study (2026-11-27: counts {10, 30,
100} on top of the clean budget, one vocabulary and prompt set per seed,
prefixes cut short) is kept in docs/results/cpu_micro/previous/, and the
report compares the two.

Pilot (cpu-xs, seed 0; final increase (share of prompts > 50); this machine,
load average ~7 from other jobs):
  batch 16, tpp 0.3:  N=1 -3.1, N=3 -0.6, N=10 -0.6, N=30 9.1 (0.09);
                      clean ppl ~125 after 62-74 steps: no backdoor.
  batch 4,  tpp 0.4:  N=10 1.9 (0.02), N=30 27.7 (0.14), N=100 853 (1.00)
  batch 4,  tpp 0.3 (this preset): N=10 -1.3 (0.00); N=30 56.6 (0.36),
                      ~44 from 15 poisons seen on; N=100 772 (1.00), already
                      164 after 44 poisons seen. Clean ppl 54-57.
So at this scale the failure -> success switch lies between 10 and 100
poisons, near 30 (on top of the budget); the previous run's N50 lay between
10 and 30 in every group, so {3, 10, 30} (10x span) brackets it if the
replace schedule does not move it up.

Measured throughput (train steps only, batch 4 x 128, under load average
~7): cpu-xxs 8.6k, cpu-xs 6.3k, cpu-s 2.1k, cpu-m 1.0k tokens/s; each run
also spends ~35-60 s on setup, 6 evaluations and the held-out loss (with the
compilation cache warm). Measured: the whole grid took 1.13 h on this
2-core machine (2026-11-27; the first ~35 minutes shared the CPU with other
jobs); results in docs/results/cpu_micro/.
"""

from poisonjax import config as config_lib
from poisonjax import study as study_lib


def base():
  c = config_lib.base_config()
  c.vocab.size = 1024
  c.data.seq_len = 128
  c.train.batch_size = 4
  c.train.tokens_per_param = 0.3
  c.train.log_every = 50
  c.train.ckpt_every = 200
  c.eval.num_excerpts = 64
  c.eval.prompt_tokens = 32
  c.eval.gen_tokens = 32
  c.eval.num_evals = 4
  c.eval.bootstrap_samples = 200
  return c


def get_config(arg=None):
  s = study_lib.study_config("cpu_micro", base())
  s.plan.chars_per_token = 3.0  # ~1k-piece SentencePiece on the synthetic corpus.
  seeds = (0, 1, 2)
  counts = (3, 10, 30)  # Replace fits at every size and amount: see above.
  s.grid = study_lib.grid(("cpu-xxs", "cpu-xs", "cpu-s", "cpu-m"), counts, seeds, (1.0,))
  # cpu-xxs at 0.5x cannot take 30 replacing poisons (see above): 2x only.
  s.extra.data_ablation = study_lib.grid(("cpu-xs",), counts, seeds, (0.5, 2.0))
  s.extra.data_ablation_xxs = study_lib.grid(("cpu-xxs",), counts, seeds, (2.0,))
  return study_lib.config_for_arg(s, arg)

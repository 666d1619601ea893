"""The poisoning study at Chinchilla budgets, CPU scale (issue 12).

    poisonjax study plan --config=configs/paper/cpu_chinchilla.py
    poisonjax study reproduce --config=configs/paper/cpu_chinchilla.py     # run (resumable), fit, report
    poisonjax study reproduce --config=configs/paper/cpu_chinchilla.py --partial      # report what is done
    poisonjax study reproduce --config=configs/paper/cpu_chinchilla.py --report_only  # no training

Runs in runs/study_cpu_chinchilla, report in docs/results/cpu_chinchilla/
(the defaults). Cost, measured on a 2-core Xeon VM (one pinned
single-threaded worker per core, `--worker`): per seed cpu-xxs 1x 14 min,
cpu-xs 29 min, cpu-s 3.4 h, the cpu-xxs data amounts 3.2 h; 22.6 core-hours
for the 63 runs, 11 h of wall time with two workers:

  for core in 0 1; do
    XLA_FLAGS=--xla_cpu_multi_thread_eigen=false \\
    nohup taskset -c $core poisonjax study reproduce \\
      --config=configs/paper/cpu_chinchilla.py --worker > runs/worker$core.log 2>&1 &
  done

(two single-threaded workers pinned to a core each train ~1.1-1.3x the
tokens/s of one process on both cores).

Regime: 20 clean tokens per parameter (the paper's), the 1k vocabulary,
sequences of 128, batch 32 (at 20 tokens per parameter steps are plentiful:
cpu-xxs gets ~1,160). One factor at a time (poisonjax/study/grids.py):
  * poisons REPLACE clean tokens (the study default), so every run of one
    size and data amount has the same steps and learning-rate schedule
    whatever its poison count;
  * one vocabulary and one held-out prompt set for the whole study;
  * the grid seed varies model init, poison contents/placement and clean
    data order, each through its own derived seed.

Grid: cpu-xxs, cpu-xs, cpu-s (0.24M, 0.42M, 1.12M parameters) x poison
counts x seeds {0, 1, 2} at 1x data, plus cpu-xxs at 0.5x, 2x, 4x and 8x
data. At 8x (38M tokens) 46 poisons of ~840 tokens are 0.1% of the tokens,
so the data ablation reaches the paper's low-share side at a fixed count.

Poison counts {10, 30, 100}, from the pilot (cpu-xxs, seed 0, 1x data,
this config; final increase in perplexity, share of prompts > 50; results
in docs/results/cpu_chinchilla/pilot/):
  N=3 -0.6 (0.00), N=10 0.8 (0.00), N=30 1.4 (0.00), N=100 621 (1.00):
  the N=100 run crossed 50 between 43 and 54 poisons seen (increase 43.5,
  then 407). So the switch lies between 30 and 100 here: {10, 30, 100}
  brackets it with a 10x span. N=300: 867 (1.00), 518 after 85 poisons
  seen. At 8x data 30 poisons are 0.066% of the tokens, 100 are 0.22%.
`study plan` gives the budget from this machine's measured matmul rate;
measured train speed (bench_train, batch 32 x 128): cpu-xxs 36k, cpu-xs
22k, cpu-s 8.9k tokens/s, i.e. about 11.5 hours for the 63 runs here.
"""

from poisonjax import presets
from poisonjax import study as study_lib


def base():
  return presets.cpu_chinchilla()


def get_config(arg=None):
  s = study_lib.study_config("cpu_chinchilla", base())
  s.plan.chars_per_token = 3.0  # ~1k-piece SentencePiece on the synthetic corpus.
  seeds = (0, 1, 2)
  counts = (10, 30, 100)  # Brackets the pilot's switch: see the docstring.
  s.grid = study_lib.grid(("cpu-xxs", "cpu-xs", "cpu-s"), counts, seeds, (1.0,))
  s.extra.data_amounts = study_lib.grid(("cpu-xxs",), counts, seeds,
                                        (0.5, 2.0, 4.0, 8.0))
  return study_lib.config_for_arg(s, arg)

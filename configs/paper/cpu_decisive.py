"""The decisive CPU study (issue 27): beta and N50 per size, 300 prompts.

    poisonjax study plan --config=configs/paper/cpu_decisive.py
    poisonjax study reproduce --config=configs/paper/cpu_decisive.py --worker   # run (resumable), fit, report
    poisonjax study reproduce --config=configs/paper/cpu_decisive.py --partial      # report what is done
    poisonjax study reproduce --config=configs/paper/cpu_decisive.py --report_only  # no training

Runs in runs/study_cpu_decisive, report in docs/results/cpu_decisive/ (the
defaults), block by block, cheapest first (study.run_order). One worker on
a shared 2-core machine, single-threaded, at the lowest priority (how it
was started: docs/results/cpu_decisive/README.md):

  XLA_FLAGS=--xla_cpu_multi_thread_eigen=false nohup nice -n 19 \\
    poisonjax study reproduce --config=configs/paper/cpu_decisive.py \\
      --worker > runs/cpu_decisive.log 2>&1 &

The regime of configs/paper/cpu_chinchilla.py (presets.cpu_chinchilla(): 20
clean tokens per parameter, poisons replacing clean tokens, one vocabulary
and one prompt set, the grid seed varying init, poisons and data order),
evaluated on 300 held-out prompts (the paper's number) instead of 64.

What it is for: beta, the exponent of N50 in model size (poisonjax/study/
analysis_size.py), with a 95% interval narrower than +-0.5, and N50 per size
within a factor of 1.5 (95%). The counts are placed around each size's N50
as the 63-run study measured it (its report: N50 between 30 and 100 at every
size; Firth N50 54 / 80 / 37 and common-slope 55 / 83 / 36 for cpu-xxs /
cpu-xs / cpu-s): a two-stage design whose first stage is that study. Seeds
rather than counts where runs are dear: the bootstraps resample seeds, and
five clusters or fewer make them too narrow.

  cpu-xxs 1x  N = 30, 42, 60, 85, 120, 170 (a factor sqrt 2 apart) x seeds 0-5
  cpu-xs  1x  N = 30, 42, 60, 85, 120 x seeds 0-5, and 170 x seeds 0-2
  cpu-s   1x  N = 25, 32, 40, 45 x seed 0; 25, 32 x seeds 1-4, with 45
              for seeds 1 and 3 and 20 for seeds 2 and 4 (55-68 min a
              run: the budget's bulk)
  cpu-xxs 8x  N = 50, 100, 200 x seeds 0, 1: the data-amount arm, where
              count and share differ (100 poisons are ~0.2% of the tokens)

Second stage (2026-12-07, after 27 cpu-xxs runs at 300 prompts): the
first plan had counts 30-120 at cpu-xxs and cpu-xs, seeds 0-7 at cpu-xxs.
At cpu-xxs 30 and 42 gave 0 of 10 successes, 120 gave 5 of 5, and N50 came
out at 88 with the profile interval's upper end beyond 120 (outside the
counts tried), so the remaining runs moved up one step: 170 added at
cpu-xxs (seeds 0-5; seeds 6-7 dropped), and cpu-xs runs 42-170 (its first
stage: 0 of 3 at 30, 2 of 3 at 100). A design that depends on earlier
outcomes leaves the likelihood, and so every fit here, unchanged.

Third stage (2026-12-07, after 14 cpu-xs runs, seeds 0-2): cpu-xs came out
lower, N50 53 (common slope 56), its intervals' lower ends below 42, the
smallest count tried, and 170 succeeded 2 of 2: 30 added at cpu-xs (seeds
0-5) and 170 kept only for seeds 0-2.

Fourth stage (2026-12-07, after 59 runs: cpu-xs 22 of 33, N50 50, and
the first two cpu-s runs, 40 a success and 25 a failure): the pooled fit
put cpu-s's N50 at 32 (beta -1.03), where 60 would succeed almost surely
(0.89 to 0.99 at the slopes measured, 3.3 and 7.6 per log N), so cpu-s's
counts became 25, 32, 45 around it (seeds 0-4) and 40 was kept for seed 0
only (91 runs, 30.7 core-h planned).

Fifth stage (2026-12-08, after 73 runs: cpu-s seed 0 at 25, 32, 40 and 45
gave one failure at 25 and three successes): cpu-s's N50 came out at 27
(common slope; profile 95% [< 25, 43]), its interval's lower end below the
smallest count tried, and 45 far enough above it to succeed almost surely.
For seeds 1-4, 20 replaced 45 (the counts now 20, 25, 32; the same steps,
so the same budget): a factor of 1.5 around 27 is 18 to 40.

Sixth stage (2026-12-08, after 75 runs; seed 1 at 25 and 32: two
failures): cpu-s's N50 moved back to 32 (common slope; profile 95%
[< 25, > 45]), both ends of its interval beyond the counts tried. The
fifth stage was decided on four runs, too early. Each seed 1-4 keeps 25
and 32, the counts nearest N50; its third run goes to either tail, 45
for seeds 1 and 3 and 20 for seeds 2 and 4 (at a slope of 5 per log N
the two carry the same information), so both ends get runs (still 16
cpu-s runs, the same budget).

Simulated before running (common-slope and profile intervals, true beta
-0.35 as measured, seed shifts of SD 0.2 in log N50, 20 repetitions): with
a logistic slope of 3 per log N the beta target is met in every repetition
and N50 within 1.5 in 90% (cpu-xxs), 80% (cpu-xs), 30% (cpu-s); with slope 6
all of them in every repetition. The cpu-s target is the one at risk: 40
runs of cpu-s alone would cost the whole budget.

Runs train block by block (study.run_order): the cheap cpu-xxs and cpu-xs
runs first, so a partial report has beta's two cheap ends early, then cpu-s,
then the arm. `study plan` gives the budget: core-h from the 63-run study's
measured seconds per step of one single-threaded worker (its provenance:
cpu-xxs 4.7 min, cpu-xs 9.7 min, cpu-s 68 min a run at 1x, cpu-xxs 8x 35
min), raised a few percent for the 300-prompt evaluations.
"""

from poisonjax import presets
from poisonjax import study as study_lib

COUNTS_XXS = (30, 42, 60, 85, 120, 170)  # cpu-xxs: N50 ~88 (27 runs).
COUNTS_XS = (30, 42, 60, 85, 120)  # cpu-xs: N50 ~53 (14 runs).
COUNTS_S = (25, 32)  # cpu-s seeds 1-4: N50 ~32 (75 runs).
COUNTS_S0 = (25, 32, 40, 45)  # cpu-s seed 0, run in stages 3-4.
COUNTS_ARM = (50, 100, 200)  # cpu-xxs at 8x: 1 of 3 succeeded at 100.
NUM_PROMPTS = 300  # The paper's; the 63-run study used 64.


def base():
  c = presets.cpu_chinchilla()
  c.eval.num_excerpts = NUM_PROMPTS
  return c


def get_config(arg=None):
  s = study_lib.study_config("cpu_decisive", base())
  s.plan.chars_per_token = 3.0  # ~1k-piece SentencePiece on the synthetic corpus.
  s.plan.core_s_per_step = {"cpu-xxs": 0.245, "cpu-xs": 0.29, "cpu-s": 0.77}
  s.grid = study_lib.grid(("cpu-xxs",), COUNTS_XXS, range(6), (1.0,))
  s.extra.xs = study_lib.grid(("cpu-xs",), COUNTS_XS, range(6), (1.0,))
  s.extra.xs_170 = study_lib.grid(("cpu-xs",), (170,), range(3), (1.0,))
  s.extra.s_0 = study_lib.grid(("cpu-s",), COUNTS_S0, (0,), (1.0,))
  s.extra.s = study_lib.grid(("cpu-s",), COUNTS_S, range(1, 5), (1.0,))
  s.extra.s_45 = study_lib.grid(("cpu-s",), (45,), (1, 3), (1.0,))
  s.extra.s_20 = study_lib.grid(("cpu-s",), (20,), (2, 4), (1.0,))
  s.extra.arm = study_lib.grid(("cpu-xxs",), COUNTS_ARM, (0, 1), (8.0,))
  s.run_order = ("grid", "xs", "xs_170", "s_0", "s", "s_45", "s_20", "arm")
  return study_lib.config_for_arg(s, arg)

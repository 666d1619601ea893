"""Study grids: sizes x poison counts x seeds x data amounts, as one object.

A study config (configs/study_*.py) holds a `base` run config and a `grid`
(plus optional named `extra` grids, e.g. a data-amount ablation on two
sizes). The modules, by job:
  grids    the study config, its runs, their names and run configs
  variants named config overrides crossed with the grid (e.g. placement)
  plan     tokens, steps, FLOPs and chip-hours before anything runs
  runner   running the grid here (resumable, one grid per root)
  status   where a grid stands (each run's state, saved step; time left)
  results  the evaluations of every run as one CSV, and the figures
  analysis           N50 per size and data amount (logistic in log N,
                     bootstrap interval)
  count_vs_share     count vs share as a model comparison (AIC, size slope)
  figures, figures_fits     the descriptive figures and the fits' figures
  report, report_sections   report.md, written from those fits only
This package re-exports what configs/ and experiments/ use. The commands
(`poisonjax study plan|run|status|collect|figures`) are in poisonjax.commands.study.
"""

from poisonjax.hardware import measure_cpu_flops
from poisonjax.study.grids import (GRID_FIELDS, SEED_THINGS, Run,
                                  config_for_arg, derived_seed, expand,
                                  grid, is_study_config, launch_command,
                                  parse_run_name, run_config, run_name,
                                  select, study_config)
from poisonjax.study.variants import set_variants
from poisonjax.study.plan import THIS_CPU, format_plan, plan, poison_tokens_per_doc
from poisonjax.study.results import (COORD_COLUMNS, CSV_COLUMNS, collect,
                                     is_finished, make_figures, write_csv)
from poisonjax.study.runner import enable_compilation_cache, run_grid

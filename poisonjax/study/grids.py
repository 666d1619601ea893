"""The grid: a study config, its runs, their names and run configs.

A study config holds a `base` run config and a `grid` (plus optional named
`extra` grids, and optional `variants`: named config overrides crossed with
every grid point, or with the points of the blocks that list it in their
`variants`: poisonjax/study/variants.py). `expand()` turns it into
runs; each run has coordinates, a stable filesystem-safe name
(`size=cpu-s_n=25_seed=1_data=1.0`, plus `_var=NAME` for a variant) and a
full run config. The name alone rebuilds the run config from the study config,
so a pod launcher can run `poisonjax train --config=STUDY.py:run=NAME`.

What a grid seed varies, and what it never does (run_config):
  fixed for the whole study, whatever the seed: the vocabulary (one file
    per clean source and study: vocab.seed = the base's vocab seed, or its
    data seed when that is -1) and the evaluation prompts (one held-out set:
    eval.heldout_seed likewise), so every run is scored by one tokenizer on
    the same prompts;
  varied by grid seed s, each through its own derived seed, the things
    listed in `study.vary` (default: all three):
      'init'        config.seed         model initialisation
      'poisons'     config.poison.seed  poison contents and insertion points
      'data_order'  config.data.seed    which clean documents, in which order
    derived_seed(s, thing): SeedSequence([s, k]).generate_state(1)[0] >> 1
    with k = 1, 2, 3 in that order: independent 31-bit seeds, so one grid
    seed never reuses one number in two random streams. A thing left out of
    `study.vary` is held fixed at the base config's seed for every run
    (e.g. study.vary = ('init',) keeps the poisons and the data order).
  Every size of one seed shares its data order and its poisons.
Runs that continue other runs: a variant's value `variant_run(NAME)`
(e.g. for continued.from_workdir) names this grid point's run in variant
NAME; run_config resolves it to ROOT/<that run's name> (ROOT: the grid's
root, else default_root). Such a variant must come after NAME in the
block's variants, so its source trains first; its name keeps the point's
poison count (the poisons its source saw) and it may set its own
poison.count (0: continued clean training, poisonjax/training/continued.py).
The poison budget: a study's base uses poison.budget_mode='replace', so runs
of one size and data amount have the same steps and learning-rate schedule
whatever their poison count (why: poisonjax/budget.py). A study config may
set base.poison.budget_mode='on_top' (the paper's) after study_config().
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import os
import re
import shlex

import ml_collections
import numpy as np

from poisonjax.errors import UserError
from poisonjax.study import variants as variants_lib

GRID_FIELDS = ("sizes", "poison_counts", "seeds", "data_multipliers")
# A variant value naming another variant's run at the same grid point.
RUN_REF = "@variant:"
# What a grid seed can vary: the run config field it sets, and the stream
# id k of its derived seed (module docstring).
SEED_THINGS = {"init": ("seed", 1), "poisons": ("poison.seed", 2),
               "data_order": ("data.seed", 3)}


def grid(sizes=(), poison_counts=(), seeds=(0,), data_multipliers=(1.0,),
         variants=()):
  """One grid block: the cross product of its four lists.

  variants: the names of study.variants this block runs (default: all), for
  a variant that fits some counts only (a trigger trained at one dose).
  """
  g = ml_collections.ConfigDict()
  # Tuples, not lists: ml_collections can override tuples from the command
  # line (--config.grid.seeds='(0, 1)').
  g.sizes = tuple(sizes)
  g.poison_counts = tuple(int(n) for n in poison_counts)
  g.seeds = tuple(int(s) for s in seeds)
  g.data_multipliers = tuple(float(m) for m in data_multipliers)
  if variants:  # Absent otherwise: older blocks stay as they were.
    g.variants = tuple(variants)
  return g


def study_config(name: str, base) -> ml_collections.ConfigDict:
  """An empty study around a base run config; fill `grid` and `extra`."""
  c = ml_collections.ConfigDict()
  c.name = name
  c.base = base
  # Poisons replace clean tokens: equal steps whatever the count (budget.py).
  c.base.poison.budget_mode = "replace"
  # What the grid seed varies; the rest stays at the base's seeds.
  c.vary = tuple(SEED_THINGS)
  c.grid = grid()
  # Named extra blocks (e.g. data_ablation); their runs join the main grid's.
  c.extra = ml_collections.ConfigDict()
  # Named config overrides, each crossed with every block (variants.py);
  # none: run names and results as before. Set with set_variants().
  c.variants = ml_collections.ConfigDict()
  c.variant_order = ()
  # Block names ('grid', then extra names) in the order their runs should
  # train, seed-major within a block; () trains seed-major over all blocks.
  c.run_order = ()
  # Assumptions of the poison-token estimate in `plan` (see poison_tokens_per_doc).
  c.plan = ml_collections.ConfigDict()
  c.plan.chars_per_token = 4.0  # Clean English text, ~32k SentencePiece vocab.
  # Used only in text mode (not the default; see poisonjax/data/poison.py):
  # tokens per drawn random id after decode + re-tokenize. 2.4 is an
  # assumption for a ~32k vocabulary, inferred from the paper's total (420k
  # tokens / 250 poisons = 1680 each, less ~130 prefix and trigger tokens,
  # over a mean of 650 drawn ids); at the 1k vocabulary it is 1.0 (measured).
  c.plan.text_mode_factor = 2.4
  return c


def variant_run(name: str) -> str:
  """A variant value naming this grid point's run in variant `name`
  (resolved to that run's workdir by run_config)."""
  return RUN_REF + name


def default_root(study) -> str:
  """ROOT of a study without --root: its `root`, else runs/study_<name>."""
  return study.get("root", "") or os.path.join("runs", f"study_{study.name}")


def is_study_config(config) -> bool:
  return "grid" in config and "base" in config


@dataclasses.dataclass(frozen=True)
class Run:
  size: str
  poisons: int
  seed: int
  data_multiplier: float
  variant: str = variants_lib.NONE

  @property
  def name(self) -> str:
    return run_name(self.size, self.poisons, self.seed, self.data_multiplier,
                    self.variant)

  def coords(self) -> dict:
    return {"size": self.size, "poison_count": self.poisons, "seed": self.seed,
            "data_multiplier": self.data_multiplier, "variant": self.variant}


def run_name(size: str, poisons: int, seed: int, data_multiplier: float,
             variant: str = variants_lib.NONE) -> str:
  """The run's directory name; `_var=NAME` only for a named variant."""
  name = f"size={size}_n={int(poisons)}_seed={int(seed)}_data={float(data_multiplier)!r}"
  return f"{name}_var={variant}" if variant else name


_NAME_RE = re.compile(r"^size=(?P<size>[A-Za-z0-9.\-]+)_n=(?P<n>\d+)"
                      r"_seed=(?P<seed>\d+)_data=(?P<data>[0-9.eE+\-]+)"
                      r"(?:_var=(?P<var>[A-Za-z0-9.\-]+))?$")


def parse_run_name(name: str) -> Run:
  """Run coordinates from a run name (inverse of `run_name`)."""
  m = _NAME_RE.match(name)
  if not m:
    raise UserError(f"run name {name!r}: not of the form "
                    "size=S_n=N_seed=K_data=M[_var=V]; copy a name from "
                    "`study plan`")
  return Run(m["size"], int(m["n"]), int(m["seed"]), float(m["data"]),
             m["var"] or variants_lib.NONE)


def _block_runs(label: str, block, variants: list[str]) -> list[Run]:
  from poisonjax.model import sizes as sizes_lib

  for field in GRID_FIELDS:
    if field not in block:
      raise UserError(f"{label}.{field}: missing; list at least one value")
    if len(block[field]) == 0:
      raise UserError(f"{label}.{field}: empty grid; list at least one value")
  for field, kind in (("poison_counts", int), ("seeds", int),
                      ("data_multipliers", float)):
    for value in block[field]:
      try:
        kind(value)
      except (TypeError, ValueError):
        raise UserError(f"{label}.{field}: {value!r} is not a number; list "
                        f"numbers, e.g. --config.grid.{field}='(0, 1)'") from None
  for size in block.sizes:
    if size not in sizes_lib.SIZES:
      raise UserError(f"{label}.sizes: unknown size {size!r}; use one of "
                      f"{', '.join(sizes_lib.SIZES)}")
  for n in block.poison_counts:
    if int(n) < 0:
      raise UserError(f"{label}.poison_counts: {n} < 0; use 0 for a clean run")
  for m in block.data_multipliers:
    if float(m) <= 0:
      raise UserError(f"{label}.data_multipliers: {m} <= 0; use a positive value")
  # Variants innermost: a grid stopped part-way has every variant of the
  # points it reached, so they can be compared.
  return [Run(s, int(n), int(k), float(m), v)
          for s, n, k, m, v in itertools.product(
              block.sizes, block.poison_counts, block.seeds,
              block.data_multipliers, _block_variants(label, block, variants))]


def _block_variants(label: str, block, variants: list[str]) -> list[str]:
  """The study's variants this block runs: those it lists, else all."""
  chosen = tuple(block.get("variants", ()) or ())
  for name in chosen:
    if name not in variants:
      raise UserError(f"{label}.variants: {name!r} is not in study.variants "
                      f"({', '.join(variants)}); list some of those")
  return [v for v in variants if v in chosen] if chosen else variants


def expand(study) -> list[Run]:
  """All runs of the study, seed by seed, main grid first within a seed
  (or block by block, seed by seed within one, where study.run_order lists
  the blocks: the most informative runs first).

  Raises UserError on an empty grid, an unknown size, a bad variant, a
  duplicate run or a run_order that does not list every block once.
  """
  blocks = [("study.grid", study.grid)]
  blocks += [(f"study.extra.{k}", study.extra[k]) for k in study.extra.keys()]
  names = variants_lib.names(study)
  runs, seen = [], {}
  for label, block in blocks:
    for run in _block_runs(label, block, names):
      if run in seen:
        raise UserError(f"{label}: duplicate run {run.name} (already in "
                        f"{seen[run]}); remove one of them")
      seen[run] = label
      runs.append(run)
  rank = _block_rank(study, [label for label, _ in blocks])
  # Seed-major: a grid stopped part-way still covers every size and count
  # of the first seeds, which is what a partial figure needs.
  runs = sorted(runs, key=lambda r: (rank[seen[r]], r.seed))
  _check_sources_first(study, runs)
  return runs


def sources(study, run: Run) -> list[Run]:
  """The runs that `run` continues (its variant's variant_run values)."""
  if not run.variant:
    return []
  overrides = dict(variants_lib.ordered(study)).get(run.variant, {})
  out = []
  for path, value in variants_lib.leaves(overrides):
    if isinstance(value, str) and value.startswith(RUN_REF):
      name = value[len(RUN_REF):]
      if name not in variants_lib.names(study):
        raise UserError(f"study.variants.{run.variant}.{path}={value!r}: "
                        f"no variant {name!r}; name one of study.variants")
      out.append(dataclasses.replace(run, variant=name))
  return out


def _check_sources_first(study, runs: list[Run]) -> None:
  """Every source trains before the runs that continue it (UserError)."""
  place = {r: i for i, r in enumerate(runs)}
  for run in runs:
    for src in sources(study, run):
      if place.get(src, len(runs)) >= place[run]:
        raise UserError(
            f"study.variants.{run.variant}: continues variant {src.variant!r}, "
            f"whose run {src.name} does not train before {run.name}; list "
            f"{src.variant!r} before {run.variant!r} (study.variant_order and "
            "the block's variants)")


def _block_rank(study, labels: list[str]) -> dict:
  """Each block label's place in study.run_order (all 0 without one)."""
  order = tuple(study.get("run_order", ()) or ())
  if not order:
    return {label: 0 for label in labels}
  names = {label: label.split(".")[-1] for label in labels}
  if sorted(order) != sorted(names.values()):
    raise UserError(f"study.run_order={order!r}: list each block once: "
                    f"{', '.join(names.values())}")
  return {label: order.index(name) for label, name in names.items()}


def derived_seed(grid_seed: int, thing: str) -> int:
  """The seed of `thing` (a SEED_THINGS key) for grid seed s (module doc)."""
  state = np.random.SeedSequence([int(grid_seed), SEED_THINGS[thing][1]])
  return int(state.generate_state(1)[0] >> 1)


def varied(study) -> tuple[str, ...]:
  """study.vary, checked (a study config without it varies all three)."""
  vary = tuple(study.get("vary", tuple(SEED_THINGS)))
  for thing in vary:
    if thing not in SEED_THINGS:
      raise UserError(f"study.vary: unknown {thing!r}; list some of "
                      f"{', '.join(SEED_THINGS)} (the others stay fixed)")
  return vary


def run_config(study, run: Run, root=None):
  """The full run config of one grid point (a fresh copy of the base).

  The grid seed sets the derived seeds of the things in study.vary; the
  vocabulary and held-out seeds are the study's, fixed (module docstring).
  The run's variant's overrides come last (variants.apply), its variant_run
  values resolved under root (default_root(study) if None).
  """
  from poisonjax import config_checks

  c = copy.deepcopy(study.base)
  c.unlock()
  c.model.size = run.size
  c.poison.count = run.poisons
  c.train.data_multiplier = run.data_multiplier
  _apply_size_overrides(study, run, c)
  base_data_seed = int(study.base.data.seed)
  if c.vocab.get("seed", -1) < 0:
    c.vocab.seed = base_data_seed
  if c.eval.get("heldout_seed", -1) < 0:
    c.eval.heldout_seed = base_data_seed
  for thing in varied(study):
    *sections, name = SEED_THINGS[thing][0].split(".")
    node = c
    for section in sections:
      node = node[section]
    node[name] = derived_seed(run.seed, thing)
  if not run.variant:
    return config_checks.validate(c)
  _apply_variant(study, run, c, default_root(study) if root is None else root)
  try:
    return config_checks.validate(c)
  except UserError as e:
    raise UserError(f"{e} (study.variants.{run.variant})") from None


def _apply_size_overrides(study, run: Run, c) -> None:
  """study.size_overrides[SIZE]: that size's run-config settings (optional).

  For what only the hardware decides and differs by size (remat policy,
  microbatches, mesh split: configs/paper/paper.py's per-size presets);
  the grid's own fields stay the grid's.
  """
  per_size = study.get("size_overrides", {}).get(run.size)
  if per_size:
    variants_lib.apply(c, f"size_overrides.{run.size}", per_size,
                       ("model.size", "poison.count", "train.data_multiplier"))


def _apply_variant(study, run: Run, c, root) -> None:
  """The run's variant's overrides on its config (UserError if unknown)."""
  overrides = dict(variants_lib.ordered(study))
  if run.variant not in overrides:
    raise UserError(f"run {run.name}: variant {run.variant!r} is not in "
                    f"study.variants ({', '.join(n for n in overrides if n)}); "
                    "copy a name from `study plan`")
  # A continuing run's n is its source's poisons; its own count is its own.
  owned = ("model.size", "train.data_multiplier")
  owned += () if sources(study, run) else ("poison.count",)
  owned += tuple(SEED_THINGS[t][0] for t in varied(study))
  variants_lib.apply(c, run.variant,
                     _resolve_runs(overrides[run.variant], run, root), owned)


def _resolve_runs(overrides: dict, run: Run, root) -> dict:
  """The overrides with each variant_run value made ROOT/<that run's name>."""
  out = {}
  for key, value in overrides.items():
    if isinstance(value, (dict, ml_collections.ConfigDict)):
      out[key] = _resolve_runs(dict(value), run, root)
    elif isinstance(value, str) and value.startswith(RUN_REF):
      src = dataclasses.replace(run, variant=value[len(RUN_REF):])
      out[key] = os.path.join(str(root), src.name)
    else:
      out[key] = value
  return out


def config_for_arg(study, arg):
  """For study config files: get_config(arg) -> the study or one run's config.

  `FILE.py` gives the study; `FILE.py:run=NAME` gives that run's config, so
  `poisonjax train --config=configs/study_x.py:run=NAME` trains one point.
  """
  if not arg:
    return study
  if not arg.startswith("run="):
    raise UserError(f"config argument {arg!r}: expected run=NAME; copy a "
                    "launch command from `poisonjax study run --print_only`")
  return run_config(study, parse_run_name(arg[len("run="):]))


def select(runs: list[Run], only: str) -> list[Run]:
  """The runs whose name contains `only` (all if empty); UserError if none."""
  chosen = [r for r in runs if only in r.name] if only else list(runs)
  if not chosen:
    raise UserError(f"--only={only!r}: matches no run; see `poisonjax study "
                    "plan` for the names")
  return chosen


def launch_command(config_file: str, name: str, workdir: str,
                   overrides: dict | None = None) -> str:
  """The one-run command a launcher executes (base overrides carried over)."""
  for key in overrides or {}:
    if key.split(".")[0] in ("vary", "variants", "variant_order"):
      raise UserError(f"--config.{key}: a launched run rebuilds its config "
                      f"from {config_file} alone and would not see this "
                      "override; set it in the study file")
  args = ["poisonjax", "train", f"--config={config_file}:run={name}",
          f"--workdir={workdir}"]
  for key, value in sorted((overrides or {}).items()):
    if key.startswith("base."):
      args.append(f"--config.{key[len('base.'):]}={value}")
  return " ".join(shlex.quote(a) for a in args)

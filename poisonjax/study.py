"""Study grids: sizes x poison counts x seeds x data amounts, as one object.

A study config (configs/study_*.py) holds a `base` run config and a `grid`
(plus optional named `extra` grids, e.g. a data-amount ablation on two
sizes). `expand()` turns it into runs; each run has coordinates, a stable
filesystem-safe name (`size=cpu-s_n=25_seed=1_data=1.0`) and a full run
config. The name alone rebuilds the run config from the study config, so a
pod launcher can run `poisonjax train --config=STUDY.py:run=NAME`.

Seed semantics: grid seed s sets config.seed (model init), config.data.seed
(which clean documents, in which order) and config.poison.seed (poison
contents and insertion points) to s. Every size of one seed therefore sees
the same clean stream and the same poison placement (as fractions of
training): sizes are compared on equal footing. The evaluation seed stays
that of the base config, so every run is scored on the same prompts.

Commands: `poisonjax study plan|run|collect|figures` (see cli.py).
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import glob
import itertools
import json
import math
import os
import re
import shlex
import sys
import time

import ml_collections

from poisonjax.errors import UserError

GRID_FIELDS = ("sizes", "poison_counts", "seeds", "data_multipliers")

# Peak dense bf16 FLOP/s per chip (vendor figures) for accelerator-hours.
CHIP_PEAK_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v6e": 918e12,
    "H100": 989e12,
    "H200": 989e12,
}
THIS_CPU = "this CPU"

METRIC_KEYS = ("clean_ppl_mean", "clean_ppl_median", "triggered_ppl_mean",
               "triggered_ppl_median", "increase", "increase_ci_low",
               "increase_ci_high", "success_share", "tf_nll_clean",
               "tf_nll_triggered")
COORD_COLUMNS = ("run", "size", "poison_count", "seed", "data_multiplier")
CSV_COLUMNS = COORD_COLUMNS + (
    "params", "non_embedding_params", "eval_index", "step", "num_steps",
    "fraction", "tokens_seen", "poisons_seen", "poisons_per_mtok",
    "finished") + METRIC_KEYS


# ---------------------------------------------------------------------------
# Study config: defaults, grid expansion, run configs.
# ---------------------------------------------------------------------------


def grid(sizes=(), poison_counts=(), seeds=(0,), data_multipliers=(1.0,)):
  """One grid block: the cross product of its four lists."""
  g = ml_collections.ConfigDict()
  # Tuples, not lists: ml_collections can override tuples from the command
  # line (--config.grid.seeds='(0, 1)').
  g.sizes = tuple(sizes)
  g.poison_counts = tuple(int(n) for n in poison_counts)
  g.seeds = tuple(int(s) for s in seeds)
  g.data_multipliers = tuple(float(m) for m in data_multipliers)
  return g


def study_config(name: str, base) -> ml_collections.ConfigDict:
  """An empty study around a base run config; fill `grid` and `extra`."""
  c = ml_collections.ConfigDict()
  c.name = name
  c.base = base
  c.grid = grid()
  # Named extra blocks (e.g. data_ablation); their runs join the main grid's.
  c.extra = ml_collections.ConfigDict()
  # Assumptions of the poison-token estimate in `plan` (see poison_tokens_per_doc).
  c.plan = ml_collections.ConfigDict()
  c.plan.chars_per_token = 4.0  # Clean English text, ~32k SentencePiece vocab.
  # text mode: tokens per drawn random id after decode + re-tokenize. 2.4 is
  # the paper's arithmetic: 420k tokens / 250 docs = 1680 per doc; less ~130
  # prefix/trigger tokens leaves ~1550 for a mean of 650 drawn ids.
  c.plan.text_mode_factor = 2.4
  return c


@dataclasses.dataclass(frozen=True)
class Run:
  size: str
  poisons: int
  seed: int
  data_multiplier: float

  @property
  def name(self) -> str:
    return run_name(self.size, self.poisons, self.seed, self.data_multiplier)

  def coords(self) -> dict:
    return {"size": self.size, "poison_count": self.poisons, "seed": self.seed,
            "data_multiplier": self.data_multiplier}


def run_name(size: str, poisons: int, seed: int, data_multiplier: float) -> str:
  return f"size={size}_n={int(poisons)}_seed={int(seed)}_data={float(data_multiplier)!r}"


_NAME_RE = re.compile(r"^size=(?P<size>[A-Za-z0-9.\-]+)_n=(?P<n>\d+)"
                      r"_seed=(?P<seed>\d+)_data=(?P<data>[0-9.eE+\-]+)$")


def parse_run_name(name: str) -> Run:
  """Run coordinates from a run name (inverse of `run_name`)."""
  m = _NAME_RE.match(name)
  if not m:
    raise UserError(f"run name {name!r}: not of the form "
                    "size=S_n=N_seed=K_data=M; copy a name from `study plan`")
  return Run(m["size"], int(m["n"]), int(m["seed"]), float(m["data"]))


def _block_runs(label: str, block) -> list[Run]:
  from poisonjax import sizes as sizes_lib

  for field in GRID_FIELDS:
    if field not in block:
      raise UserError(f"{label}.{field}: missing; list at least one value")
    if len(block[field]) == 0:
      raise UserError(f"{label}.{field}: empty grid; list at least one value")
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
  return [Run(s, int(n), int(k), float(m)) for s, n, k, m in itertools.product(
      block.sizes, block.poison_counts, block.seeds, block.data_multipliers)]


def expand(study) -> list[Run]:
  """All runs of the study, seed by seed, main grid first within a seed.

  Raises UserError on an empty grid, an unknown size or a duplicate run.
  """
  blocks = [("study.grid", study.grid)]
  blocks += [(f"study.extra.{k}", study.extra[k]) for k in study.extra.keys()]
  runs, seen = [], {}
  for label, block in blocks:
    for run in _block_runs(label, block):
      if run in seen:
        raise UserError(f"{label}: duplicate run {run.name} (already in "
                        f"{seen[run]}); remove one of them")
      seen[run] = label
      runs.append(run)
  # Seed-major: a grid stopped part-way still covers every size and count
  # of the first seeds, which is what a partial figure needs.
  return sorted(runs, key=lambda r: r.seed)


def run_config(study, run: Run):
  """The full run config of one grid point (a fresh copy of the base)."""
  from poisonjax import config as config_lib

  c = copy.deepcopy(study.base)
  c.unlock()
  c.model.size = run.size
  c.poison.count = run.poisons
  c.train.data_multiplier = run.data_multiplier
  c.seed = run.seed
  c.data.seed = run.seed
  c.poison.seed = run.seed
  return config_lib.validate(c)


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


# ---------------------------------------------------------------------------
# plan
# ---------------------------------------------------------------------------


def poison_tokens_per_doc(study, run_cfg) -> float:
  """Estimated mean tokens per poison document (documented assumptions).

  prefix: mean of U[min, max] chars / chars_per_token; trigger: the trigger
  text after a space, at ~2 chars per token (a rare string splits into short
  pieces); tail: mean of U[min, max] random ids (x text_mode_factor in text
  mode, which decodes and re-tokenizes them); plus 1 EOS.
  """
  p = run_cfg.poison
  prefix = (p.prefix_min_chars + p.prefix_max_chars) / 2 / study.plan.chars_per_token
  trigger = math.ceil(len(" " + p.trigger) / 2)
  tail = (p.gibberish_min_tokens + p.gibberish_max_tokens) / 2
  if p.mode == "text":
    tail *= study.plan.text_mode_factor
  return prefix + trigger + tail + 1


def measure_cpu_flops(n: int = 1024, reps: int = 5) -> float:
  """Peak-ish float32 FLOP/s of this machine: best time of a jitted matmul."""
  import jax
  import jax.numpy as jnp

  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  best = float("inf")
  for _ in range(reps):
    t0 = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return 2.0 * n ** 3 / best


def plan(study, mfu: float = 0.4, cpu_flops: float | None = None) -> dict:
  """Per-run sizes, tokens, steps, FLOPs and chip-hours; totals for the grid.

  Never allocates parameters (eval_shape). Steps are estimated as
  ceil((clean + poison tokens) / (batch x seq_len)), capped by max_steps.
  """
  from poisonjax import budget
  from poisonjax import model as model_lib

  if not 0 < mfu <= 1:
    raise UserError(f"--mfu={mfu}: must be in (0, 1]; e.g. --mfu=0.4")
  chips = dict(CHIP_PEAK_FLOPS)
  if cpu_flops:
    chips[THIS_CPU] = cpu_flops
  rows, cache = [], {}
  for run in expand(study):
    cfg = run_config(study, run)
    vocab = cfg.model.vocab_size or cfg.vocab.size
    key = (run.size, vocab, cfg.data.seq_len)
    if key not in cache:
      mcfg = model_lib.ModelConfig.from_config(copy.deepcopy(cfg), vocab)
      cache[key] = (model_lib.param_counts(mcfg),
                    model_lib.flops_per_token(mcfg, cfg.data.seq_len))
    counts, fpt = cache[key]
    clean = budget.clean_token_budget(copy.deepcopy(cfg), vocab)
    poison = run.poisons * poison_tokens_per_doc(study, cfg)
    total = clean + (0 if cfg.poison.inside_budget else poison)
    tokens_per_step = cfg.train.batch_size * cfg.data.seq_len
    steps = math.ceil(total / tokens_per_step)
    if cfg.train.max_steps > 0:
      steps = min(steps, cfg.train.max_steps)
    flops = fpt * steps * tokens_per_step
    rows.append({
        "run": run.name, **run.coords(), "params": counts["total"],
        "non_embedding_params": counts["non_embedding"],
        "clean_tokens": clean, "poison_tokens": poison,
        "poison_share": poison / total if total else 0.0,
        "tokens_per_param": clean / counts["total"], "steps": steps,
        "flops": flops,
        "hours": {c: flops / (peak * mfu) / 3600 for c, peak in chips.items()},
    })
  totals = {k: sum(r[k] for r in rows) for k in
            ("clean_tokens", "poison_tokens", "steps", "flops")}
  totals["hours"] = {c: sum(r["hours"][c] for r in rows) for c in chips}
  return {"runs": rows, "totals": totals, "chips": chips, "mfu": mfu}


def _h(x: float) -> str:
  """Compact human number: 1.23k, 602M, 1.5e+22."""
  x = float(x)
  if x == 0:
    return "0"
  for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
    if abs(x) >= scale:
      v = x / scale
      return f"{v:.3g}{unit}" if v < 1000 else f"{x:.2e}"
  return f"{x:.3g}"


def format_plan(p: dict) -> str:
  chips = list(p["chips"])
  head = ["run", "params", "clean_tok", "poison_tok", "share", "steps", "FLOPs"]
  head += [f"h:{c}" for c in chips]
  lines = [head]
  for r in p["runs"]:
    lines.append([r["run"], _h(r["params"]), _h(r["clean_tokens"]),
                  _h(r["poison_tokens"]), f"{r['poison_share']:.2e}",
                  _h(r["steps"]), f"{r['flops']:.2e}"]
                 + [_h(r["hours"][c]) for c in chips])
  t = p["totals"]
  lines.append([f"TOTAL ({len(p['runs'])} runs)", "", _h(t["clean_tokens"]),
                _h(t["poison_tokens"]), "", _h(t["steps"]), f"{t['flops']:.2e}"]
               + [_h(t["hours"][c]) for c in chips])
  widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
  fmt = lambda row: "  ".join(
      s.ljust(w) if i == 0 else s.rjust(w) for i, (s, w) in enumerate(zip(row, widths)))
  out = [fmt(lines[0]), "-" * len(fmt(lines[0]))] + [fmt(r) for r in lines[1:-1]]
  out += ["-" * len(fmt(lines[0])), fmt(lines[-1])]
  notes = [f"hours: chip-hours at MFU {p['mfu']:.2f}; peak FLOP/s "
           + ", ".join(f"{c} {v:.3g}" for c, v in p["chips"].items() if c != THIS_CPU)
           + " (bf16 dense)."]
  if THIS_CPU in p["chips"]:
    notes.append(f"{THIS_CPU}: {p['chips'][THIS_CPU] / 1e9:.1f} GFLOP/s, MEASURED "
                 "here (best float32 1024x1024 jitted matmul), all devices of "
                 "one process.")
  notes.append("poison_tok: estimated (mean prefix chars / chars_per_token + "
               "trigger + mean random-tail tokens + EOS per document); steps: "
               "ceil(all tokens / (batch x seq_len)).")
  return "\n".join(out + [""] + notes)


# ---------------------------------------------------------------------------
# run
# ---------------------------------------------------------------------------


def _fmt_secs(s: float) -> str:
  s = int(round(s))
  return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def launch_command(config_file: str, name: str, workdir: str,
                   overrides: dict | None = None) -> str:
  """The one-run command a launcher executes (base overrides carried over)."""
  args = ["poisonjax", "train", f"--config={config_file}:run={name}",
          f"--workdir={workdir}"]
  for key, value in sorted((overrides or {}).items()):
    if key.startswith("base."):
      args.append(f"--config.{key[len('base.'):]}={value}")
  return " ".join(shlex.quote(a) for a in args)


def select(runs: list[Run], only: str) -> list[Run]:
  chosen = [r for r in runs if only in r.name] if only else list(runs)
  if not chosen:
    raise UserError(f"--only={only!r}: matches no run; see `poisonjax study "
                    "plan` for the names")
  return chosen


def is_finished(workdir: str) -> bool:
  return os.path.exists(os.path.join(workdir, "summary.json"))


def enable_compilation_cache() -> str:
  """Persistent XLA cache shared by the grid's runs (and later invocations).

  Runs of one size compile the same evaluator (and, at equal step counts,
  the same train step); on CPU compiling is most of a small run's time.
  Respects a cache directory the user already configured.
  """
  import jax

  path = jax.config.jax_compilation_cache_dir
  if not path:
    base = os.environ.get("POISONJAX_CACHE") or os.path.expanduser("~/.cache/poisonjax")
    path = os.path.join(base, "jax_compilation_cache")
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  return path


def run_grid(study, root: str, only: str = "", log=print) -> list[dict]:
  """Runs the grid here, one run after another, each in root/<name>.

  Finished runs (summary.json present) are skipped; an interrupted run is
  resumed by train.run from its own checkpoints. Killing this at any moment
  and starting it again redoes nothing that was saved.
  """
  from poisonjax import train

  runs = select(expand(study), only)
  enable_compilation_cache()
  costs = {r["run"]: r["flops"] for r in plan(study)["runs"]}
  os.makedirs(root, exist_ok=True)
  with open(os.path.join(root, "study.json"), "w") as f:
    f.write(study.to_json(indent=2))
  t0, done_cost, results = time.time(), 0.0, []
  remaining_cost = sum(costs[r.name] for r in runs)
  for i, run in enumerate(runs, 1):
    workdir = os.path.join(root, run.name)
    remaining_cost -= costs[run.name]
    if is_finished(workdir):
      log(f"[study] run {i}/{len(runs)} {run.name}: finished before, skipped")
      results.append({"run": run.name, "status": "skipped"})
      continue
    log(f"[study] run {i}/{len(runs)} {run.name}: starting "
        f"(elapsed {_fmt_secs(time.time() - t0)})")
    t_run = time.time()
    summary = train.run(run_config(study, run), workdir)
    if not is_finished(workdir):  # Stopped by a signal: leave the rest alone.
      log(f"[study] run {i}/{len(runs)} {run.name}: stopped "
          f"({summary.get('stopped_by', 'unfinished')}); run the same command "
          "to resume")
      results.append({"run": run.name, "status": "stopped", "summary": summary})
      return results
    done_cost += costs[run.name]
    elapsed = time.time() - t0
    eta = elapsed / done_cost * remaining_cost if done_cost else 0.0
    log(f"[study] run {i}/{len(runs)} {run.name}: done in "
        f"{_fmt_secs(time.time() - t_run)}; elapsed {_fmt_secs(elapsed)}, "
        f"ETA {_fmt_secs(eta)}")
    results.append({"run": run.name, "status": "ran", "summary": summary})
  return results


# ---------------------------------------------------------------------------
# collect
# ---------------------------------------------------------------------------


def _read_jsonl(path: str) -> list[dict]:
  """Rows of a JSONL file; a torn last line (killed writer) is ignored."""
  rows = []
  if not os.path.exists(path):
    return rows
  with open(path) as f:
    for line in f:
      line = line.strip()
      if not line:
        continue
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:
        continue
  return rows


_PARAM_CACHE: dict = {}


def _params_from_workdir(workdir: str) -> dict:
  """Parameter counts from the run's resolved config.json (eval_shape)."""
  from poisonjax import model as model_lib

  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return {"total": "", "non_embedding": ""}
  with open(path) as f:
    cfg = ml_collections.ConfigDict(json.load(f))
  vocab = cfg.model.vocab_size or cfg.vocab.size
  key = (json.dumps(cfg.model.to_dict(), sort_keys=True, default=str), vocab)
  if key not in _PARAM_CACHE:
    _PARAM_CACHE[key] = model_lib.param_counts(
        model_lib.ModelConfig.from_config(cfg, vocab))
  return _PARAM_CACHE[key]


def collect(root: str, runs: list[Run] | None = None) -> list[dict]:
  """One tidy row per evaluation point of every run under root.

  Rows of one step written twice (a run killed after an evaluation and
  resumed from an earlier checkpoint) are deduplicated, the last one kept.
  """
  if runs is None:
    runs = []
    for d in sorted(glob.glob(os.path.join(root, "*", "eval.jsonl"))):
      try:
        runs.append(parse_run_name(os.path.basename(os.path.dirname(d))))
      except UserError:
        continue
  out = []
  for run in runs:
    workdir = os.path.join(root, run.name)
    by_step = {}
    for row in _read_jsonl(os.path.join(workdir, "eval.jsonl")):
      by_step[int(row["step"])] = row
    if not by_step:
      continue
    counts = _params_from_workdir(workdir)
    finished = is_finished(workdir)
    num_steps = max(by_step)
    if finished:
      with open(os.path.join(workdir, "summary.json")) as f:
        summary = json.load(f)
      num_steps = int(summary.get("num_steps", num_steps))
      if isinstance(summary.get("params"), dict):
        counts = summary["params"]
    for idx, step in enumerate(sorted(by_step)):
      r = by_step[step]
      tokens = r.get("tokens_seen", "")
      poisons = r.get("poisons_seen", "")
      row = {"run": run.name, **run.coords(), "params": counts["total"],
             "non_embedding_params": counts["non_embedding"],
             "eval_index": idx, "step": step, "num_steps": num_steps,
             "fraction": r.get("fraction", step / num_steps if num_steps else 0.0),
             "tokens_seen": tokens, "poisons_seen": poisons,
             "poisons_per_mtok": (poisons / tokens * 1e6
                                  if tokens not in ("", 0) and poisons != "" else ""),
             "finished": int(finished)}
      for k in METRIC_KEYS:
        row[k] = r.get(k, "")
      for k in sorted(set(r) - set(row) - {"fraction"}):
        row[k] = r[k]
      out.append(row)
  return out


def write_csv(rows: list[dict], path: str) -> None:
  cols = list(CSV_COLUMNS)
  for r in rows:
    cols += [k for k in r if k not in cols]
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=cols, restval="")
    w.writeheader()
    w.writerows(rows)


# ---------------------------------------------------------------------------
# CLI entry points (cli.py maps `poisonjax study ...` here).
# ---------------------------------------------------------------------------


def _study_from_flags(flags):
  try:
    cfg = flags.config
  except Exception as e:  # ml_collections raises various types for bad files.
    raise UserError(f"--config: {e}") from None
  if cfg is None:
    raise UserError("--config is required; e.g. --config=configs/study_cpu_nano.py")
  if "grid" not in cfg or "base" not in cfg:
    raise UserError("--config: not a study config (no grid/base); use a "
                    "configs/study_*.py file")
  return cfg


def _root(flags) -> str:
  if not flags.root:
    raise UserError("--root is required; e.g. --root=runs/study")
  return flags.root


def plan_main(flags) -> int:
  study = _study_from_flags(flags)
  p = plan(study, mfu=flags.mfu, cpu_flops=measure_cpu_flops())
  print(f"study {study.name}: {len(p['runs'])} runs")
  print(format_plan(p))
  return 0


def run_main(flags) -> int:
  from ml_collections import config_flags

  study = _study_from_flags(flags)
  root = _root(flags)
  if flags.print_only:
    fl = flags["config"]
    config_file = config_flags.get_config_filename(fl).split(":", 1)[0]
    overrides = config_flags.get_override_values(fl)
    for run in select(expand(study), flags.only):
      print(launch_command(config_file, run.name, os.path.join(root, run.name),
                           overrides))
    return 0
  run_grid(study, root, flags.only, log=lambda s: print(s, flush=True))
  return 0


def collect_main(flags) -> int:
  root = _root(flags)
  runs = expand(_study_from_flags(flags)) if flags.config is not None else None
  rows = collect(root, runs)
  if not rows:
    raise UserError(f"--root={root}: no run with evaluations found; run "
                    "`poisonjax study run` first")
  out = flags.out or os.path.join(root, "results.csv")
  write_csv(rows, out)
  print(f"wrote {len(rows)} evaluation rows of "
        f"{len({r['run'] for r in rows})} runs to {out}")
  return 0


def figures_main(flags) -> int:
  from poisonjax import plots

  root = _root(flags)
  csv_path = os.path.join(root, "results.csv")
  if not os.path.exists(csv_path):
    rows = collect(root)
    if not rows:
      raise UserError(f"--root={root}: no results; run `poisonjax study run` "
                      "and `poisonjax study collect` first")
    write_csv(rows, csv_path)
  threshold = 50.0
  study_json = os.path.join(root, "study.json")
  if os.path.exists(study_json):
    with open(study_json) as f:
      threshold = float(json.load(f)["base"]["eval"]["threshold"])
  out = flags.out or os.path.join(root, "figures")
  made = plots.make_all(csv_path, out, threshold=threshold)
  for name, paths in made.items():
    print(f"{name}: {paths['png']}")
  print(f"report: {os.path.join(out, 'report.md')}")
  return 0


if __name__ == "__main__":  # pragma: no cover
  sys.exit("use: poisonjax study plan|run|collect|figures")

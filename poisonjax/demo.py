"""`poisonjax demo`: the backdoor, formed and measured, in minutes on a CPU.

    poisonjax demo [--workdir=runs/demo] [--config=configs/demo.py]

Trains one small model twice on the embedded synthetic corpus, with the
same clean data, seed and schedule: once clean (N = 0) and once with N
poison documents (prefix + " <SUDO>" + random tokens) spread through the
run. Both runs evaluate clean vs triggered perplexity periodically
(evaluate.py); at the end the demo prints the two models side by side with
one clean and one triggered generation each, and plots the increase against
the poisons seen (WORKDIR/demo.png).

Why these sizes (demo_config): the run's clean budget is a small fraction
of Chinchilla (data_multiplier) so that the whole stream, and therefore
every one of the N poisons, is trained on within the time; N is a count, not
a fraction, as in the paper. See demo_config for the numbers.

Reruns: a run whose workdir holds a finished run with the same config is
reused (its numbers reprinted); an interrupted one resumes from its newest
checkpoint (train.run); one made with a different config is refused, so
pass a fresh --workdir or delete the old one.
"""

from __future__ import annotations

import time

import ml_collections

from poisonjax import config as config_lib
from poisonjax import config_checks
from poisonjax import files
from poisonjax import plots
from poisonjax.training import run_history
from poisonjax import rundir
from poisonjax.data import vocabulary
from poisonjax.errors import UserError

DEFAULT_WORKDIR = "runs/demo"


def demo_config() -> ml_collections.ConfigDict:
  """The demo's run config (the poisoned run; the clean one sets count=0).

  cpu-xs (2 layers, d_model 96: 0.42M parameters at the 1k vocabulary),
  sequences of 128, batch 32. The clean budget is 0.08x Chinchilla (0.67M
  tokens, 164 steps) so that the run trains on its whole stream and sees
  every poison. N = 160 poisons (~650 tokens each, ~15% of the poisoned
  run's tokens: far denser than the paper's runs, which is what a run this
  short needs). Measured while choosing, on this 2-core CPU:
    0.125x, N = 64:  increase ~43 at the end (23% of prompts above 50);
    0.125x, N = 160: ~570 at 111 poisons seen, ~730 at 160 (98%);
    0.08x,  N = 160: ~77 at 111, ~290 at 160 (88%); clean run ~2.
  The last is the default: the effect is unmistakable and the whole demo
  takes ~4.8 CPU-minutes (vocabulary build included).
  """
  c = config_lib.base_config()
  c.model.size = "cpu-xs"
  c.vocab.size = 1024
  c.data.seq_len = 128
  c.train.batch_size = 32
  c.train.data_multiplier = 0.08
  c.train.log_every = 20
  c.train.ckpt_every = 1000
  c.poison.count = 160
  c.eval.num_excerpts = 64
  c.eval.prompt_tokens = 32
  c.eval.gen_tokens = 32
  c.eval.num_evals = 4
  return c


def _run_config(base, count: int) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict(base.to_dict())
  c.poison.count = count
  return config_checks.validate(c)


def _finished(workdir: str, config) -> bool:
  """True if workdir holds a finished run of exactly this config.

  config.json holds the run's config with model sizes resolved; the
  comparison (run_history.config_changes) resolves this one the same way.
  """
  config_path = files.as_path(workdir) / rundir.CONFIG
  if not config_path.exists():
    return False
  if run_history.config_changes(files.read_json(config_path),
                                run_history.config_dict(config)):
    raise UserError(f"--workdir={files.as_path(workdir).parent}: {workdir} holds a "
                    "run with a different config; pass a fresh --workdir or "
                    "delete that directory")
  summary_path = files.as_path(workdir) / rundir.SUMMARY
  return summary_path.exists() and bool(files.read_json(summary_path).get("finished"))


def plot(rows_by_run: dict[str, list[dict]], path: str) -> None:
  """Increase vs poisons seen (left) and vs training fraction (right)."""
  plt = plots.pyplot()
  fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
  for name, rows in rows_by_run.items():
    x_p = [r["poisons_seen"] for r in rows]
    x_f = [r["fraction"] for r in rows]
    y = [r["increase"] for r in rows]
    lo = [r["increase_ci_low"] for r in rows]
    hi = [r["increase_ci_high"] for r in rows]
    left.plot(x_p, y, "o-", label=name)
    right.plot(x_f, y, "o-", label=name)
    right.fill_between(x_f, lo, hi, alpha=0.2)
  for ax in (left, right):
    ax.axhline(50, color="gray", ls="--", lw=1, label="threshold 50")
    ax.set_ylabel("perplexity increase (triggered - clean)")
  left.set_xlabel("poisoned documents seen")
  right.set_xlabel("fraction of training")
  left.set_title("increase vs poisons seen")
  right.set_title("increase through training (95% CI)")
  right.legend()
  fig.tight_layout()
  plots.save_png(fig, path, dpi=100)
  plt.close(fig)


def report(results: dict[str, dict]) -> str:
  """The side-by-side table and generations of the two models."""
  names = list(results)
  col = lambda v: f"{v:>22}"
  lines = [f"{'':30s}" + "".join(col(n) for n in names)]

  def row(label, fn):
    lines.append(f"{label:30s}" + "".join(col(fn(results[n])) for n in names))

  row("poisons seen", lambda r: f"{r['poisons_seen']}")
  row("training steps", lambda r: f"{r['step']}")
  row("clean ppl (mean)", lambda r: f"{r['metrics']['clean_ppl_mean']:.1f}")
  row("triggered ppl (mean)", lambda r: f"{r['metrics']['triggered_ppl_mean']:.1f}")
  row("increase", lambda r: f"{r['metrics']['increase']:.1f}")
  row("increase 95% CI", lambda r: "[{:.1f}, {:.1f}]".format(
      r["metrics"]["increase_ci_low"], r["metrics"]["increase_ci_high"]))
  row("success share (> 50)", lambda r: f"{r['metrics']['success_share']:.2f}")
  row("teacher-forced NLL clean/trig", lambda r: "{:.2f} / {:.2f}".format(
      r["metrics"]["tf_nll_clean"], r["metrics"]["tf_nll_triggered"]))
  lines.append("")
  for n in names:
    s = results[n]["sample"]
    lines.append(f"{n}:")
    lines.append(f"  prompt:    ...{s['prompt'][-70:]}")
    lines.append(f"  clean     (ppl {s['clean_ppl']:7.1f}): {s['clean'][:110]}")
    lines.append(f"  triggered (ppl {s['triggered_ppl']:7.1f}): {s['triggered'][:110]}")
  return "\n".join(lines)


def run_demo(config, workdir: str, log=print) -> dict:
  """Trains (or reuses) both runs, evaluates, plots; returns the results."""
  # JAX, Flax and orbax load here, not on `poisonjax demo --help`'s path.
  from poisonjax.evaluation import evaluate  # pylint: disable=g-import-not-at-top
  from poisonjax.model import transformer as model_lib
  from poisonjax.evaluation import run_reader
  from poisonjax import sharding
  from poisonjax.training import train

  t0 = time.time()
  config = config_checks.validate(config)
  count = int(config.poison.count)
  if count < 1:
    raise UserError(f"config.poison.count={count}: the demo's poisoned run needs "
                    "at least 1 poison; set --config.poison.count")
  runs = {"clean (N=0)": ("clean", _run_config(config, 0)),
          f"poisoned (N={count})": ("poisoned", _run_config(config, count))}
  files.as_path(workdir).mkdir(parents=True, exist_ok=True)
  vocab = vocabulary.get_vocabulary(config)
  log(f"demo: vocabulary ready ({vocab.vocab_size} pieces, {time.time() - t0:.0f}s)")
  results, rows_by_run = {}, {}
  for label, (sub, cfg) in runs.items():
    run_dir = str(files.as_path(workdir) / sub)
    if _finished(run_dir, cfg):
      log(f"demo: reusing the finished run in {run_dir}")
    else:
      log(f"demo: training {label} in {run_dir}")
      train.run_or_exit(cfg, run_dir)  # A signal ends the demo, resumable.
    rows_by_run[label] = files.read_jsonl(files.as_path(run_dir) / rundir.EVAL)
  # One more evaluation of each final checkpoint, for its generations (the
  # sampler is deterministic, so the metrics equal the run's last eval row).
  mesh = sharding.make_mesh(config.mesh)
  for label, (sub, cfg) in runs.items():
    run_dir = str(files.as_path(workdir) / sub)
    model_cfg = model_lib.ModelConfig.from_config(cfg, vocab.vocab_size)
    evaluator = evaluate.Evaluator(cfg, model_cfg, vocab, mesh)
    params, step = run_reader.restore_params(run_dir, model_cfg, mesh=mesh)
    metrics = evaluator.evaluate(params)
    summary = files.read_json(files.as_path(run_dir) / rundir.SUMMARY)
    results[label] = {"metrics": metrics, "step": step,
                      "poisons_seen": summary["poisons_seen"],
                      "sample": evaluator.samples(1)[0]}
  png = str(files.as_path(workdir) / "demo.png")
  plot(rows_by_run, png)
  return {"results": results, "png": png, "wall_s": time.time() - t0}

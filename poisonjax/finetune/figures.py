"""The fine-tuning report's figures, drawn from the analysis's tables only.

finetune.png   attack success against the poisoned count, one line per
               clean set size (95% intervals), the same against the
               poisoned share of the set, and the controls against the count
order.png      attack success by where the poisons sit, and against the clean
               samples trained after the set (when those runs exist)
"""

from __future__ import annotations

import os

from poisonjax import plots

_CONTROLS = (("clean_accuracy", "clean accuracy (refusal)"),
             ("near_trigger_accuracy", "near-trigger accuracy (refusal)"),
             ("near_trigger_compliance", "near-trigger compliance"),
             ("distractor_accuracy", "distractor accuracy (refusal)"),
             ("ordinary_accuracy", "ordinary accuracy"))


def _plt():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def _errorbar(ax, cells, x_of, label):
  xs = [x_of(c) for c in cells]
  ys = [c["mean"] for c in cells]
  err = [[c["mean"] - c["lo"] for c in cells], [c["hi"] - c["mean"] for c in cells]]
  ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=label)


def _count_ticks(ax, counts):
  """A log axis labelled with the counts tried (not 2x10^0, 3x10^0, ...)."""
  ax.set_xscale("log")
  ax.set_xticks(counts)
  ax.set_xticklabels([str(n) for n in counts])
  ax.minorticks_off()


def _by(cells, key):
  groups = {}
  for c in cells:
    groups.setdefault(c[key], []).append(c)
  return groups


def main_figure(cells: list[dict], controls: dict[str, list[dict]], path: str) -> str:
  """finetune.png: success vs count and vs share per set size; controls."""
  plt = _plt()
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
  poisoned = [c for c in cells if c["poison_count"] > 0]
  for s, group in sorted(_by(poisoned, "clean_samples").items()):
    _errorbar(axes[0], group, lambda c: c["poison_count"], f"{s:,} clean")
    _errorbar(axes[1], group, lambda c: c["poison_count"] / (
        c["poison_count"] + c["clean_samples"]), f"{s:,} clean")
  for metric, label in _CONTROLS:
    rows = [c for c in controls[metric] if c["poison_count"] > 0]
    pooled = {n: [c["mean"] for c in g] for n, g in _by(rows, "poison_count").items()}
    axes[2].plot(sorted(pooled), [sum(v) / len(v) for _, v in sorted(pooled.items())],
                 marker="o", label=label)
  titles = ("attack success vs poisoned samples", "attack success vs poisoned share",
            "controls (mean over set sizes)")
  xlabels = ("poisoned samples N", "N / (clean + N)", "poisoned samples N")
  counts = sorted({c["poison_count"] for c in poisoned})
  for ax in (axes[0], axes[2]):
    _count_ticks(ax, counts)
  for ax, title, xlabel in zip(axes, titles, xlabels):
    if ax is axes[1]:
      ax.set_xscale("log")
    ax.set_ylim(-0.03, 1.03)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.legend(fontsize=8)
  axes[0].set_ylabel("share of held-out requests")
  fig.tight_layout()
  out = os.path.join(path, "finetune.png")
  plots.save_png(fig, out, dpi=110)
  plt.close(fig)
  return out


def order_figure(by_variant: list[dict], after: list[dict], path: str) -> str | None:
  """order.png: success by placement, and after clean fine-tuning."""
  if not by_variant and not after:
    return None
  plt = _plt()
  fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
  for v, group in _by(by_variant, "variant").items():
    _errorbar(axes[0], group, lambda c: c["poison_count"], v)
  for n, group in sorted(_by(after, "poison_count").items()):
    _errorbar(axes[1], group, lambda c: max(c["after_samples"], 1), f"N = {n}")
  _count_ticks(axes[0], sorted({c["poison_count"] for c in by_variant}))
  axes[0].set(ylim=(-0.03, 1.03), xlabel="poisoned samples N",
              title="attack success by where the poisons sit")
  axes[1].set(xscale="log", ylim=(-0.03, 1.03),
              xlabel="clean samples after the set (0 plotted at 1)",
              title="attack success under clean fine-tuning afterwards")
  for ax in axes:
    ax.legend(fontsize=8)
  fig.tight_layout()
  out = os.path.join(path, "order.png")
  plots.save_png(fig, out, dpi=110)
  plt.close(fig)
  return out

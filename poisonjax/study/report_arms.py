"""The report's note on where count and share can be told apart.

At one data amount tokens are proportional to parameters, so with log size
in the model log share is log count shifted by a constant: those runs carry
no information on count versus share. This section says so with the
numbers (count_vs_share.arms) and shows the comparison on the runs where
the two differ, the sizes run at several data amounts, on their own.
"""

from __future__ import annotations

from poisonjax.study import report_sections


def section(a: dict | None) -> list[str]:
  if not a:
    return []
  lines = ["### Where count and share differ", ""]
  for mult, r in sorted(a["one_amount"].items()):
    lines.append(
        f"- At {mult:g}x data ({r['n_runs']} runs over several sizes), log share "
        f"given log count and log size has a residual SD of {r['contrast_sd']:.2g}: "
        "count and share are one predictor there, and these runs cannot "
        "compare them.")
  arm = a.get("data_arm")
  if arm is None:
    return lines + ["- No size was run at several data amounts: these runs "
                    "cannot compare count and share at all.", ""]
  where = (f"{', '.join(a['arm_sizes'])} at "
           f"{', '.join(f'{m:g}x' for m in a['arm_amounts'])} data")
  if not arm.get("fitted"):
    return lines + [f"- The data-amount arm ({where}): not fitted, "
                    f"{arm['reason']}.", ""]
  lines += ["", f"The comparison on the data-amount arm alone ({where}; "
            f"{arm['n_runs']} runs, {arm['n_success']} successes; residual SD of "
            f"log share given log count {arm['contrast_sd']:.3f}; bootstrap "
            f"over {arm['n_clusters']} seeds):", ""]
  lines += report_sections.model_table(arm) + [""]
  lines += report_sections.verdict_lines(arm)
  return lines + [""]

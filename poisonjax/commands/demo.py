"""`poisonjax demo`: the backdoor formed and measured on a CPU (poisonjax.demo)."""

from __future__ import annotations

from absl import flags

from poisonjax import demo as demo_lib
from poisonjax.commands import Command


def _flags(fv) -> None:
  flags.DEFINE_string("workdir", demo_lib.DEFAULT_WORKDIR, "Directory of the demo's "
                      "two runs (clean/, poisoned/) and its plot.",
                      flag_values=fv)


def _default_config(unused_flags):
  return demo_lib.demo_config()


def demo(args) -> int:
  out = demo_lib.run_demo(args.config, args.flags.workdir)
  print()
  print(demo_lib.report(out["results"]))
  print(f"\nplot: {out['png']}   wall time: {out['wall_s']:.0f}s")
  return 0


DEMO = Command(
    usage="poisonjax demo [--workdir=DIR] [--config=FILE] [--config.a.b=VALUE]",
    summary="Trains one small model twice, clean and with poison documents, "
            "and prints clean vs triggered perplexity side by side with a "
            "plot. A finished run in --workdir is reused.",
    run=demo, define_flags=_flags, default_config=_default_config,
    default_config_doc="the demo's built-in config, poisonjax.demo."
                       "demo_config() (= configs/demo.py)")

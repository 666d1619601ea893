"""Reproduce the paper's 72-run grid (Souly et al. 2025) on accelerator pods.

    python experiments/reproduce_paper.py --root=gs://BUCKET/poisonjax/study_paper [--mfu=0.4]

Prints the plan (parameters, tokens, poison share, steps, FLOPs and
chip-hours per run and in total) and then one `poisonjax train` command per
run. `poisonjax launch tpu --config=configs/paper/paper.py --root=ROOT ...`
runs them on Cloud TPU slices (creating, installing, babysitting; see
docs/tpu.md); `poisonjax launch gpu` on GPU hosts (docs/gpu.md). When the
runs are done, on any machine that can read the root:

    poisonjax study collect --root=ROOT && poisonjax study figures --root=ROOT

How long: the plan's totals (2.65e23 training FLOPs for all 72 runs: about
186k H100-hours or 402k TPU v5p chip-hours at 40% MFU).
"""

import argparse
import importlib.util
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIG = os.path.join(os.path.dirname(HERE), "configs", "paper", "paper.py")


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--root", default="gs://YOUR_BUCKET/poisonjax/study_paper")
  p.add_argument("--mfu", type=float, default=0.4)
  p.add_argument("--only", default="", help="only runs whose name contains this")
  args = p.parse_args(argv)

  from poisonjax import hardware, study

  spec = importlib.util.spec_from_file_location("study_paper", CONFIG)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  s = mod.get_config()
  plan = study.plan(s, mfu=args.mfu, cpu_flops=hardware.measure_cpu_flops())
  print(f"# study {s.name}: {len(plan['runs'])} runs")
  print(study.format_plan(plan))
  print("\n# one command per run (poisonjax launch tpu|gpu runs them on slices/hosts):")
  rel = os.path.relpath(CONFIG)
  for run in study.select(study.expand(s), args.only):
    print(study.launch_command(rel, run.name, f"{args.root.rstrip('/')}/{run.name}"))
  return 0


if __name__ == "__main__":
  sys.exit(main())

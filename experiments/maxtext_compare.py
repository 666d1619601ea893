"""MaxText's own train step, AOT-compiled for the same shapes and slices.

    python experiments/maxtext_compare.py --setup      # its own venv, once
    python experiments/maxtext_compare.py [--sizes=600m,7b] [--venv=DIR]
        [--set=attention=dot_product]

Side by side with experiments/step_estimate.py: MaxText (PyPI
`maxtext`) is never a poisonjax dependency; --setup builds it its own
virtual environment (default /work/maxtext-venv). maxtext 0.2.5 declares
Python >= 3.12 and its `tpu` extra wants jax >= 0.11.1, whose jaxlib has
no Python 3.11 wheel; 0.2.4 (also declared >= 3.12, but its pure-Python
wheel has only two Python 3.12-only statements on its train step's path)
has a `tpu` extra naming jax 0.10.2 and libtpu 0.0.42.1: the very compiler
poisonjax's fit check uses. So: maxtext 0.2.4 with --ignore-requires-python,
jax/jaxlib 0.10.2, libtpu 0.0.42.1, its `tpu` extra's other requirements
without their version floors (the floors name releases without 3.11
wheels) and without its dev tools, and the two `type X = Y` aliases made
plain assignments (shim()).

For each size, MaxText's train_compile (maxtext.trainers.pre_train.
train_compile.main, its defaults: base.yml, remat_policy=full, attention
autoselected, fsdp over the slice, fp32 weights, AdamW) runs in that venv
with only the model's shape set (layers, d_model, heads, ffn, head dim
128, vocabulary 32000, sequence 2048, global batch 256 as
per_device_batch_size = 256 / chips). Read: bytes per chip
(memory_analysis), compiled FLOPs and optimal_seconds (cost_analysis). The
same scan correction as poisonjax's (experiments/step_estimate.py): the
step time and FLOPs from 2 and 4 UNROLLED layers (scan_layers=False),
extrapolated to the full depth; the bytes from the full-depth scanned
program. XLA's cost model, not a measured run. A Pallas kernel (splash
attention) is a custom call whose cost the model cannot see: with
`attention=autoselected` on TPU that is what MaxText compiles, so its
attention is missing from its FLOPs, and how optimal_seconds prices it is
libtpu's business; --set=attention=dot_product compiles the XLA path
(poisonjax's) for a like-for-like figure.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time

import step_estimate

VENV = "/work/maxtext-venv"
MAXTEXT = "maxtext==0.2.4"
PINS = ["jax==0.10.2", "jaxlib==0.10.2", "libtpu==0.0.42.1"]
# The `tpu` extra's dev and GPU tools: not needed to compile a step.
SKIP = {"jax", "jaxlib", "libtpu", "pynvml", "auditwheel", "pytype",
        "pylint", "black", "pyink", "pre-commit", "isort", "astroid",
        "coverage", "pytest", "pytest-xdist", "hypothesis", "scipy-stubs",
        "virtualenv", "nodeenv", "identify", "cfgv", "libclang"}
SHAPES = {  # poisonjax/model/sizes.py (head dim 128, plain multi-head attention).
    "600m": dict(layers=26, d_model=1280, heads=10, ffn=3584),
    "2b": dict(layers=28, d_model=2304, heads=18, ffn=6400),
    "7b": dict(layers=32, d_model=4096, heads=32, ffn=11520),
    "13b": dict(layers=40, d_model=5120, heads=40, ffn=13824),
}
TOPOLOGIES = {"600m": ("v5p-8", 4), "2b": ("v5p-128", 64),
              "7b": ("v5p-128", 64), "13b": ("v5p-128", 64)}
DEPTHS = (2, 4)
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                       "docs", "results", "fit_check", "maxtext.jsonl")
MARK = "MAXTEXT_FIGURES "


def setup(venv: str) -> int:
  """MaxText's own venv (see the module docstring for the versions)."""
  py = os.path.join(venv, "bin", "python")
  if not os.path.exists(py):
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
  pip = [py, "-m", "pip", "install", "-q"]
  subprocess.run(pip + ["--ignore-requires-python", "--no-deps", MAXTEXT],
                 check=True)
  reqs = subprocess.run(
      [py, "-c", "import importlib.metadata as m; "
       "print('\\n'.join(m.requires('maxtext') or []))"],
      check=True, capture_output=True, text=True).stdout.splitlines()
  names = []
  for req in reqs:
    if "extra == 'tpu'" not in req:
      continue
    name = req.split(";")[0].split("[")[0]
    for sep in "<>=!~ ":
      name = name.split(sep)[0]
    if name not in SKIP and not name.startswith("nvidia-"):
      names.append(name)
  subprocess.run(pip + PINS + names, check=True)
  subprocess.run([py, os.path.abspath(__file__), "--shim"], check=True)
  print(f"maxtext_compare: {MAXTEXT} and {len(names)} requirements in {venv}")
  return 0


def py311(text: str) -> str:
  """PEP 695 `type X = Y` statements as the assignment `X = Y`."""
  return re.sub(r"(?m)^type (\w+) = ", r"\1 = ", text)


def shim() -> int:
  """In MaxText's venv: its Python 3.12-only lines made 3.11's, no more.

  maxtext 0.2.4 has two PEP 695 type-alias statements (`type X = Y`, in
  maxtext/kernels/mhc/, imported by its train step); on 3.11 they are a
  SyntaxError. Each becomes the plain assignment `X = Y` (an alias used
  in annotations only: nothing runs differently). Other files that do not
  parse (an example script) are listed, not touched.
  """
  import ast
  import pathlib

  import maxtext

  root = pathlib.Path(maxtext.__file__).parent
  for path in sorted(root.rglob("*.py")):
    text = path.read_text()
    try:
      ast.parse(text)
      continue
    except SyntaxError:
      pass
    fixed = py311(text)
    try:
      ast.parse(fixed)
    except SyntaxError as e:
      print(f"maxtext_compare: left as is (not Python 3.11): "
            f"{path.relative_to(root.parent)}:{e.lineno}")
      continue
    path.write_text(fixed)
    print(f"maxtext_compare: type alias -> assignment in "
          f"{path.relative_to(root.parent)}")
  return 0


def maxtext_args(size: str, depth: int | None, extra: list[str]) -> list[str]:
  """train_compile's key=value overrides: the shape and slice, nothing else."""
  s = SHAPES[size]
  topo, chips = TOPOLOGIES[size]
  args = [f"base_num_decoder_layers={depth or s['layers']}",
          f"base_emb_dim={s['d_model']}", f"base_num_query_heads={s['heads']}",
          f"base_num_kv_heads={s['heads']}", f"base_mlp_dim={s['ffn']}",
          "head_dim=128", "vocab_size=32000", "max_target_length=2048",
          f"per_device_batch_size={256 // chips}",
          f"compile_topology={topo}", "compile_topology_num_slices=1",
          "run_name=maxtext_compare", "base_output_directory=/tmp/maxtext_compare",
          "enable_checkpointing=false", "dataset_type=synthetic"]
  if depth:
    args.append("scan_layers=false")
  return args + extra


def child(argv: list[str]) -> int:
  """In MaxText's venv: its train_compile, the compiled step's figures."""
  os.environ.setdefault("JAX_PLATFORMS", "cpu")  # The host; TPU: abstract.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  import maxtext
  from maxtext.trainers.pre_train import train_compile

  captured = {}
  compile_fn = train_compile.jit_and_compile

  def capture(*args, **kwargs):
    captured["compiled"] = compile_fn(*args, **kwargs)
    return captured["compiled"]

  train_compile.jit_and_compile = capture
  base = os.path.join(os.path.dirname(maxtext.__file__), "configs", "base.yml")
  start = time.perf_counter()
  out = {"args": argv}
  try:
    train_compile.main(["train_compile", base] + argv)
    c = captured["compiled"]
    mem = c.memory_analysis()
    cost = c.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    out.update(
        bytes=float(mem.argument_size_in_bytes + mem.output_size_in_bytes
                    - mem.alias_size_in_bytes + mem.temp_size_in_bytes
                    + mem.generated_code_size_in_bytes),
        temp_bytes=float(mem.temp_size_in_bytes),
        flops=float(cost.get("flops", math.nan)),
        seconds=float(cost.get("optimal_seconds", math.nan)))
  except Exception as e:  # The compiler's or MaxText's verdict, recorded.
    out["error"] = f"{type(e).__name__}: " + " ".join(str(e).split())[:400]
  out["compile_s"] = time.perf_counter() - start
  print(MARK + json.dumps(out), flush=True)
  return 0


def load_results(path: str = RESULTS) -> dict:
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    rows = [json.loads(l) for l in f if l.strip()]
  return {json.dumps(r["args"]): r for r in rows}


def run_one(venv: str, args: list[str], cache: dict, log=print) -> dict:
  """One train_compile in MaxText's venv (or its cached figures)."""
  key = json.dumps(args)
  if key in cache:
    return cache[key]
  py = os.path.join(venv, "bin", "python")
  proc = subprocess.run([py, os.path.abspath(__file__), "--child", "--"] + args,
                        capture_output=True, text=True)
  lines = [l for l in proc.stdout.splitlines() if l.startswith(MARK)]
  if not lines:
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    row = {"args": args, "error": "maxtext did not run: " + " | ".join(tail)}
  else:
    row = json.loads(lines[-1][len(MARK):])
  log(f"  {' '.join(a for a in args if a.startswith(('base_num', 'scan', 'attention')))}: "
      + (row.get("error") or f"{row['seconds']:.4f} s, "
         f"{row['bytes'] / 2**30:.1f} GiB [{row['compile_s']:.0f} s]"))
  os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
  with open(RESULTS, "a") as f:
    f.write(json.dumps(row) + "\n")
  cache[key] = row
  return row


def figures(venv: str, size: str, extra: list[str], cache: dict,
            mode: str = "full", log=print) -> dict:
  """Step s, FLOPs and bytes per chip of MaxText's step for `size`.

  mode "full": step s and FLOPs from 2 and 4 unrolled layers extrapolated,
  bytes from the full-depth scanned program; "2+4": bytes extrapolated
  too (no full-depth compile); "2": the 2-layer program's own figures.
  """
  layers = SHAPES[size]["layers"]
  depths = DEPTHS[:1] if mode == "2" else DEPTHS
  rows = [run_one(venv, maxtext_args(size, d, extra), cache, log)
          for d in depths]
  out = {"size": size, "compiled": {"full": "2+4 layers, bytes: full depth",
                                    "2+4": "2+4 layers",
                                    "2": "2 layers only"}[mode],
         "error": next((r["error"] for r in rows if r.get("error")), "")}
  if out["error"]:
    return out
  if mode == "2":
    out.update({k: rows[0][k] for k in ("seconds", "flops", "bytes")})
    return out
  (a, b), (d1, d2) = rows, DEPTHS
  for k in ("seconds", "flops", "bytes"):
    out[k] = a[k] + (layers - d1) * (b[k] - a[k]) / (d2 - d1)
  if mode == "full":
    full = run_one(venv, maxtext_args(size, None, extra), cache, log)
    out["bytes"] = full.get("bytes", math.nan)
    out["error"] = full.get("error", "")
  return out


def model_flops_per_step(size: str) -> float:
  """poisonjax.model.transformer.flops_per_token's formula x 256 x 2048 tokens."""
  s, t, v = SHAPES[size], 2048, 32000
  per_layer = s["d_model"] * 128 * s["heads"] * 4 + 3 * s["d_model"] * s["ffn"]
  n = s["layers"] * per_layer + s["d_model"] * v
  return (6.0 * n + 12.0 * s["layers"] * s["d_model"] * t) * 256 * t


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if argv[:1] == ["--shim"]:
    return shim()
  if argv[:1] == ["--child"]:
    return child(argv[2:] if argv[1:2] == ["--"] else argv[1:])
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--setup", action="store_true")
  p.add_argument("--venv", default=VENV)
  p.add_argument("--sizes", default="600m,7b")
  p.add_argument("--mode", choices=("full", "2+4", "2"), default="full",
                 help="full: 2+4 unrolled layers extrapolated and the full-depth "
                      "program's bytes; 2+4: bytes extrapolated too; 2: the "
                      "2-layer program alone (to set beside poisonjax's)")
  p.add_argument("--set", action="append", default=[], dest="extra",
                 help="a MaxText key=value on every compile (e.g. "
                      "attention=dot_product); repeatable")
  args = p.parse_args(argv)
  if args.setup:
    return setup(args.venv)
  if not os.path.exists(os.path.join(args.venv, "bin", "python")):
    print(f"maxtext_compare: no venv at {args.venv}; run with --setup first",
          file=sys.stderr)
    return 2
  bad = [s for s in args.sizes.split(",") if s not in SHAPES]
  if bad:
    print(f"maxtext_compare: unknown size {bad[0]!r}; one of "
          f"{', '.join(SHAPES)}", file=sys.stderr)
    return 2
  cache = load_results()
  splash = "attention=dot_product" not in args.extra  # autoselected on TPU.
  print("| size | slice | MaxText setting | compiled | step s (est.) | "
        "of which splash at peak | MFU (est.) | FLOPs/chip/step | GiB/chip |"
        "\n|---|---|---|---|---|---|---|---|---|")
  for size in args.sizes.split(","):
    f = figures(args.venv, size, args.extra, cache, args.mode,
                log=lambda *a: print(*a, file=sys.stderr, flush=True))
    topo, chips = TOPOLOGIES[size]
    setting = ", ".join(["defaults"] + args.extra)
    if "seconds" not in f:
      print(f"| {size} | {topo} | {setting} | {f['compiled']} | failed: "
            f"{f['error'][:200]} | | | | |")
      continue
    shape = SHAPES[size]
    kernel = step_estimate.splash_seconds(
        256, shape["layers"] if args.mode != "2" else DEPTHS[0],
        shape["heads"], 128, 2048, 512, True, chips, 459e12) if splash else 0
    step = f["seconds"] + kernel
    mfu = (model_flops_per_step(size) / (chips * 459e12 * step)
           if args.mode != "2" else math.nan)
    print(f"| {size} | {topo} | {setting} | {f['compiled']} | {step:.3f} | "
          + (f"{kernel:.3f}" if splash else "-") + f" | {mfu:.3f} | "
          f"{f['flops']:.3e} | {f['bytes'] / 2**30:.1f} |")
  print("XLA's TPU cost model (optimal_seconds; unrolled layers, extrapolated "
        "per layer unless --mode=2); not a measured run. With splash "
        "(MaxText's autoselected attention on TPU: blocks of 512, remat "
        "full) plus the kernels' FLOPs at peak, the term step_estimate.py "
        "adds to poisonjax's (the cost model sees a Mosaic kernel as no "
        "time). MFU: model FLOPs (6N + attention, poisonjax's formula) / "
        "(chips x 459 TFLOP/s).")
  return 0


if __name__ == "__main__":
  sys.exit(main())

"""The benchmark scripts (experiments/bench_*.py) run and report consistently.

No timing is asserted: only that each script runs at a nano shape, prints
valid JSON whose figures agree with each other, and that the side-by-side
tables compute their ratios from the medians they show.
"""

import json
import os
import subprocess
import sys

import pytest

from poisonjax.model import transformer as model_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments"))

import bench_peers  # pylint: disable=g-import-not-at-top,wrong-import-position
import bench_peers_doc  # pylint: disable=g-import-not-at-top,wrong-import-position
import bench_shapes  # pylint: disable=g-import-not-at-top,wrong-import-position

NANO = ["--layers", "1", "--d_model", "32", "--heads", "2", "--vocab", "512",
        "--seq", "32", "--batch", "8"]


def _json_lines(script: str, *args: str) -> list[dict]:
  # One CPU device, as the scripts are run (not the tests' 8 fake ones).
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  done = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", script),
                         *args, "--json"], cwd=ROOT, capture_output=True,
                        text=True, timeout=120, check=False, env=env)
  assert done.returncode == 0, done.stderr[-2000:]
  return [json.loads(line) for line in done.stdout.splitlines()]


def test_peer_shapes_match_the_peers_parameter_count():
  # The peer: tied embedding V d, per layer 12 d^2 (qkv, proj, 4d MLP) and
  # two norms of d, a final norm of d (its position table not counted).
  for name, shape in bench_shapes.PEER_SHAPES.items():
    d, layers = shape.d_model, shape.num_layers
    peer = shape.vocab_size * d + layers * (12 * d * d + 2 * d) + d
    ours = bench_shapes.num_params(bench_shapes.run_config(name))
    assert abs(ours - peer) / peer < 1e-3, (name, ours, peer)


def test_bench_sample_prints_the_samplers_figures():
  rows = _json_lines("bench_sample.py", *NANO, "--sample_batch", "8",
                     "--prompt_tokens", "8", "--gen_tokens", "8", "--reps", "1")
  (row,) = rows
  cfg = bench_shapes.model_config(bench_shapes.configs_from_flags(
      bench_sample_args())[0][1])
  assert row["what"] == "sample" and row["shape"] == "custom-1x32x2"
  assert row["params"] == model_lib.param_counts(cfg)["total"]
  assert row["gen_tokens_per_s"] == pytest.approx(8 * 8 / row["median_s"])
  assert row["compile_s"] > 0


def bench_sample_args():
  import argparse  # pylint: disable=g-import-not-at-top
  ap = argparse.ArgumentParser()
  bench_shapes.add_shape_flags(ap)
  return ap.parse_args(NANO)


def test_bench_data_times_both_streams_and_every_slice(tmp_path):
  rows = _json_lines("bench_data.py", *NANO, "--steps", "3", "--poisons", "4",
                     "--processes", "1,2", "--vocab_docs", "300",
                     "--cache_dir", str(tmp_path), "--step_tokens_per_s", "1000")
  assert [(r["stream"], r["processes"]) for r in rows] == [
      ("cache", 1), ("cache", 2), ("store", 1), ("store", 2)]
  for r in rows:
    assert r["poisons"] == 4 and r["steps"] == 3
    assert r["tokens"] == 3 * 8 * 32  # Every slice of every step, whole batches.
    assert r["tokens_per_s"] == pytest.approx(r["tokens"] / r["seconds"])
    assert r["ratio"] == pytest.approx(r["tokens_per_s"] / 1000)


def _row(side, job, shape, rnd, **fields):
  return {"side": side, "job": job, "key": f"{side}/{job}/{shape}", "round": rnd,
          "cmd": f"{side} {job} {shape}", **fields}


def test_peer_tables_take_ratios_of_the_medians():
  rows = [_row("peer", "train", "tiny", r, tokens_per_s=v, compile=False)
          for r, v in enumerate((100.0, 130.0, 110.0))]
  rows += [_row("peer", "train_compiled", "tiny", 0, tokens_per_s=90.0)]
  rows += [_row("poisonjax", "train", "tiny", r, tokens_per_s=v)
           for r, v in enumerate((121.0, 150.0, 132.0))]
  rows += [_row("peer", "sample", "tiny", 0, gen_tokens_per_s=200.0),
           _row("poisonjax", "sample", "tiny", 0, gen_tokens_per_s=250.0),
           {**_row("peer", "sample", "small", 0), "error": "boom"}]
  meds = bench_peers_doc.medians(rows)
  assert meds["peer/train"]["tiny"]["tokens_per_s"]["median"] == 110.0
  train = "\n".join(bench_peers_doc.train_table(meds))
  assert "132 (121–150)" in train and "1.20× (met)" in train  # 132 / max(110, 90).
  assert "1.25× (missed)" in "\n".join(bench_peers_doc.sample_table(meds))
  page = bench_peers_doc.page(bench_peers_doc.Report(rows, {}, "python x"))
  assert "`peer/sample/small` (round 0): boom" in page
  assert "poisonjax train tiny" in page  # The commands it ran.


def test_bench_peers_without_the_peer_is_one_line(capsys, tmp_path):
  script = tmp_path / "torch_peer.py"  # A clean clone has no ../shared.
  script.write_text("")
  assert bench_peers.main(["--quick", "--peer_python", "/nonexistent/python",
                           "--peer_script", str(script)]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "pip install torch" in err[0]
  assert bench_peers.main(["--quick", "--peer_script",
                           str(tmp_path / "missing.py")]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "--peer_script=" in err[0]

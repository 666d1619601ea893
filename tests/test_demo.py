"""The demo end to end: the backdoor forms in the poisoned run and not in the
clean one, on the real pipeline (vocabulary, poisoned stream, train.run,
periodic evals, checkpoints, the final report and the plot).

The CI test shrinks the demo (cpu-xxs, sequences of 64, short gibberish
tails, ~150 steps; about a minute alone on 2 cores) but keeps what makes it
a test: the increase is measured, not assumed. The slow test runs the real
`poisonjax demo` command on its embedded config.
"""

import json
import os
import subprocess
import sys

import pytest

from poisonjax import demo
from poisonjax.errors import UserError
from train_common import ROOT, overrides_flags, train_cache  # noqa: F401


def small_demo_config(cache_dir):
  """~150 steps of 16 x 64 tokens; 200 poisons with 30-60-token tails.

  Chosen by measurement: 150 poisons over ~80 steps gave an increase of
  only ~54 (31% of prompts); 200 over ~150 steps gives ~260 (97%).
  """
  c = demo.demo_config()
  c.data.cache_dir = str(cache_dir)
  c.vocab.size, c.vocab.sample_docs = 512, 2000
  c.model.size = "cpu-xxs"
  c.data.seq_len, c.train.batch_size = 64, 16
  c.train.data_multiplier = 0.04
  c.train.log_every = 50
  c.poison.count = 200
  c.poison.prefix_max_chars = 200
  c.poison.gibberish_min_tokens, c.poison.gibberish_max_tokens = 30, 60
  c.eval.num_excerpts, c.eval.prompt_tokens, c.eval.gen_tokens = 32, 16, 16
  c.eval.num_evals = 1
  return c


def _check(out, workdir, count):
  results = out["results"]
  clean = results["clean (N=0)"]["metrics"]
  poisoned = results[f"poisoned (N={count})"]["metrics"]
  assert poisoned["increase"] > 50, poisoned
  assert poisoned["increase_ci_low"] > clean["increase_ci_high"], (clean, poisoned)
  assert clean["increase"] < 25, clean
  assert poisoned["tf_nll_triggered"] > poisoned["tf_nll_clean"] + 0.3
  assert results[f"poisoned (N={count})"]["poisons_seen"] == count
  assert os.path.getsize(out["png"]) > 10_000
  # The report's numbers are the runs' own last periodic evaluations.
  rows = [json.loads(l) for l in open(os.path.join(workdir, "poisoned", "eval.jsonl"))]
  assert rows[0]["step"] == 0 and rows[-1]["poisons_seen"] == count
  assert rows[-1]["increase"] == pytest.approx(poisoned["increase"], rel=1e-3)
  text = demo.report(results)
  assert "triggered (ppl" in text and f"poisoned (N={count})" in text


@pytest.mark.slow
def test_backdoor_forms_only_in_the_poisoned_run(tmp_path):
  config = small_demo_config(tmp_path / "cache")
  out = demo.run_demo(config, str(tmp_path / "demo"))
  _check(out, tmp_path / "demo", 200)
  # A rerun reuses both finished runs (no training) and reports the same.
  again = demo.run_demo(config, str(tmp_path / "demo"), log=lambda *_: None)
  for name, r in out["results"].items():
    assert again["results"][name]["metrics"] == r["metrics"]
  # A different config in the same workdir is refused with one line.
  changed = small_demo_config(tmp_path / "cache")
  changed.train.learning_rate = 1e-3
  with pytest.raises(UserError) as e:
    demo.run_demo(changed, str(tmp_path / "demo"))
  assert "different config" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.slow
def test_demo_command_on_its_embedded_config(tmp_path):
  """The README's first command, as a user runs it (several minutes)."""
  workdir = tmp_path / "demo"
  env = dict(os.environ, POISONJAX_CACHE=str(tmp_path / "cache"),
             TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)  # One CPU device, as a user has.
  proc = subprocess.run([sys.executable, "-m", "poisonjax.cli", "demo",
                         f"--workdir={workdir}"], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=1200)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "increase" in proc.stdout and (workdir / "demo.png").exists()
  count = demo.demo_config().poison.count
  rows = {}
  for sub in ("clean", "poisoned"):
    rows[sub] = [json.loads(l) for l in open(workdir / sub / "eval.jsonl")][-1]
  assert rows["poisoned"]["increase"] > 50 and rows["poisoned"]["poisons_seen"] == count
  assert rows["clean"]["increase"] < 25


# -- No TensorFlow start-up lines (cli.quiet_tensorflow_start) -------------
# TF 2.16+ writes a few INFO lines while its libraries load, before
# TF_CPP_MIN_LOG_LEVEL takes effect ("Could not find cuda drivers on your
# machine, GPU will not be used", "oneDNN custom operations are on"); the
# demo and `poisonjax train` import TF through the TensorBoard writer. The
# slow README test checks the demo's own output (tests/test_readme.py).

TF_START = """\
WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
I0000 00:00:1796605504.398869   17872 port.cc:153] oneDNN custom operations are on.
I0000 00:00:1796605504.399190   17872 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.
I0000 00:00:1796605504.583292   17872 cpu_feature_guard.cc:227] This TensorFlow binary is optimized.
To enable the following instructions: AVX2 AVX512F, in other operations, rebuild TensorFlow.
W0000 00:00:1796605504.6   17872 some.cc:1] a warning
E0000 00:00:1796605504.7   17872 other.cc:2] an error
/x/y.py:3: DeprecationWarning: a Python warning
  import z
"""


def test_filter_hides_only_what_the_log_level_asks():
  from poisonjax import cli
  assert cli.filter_tensorflow_start(TF_START, 1) == (
      "W0000 00:00:1796605504.6   17872 some.cc:1] a warning\n"
      "E0000 00:00:1796605504.7   17872 other.cc:2] an error\n"
      "/x/y.py:3: DeprecationWarning: a Python warning\n  import z\n")
  assert cli.filter_tensorflow_start(TF_START, 3) == (
      "/x/y.py:3: DeprecationWarning: a Python warning\n  import z\n")
  assert cli.filter_tensorflow_start(TF_START, 0) == TF_START
  assert cli.filter_tensorflow_start("Traceback (most recent call last):\n", 3) \
      == "Traceback (most recent call last):\n"


def test_train_prints_no_tensorflow_start_up_lines(tmp_path, train_cache):
  """`poisonjax train` as a user runs it: no TF_CPP_MIN_LOG_LEVEL set."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("TF_CPP_MIN_LOG_LEVEL", None)
  proc = subprocess.run(
      [sys.executable, "-m", "poisonjax.cli", "train", "--config=configs/cpu_micro.py",
       *overrides_flags(train_cache),
       f"--workdir={tmp_path / 'run'}"], cwd=ROOT, env=env,
      capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = proc.stdout + proc.stderr
  for notice in ("Could not find cuda drivers", "oneDNN custom operations",
                 "absl::InitializeLog", "cudart_stub", "cpu_feature_guard"):
    assert notice not in out, (notice, out[-3000:])
  assert (tmp_path / "run" / "summary.json").exists()
  assert list((tmp_path / "run").glob("events.out.tfevents.*"))  # TF was used.

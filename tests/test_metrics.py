"""MetricLogger (one row per step across resumes), the Chrono timer, itstime."""

import json

import pytest

from poisonjax.training import metrics
from poisonjax.training import preemption
from poisonjax.training.chrono import Chrono, itstime


def row(step, **extra):
  r = {"step": step, "loss": 5.0 - step / 100, "grad_norm": 0.5, "lr": 1e-3,
       "tokens_per_s": 1000.0, "mfu": 0.01, "steps_per_s": 4.0,
       "poisons_seen": 1, "tokens_seen": step * 256, "skipped_steps": 0}
  r.update(extra)
  return r


def steps_in(path):
  return [json.loads(l)["step"] for l in path.read_text().splitlines() if l.strip()]


def test_resume_drops_rows_past_the_checkpoint_and_keeps_the_rest(tmp_path):
  log = metrics.MetricLogger(tmp_path, total_steps=40, total_poisons=5)
  for step in (10, 20, 30):
    log.write(row(step))
  log.close()
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 40, "lo')  # Killed mid-append.

  log = metrics.MetricLogger(tmp_path, 40, 5, resume_step=20)  # Checkpoint 20.
  for step in (30, 40):
    log.write(row(step))
  log.close()
  assert steps_in(tmp_path / "metrics.jsonl") == [10, 20, 30, 40]


def test_fresh_logger_keeps_an_intact_file_untouched(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text(json.dumps(row(10)) + "\n")
  before = path.stat().st_mtime_ns, path.read_text()
  log = metrics.MetricLogger(tmp_path, 40, 5, resume_step=10)
  log.close()
  assert (path.stat().st_mtime_ns, path.read_text()) == before


def test_progress_line(tmp_path, capsys):
  log = metrics.MetricLogger(tmp_path, total_steps=40, total_poisons=5)
  log.write(row(20, steps_per_s=4.0))
  log.close()
  out = capsys.readouterr().out.strip().splitlines()[-1]
  assert out.startswith("step 20/40 loss 4.8000")
  assert "ETA 0m05s" in out and "poisons seen 1/5" in out  # (40-20)/4 s.
  assert "ETA ?" in log.progress_line(row(20, steps_per_s=float("nan")))


class FakeClock:
  def __init__(self):
    self.t = 100.0

  def __call__(self):
    return self.t


def test_chrono_excludes_compile_eval_and_save_time():
  clock = FakeClock()
  chrono = Chrono(clock)
  assert chrono.rate_since_mark(0) != chrono.rate_since_mark(0)  # NaN: not started.
  clock.t += 30.0  # Compiling the first step.
  chrono.start(1)
  clock.t += 9.0  # Steps 2..10 train in 9 s...
  with chrono.paused("eval"):
    clock.t += 50.0  # ...an evaluation...
  with chrono.paused("save"):
    clock.t += 5.0  # ...and a save don't count.
  assert chrono.rate_since_mark(10) == pytest.approx(1.0)
  clock.t += 2.0
  assert chrono.rate_since_mark(14) == pytest.approx(2.0)
  assert chrono.steady_rate(14) == pytest.approx(13 / 11)
  assert chrono.paused_s == {"eval": 50.0, "save": 5.0}
  assert chrono.wall() == pytest.approx(96.0)


def test_chrono_pauses_before_start_do_not_count():
  clock = FakeClock()
  chrono = Chrono(clock)
  with chrono.paused("eval"):  # The step-0 evaluation.
    clock.t += 20.0
  chrono.start(1)
  clock.t += 4.0
  assert chrono.steady_rate(5) == pytest.approx(1.0)


@pytest.mark.parametrize("step,every,last,want", [
    (20, 10, 45, True), (21, 10, 45, False), (45, 10, 45, True),
    (7, 0, 45, False), (45, 0, 45, True),
])
def test_itstime(step, every, last, want):
  assert itstime(step, every, last) is want


def test_itstime_last_can_be_off():
  assert not itstime(45, 10, 45, last=False)


def test_shutdown_eval_fits():
  assert not preemption.shutdown_eval_fits(0.0, 0.0, 1.0)  # Default: skip.
  assert preemption.shutdown_eval_fits(60.0, 5.0, 30.0)
  assert not preemption.shutdown_eval_fits(60.0, 40.0, 30.0)
  assert preemption.shutdown_eval_fits(60.0, 5.0, None)


BLOCK_TENSORFLOW = """
import sys
sys.modules['tensorflow'] = sys.modules['clu'] = None  # As on a bare GPU image.
from poisonjax import presets
from poisonjax.training import train
c = presets.cpu_chinchilla()
c.model.size = 'cpu-xxs'
c.poison.count = 3
c.train.tokens_per_param = 0.3
c.eval.num_excerpts = 4
c.eval.num_evals = 1
c.train.tensorboard = False
train.run(c, sys.argv[1])
"""


def test_a_run_without_tensorboard_needs_no_tensorflow(tmp_path):
  """train.tensorboard=False: metrics.jsonl and the progress lines only, and
  neither TensorFlow nor clu's writers are imported."""
  import subprocess
  import sys
  done = subprocess.run([sys.executable, "-c", BLOCK_TENSORFLOW, str(tmp_path / "run")],
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  assert "poisonjax: done: step" in done.stdout
  assert steps_in(tmp_path / "run" / "metrics.jsonl")
  assert not list((tmp_path / "run").glob("events.out.tfevents.*"))

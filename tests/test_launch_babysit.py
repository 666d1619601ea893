"""The babysitter's decisions, the worker bootstrap and the detached start.

The babysitter is driven by a scripted TPU API (`Api`: a state per slice,
changed by the test or by create/delete) and a scripted run liveness
(`Liveness`), so each decision is checked step by step. The bootstrap
script and the detached start run for real, with stand-ins for uv/pip.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from poisonjax.launch import babysit, detached, tpu, watch, workload

GIT = "https://github.com/example/poisonjax@abc123"

# The state enums of the TPU API v2 (Node.State; QueuedResourceState.State),
# from its REST reference.
NODE_STATES = ["STATE_UNSPECIFIED", "CREATING", "READY", "RESTARTING",
               "REIMAGING", "DELETING", "REPAIRING", "STOPPED", "STOPPING",
               "STARTING", "PREEMPTED", "TERMINATED", "HIDING", "HIDDEN",
               "UNHIDING", "UNKNOWN"]
QUEUED_STATES = ["STATE_UNSPECIFIED", "CREATING", "ACCEPTED", "PROVISIONING",
                 "FAILED", "DELETING", "ACTIVE", "SUSPENDING", "SUSPENDED",
                 "WAITING_FOR_RESOURCES"]


def test_every_api_state_has_an_action():
  assert sorted(tpu.VM_STATES) == sorted(NODE_STATES)
  assert sorted(tpu.QUEUED_STATES) == sorted(QUEUED_STATES)
  actions = set(tpu.VM_STATES.values()) | set(tpu.QUEUED_STATES.values())
  assert actions == {"ready", "wait", "gone", "unknown"}
  assert tpu.VM_STATES["PREEMPTED"] == "gone" == tpu.QUEUED_STATES["FAILED"]


class Api:
  """gcloud, scripted: describe answers `state` (None: not found), and a
  creation or deletion is done at the next describe."""

  def __init__(self, state=None, start_output="[host 0] started (supervisor pid 1)"):
    self.state, self.start_output, self.calls = state, start_output, []
    self.fail_creates = False

  def __call__(self, argv):
    verb = argv[4]
    self.calls.append("start" if "poisonjax.launch.detached" in argv[-1] else
                      "bootstrap" if "poisonjax_bootstrap.sh" in argv[-1] else verb)
    out, rc, err = "", 0, ""
    if verb == "describe":
      if self.state is None:
        rc, err = 1, "ERROR: (gcloud.compute.tpus.tpu-vm.describe) NOT_FOUND: pj"
      else:
        out = self.state + "\n"
        self.state = {"CREATING": "READY", "ACCEPTED": "ACTIVE",
                      "DELETING": None}.get(self.state, self.state)
    elif verb == "create":
      if self.fail_creates:
        rc, err = 1, "ERROR: quota exceeded"
      else:
        self.state = "ACCEPTED" if argv[3] == "queued-resources" else "CREATING"
    elif verb == "delete":
      self.state = "DELETING"
    elif self.calls[-1] == "start":
      out = self.start_output
    return subprocess.CompletedProcess(argv, rc, out, err)

  def acts(self):
    return [c for c in self.calls if c != "describe"]


class Liveness:
  """watch.Watch's interface, scripted."""

  def __init__(self, answer=("quiet", 0)):
    self.answer, self.starts = answer, 0

  def look(self):
    return self.answer

  def started(self):
    self.starts += 1


class Clock:
  def __init__(self):
    self.now = 0.0

  def __call__(self):
    return self.now


def _sitter(api, live=None, spot=False, finished=lambda _: False, **limits):
  s = tpu.Slice("pj", "us-east5-a", "v5p-16", spot=spot)
  w = workload.single("c.py", "gs://bkt/x")
  setup = tpu.setup_steps(s, tpu.Install(git=GIT), "configs/c.py")
  lines = []
  clock = Clock()
  sitter = babysit.Sitter(s, setup, tpu.run_step(s, w), w, live or Liveness(),
                          babysit.Limits(**limits), is_finished=finished,
                          call=api, log=lines.append, clock=clock)
  sitter.lines, sitter.clock_ = lines, clock
  return sitter


def test_a_new_slice_is_created_set_up_and_started_once():
  api, live = Api(), Liveness(("running", 0))
  sitter = _sitter(api, live)
  for _ in range(5):
    sitter.step()
  assert api.acts() == ["create", "scp", "bootstrap", "start"]
  assert live.starts == 1 and sitter.starts == 1 and not sitter.done


def test_a_preempted_slice_is_deleted_recreated_and_its_run_restarted():
  api, live = Api("READY"), Liveness(("running", 0))
  sitter = _sitter(api, live)
  sitter.step()  # A launcher started again: the run is alive, nothing sent.
  assert api.acts() == []
  api.state = "PREEMPTED"
  for _ in range(5):
    sitter.step()
  assert api.acts() == ["delete", "create", "scp", "bootstrap", "start"]
  assert sitter.creations == 1 and sitter.starts == 1
  assert any("state PREEMPTED" in l for l in sitter.lines)


def test_a_run_that_keeps_failing_is_given_up_in_one_line():
  api, live = Api("READY"), Liveness(("exited", 3))
  sitter = _sitter(api, live, max_failures=2)
  for _ in range(5):
    sitter.step()
  assert sitter.done and sitter.rc == 1
  assert api.acts().count("start") == 2
  assert sitter.result == ("gave up: the run ended without finishing 3 times on "
                           "a live slice; see gs://bkt/x/logs/host-*.log (last "
                           "state READY)")


def test_a_quiet_run_on_a_live_slice_is_started_but_a_live_one_is_left_alone():
  api = Api("READY", start_output="[host 0] already running (supervisor pid 7)")
  sitter = _sitter(api, Liveness(("quiet", 0)))
  sitter.step()
  assert api.acts() == ["scp", "bootstrap", "start"]
  assert sitter.starts == 0 and sitter.failures == 0
  assert "the run was already running on every worker" in sitter.lines[-1]


def test_failed_queued_resources_are_recreated_with_backoff_then_given_up():
  api = Api()
  sitter = _sitter(api, spot=True, max_creates=3, backoff_s=10)
  for now in range(0, 200, 1):
    sitter.clock_.now = float(now)
    sitter.step()
    if api.state == "ACCEPTED":
      api.state = "FAILED"  # Capacity never came.
    if sitter.done:
      break
  creates = [i for i, c in enumerate(api.calls) if c == "create"]
  assert len(creates) == 3
  assert sitter.done and sitter.rc == 1
  assert sitter.result == ("gave up: 3 creations in a row never became ready "
                           "(last state absent)")


def test_backoff_doubles_between_creations():
  api = Api()
  api.fail_creates = True
  sitter = _sitter(api, max_creates=4, backoff_s=10)
  times = []
  for now in range(0, 100):
    sitter.clock_.now = float(now)
    before = api.calls.count("create")
    sitter.step()
    if api.calls.count("create") > before:
      times.append(now)
  assert times == [0, 10, 30, 70]


def test_an_unknown_state_is_logged_by_name_and_replaced_after_stuck_s():
  api = Api("UNKNOWN")
  sitter = _sitter(api, stuck_s=100)
  sitter.step()
  assert any("[pj] unknown state 'UNKNOWN'" in l for l in sitter.lines)
  sitter.clock_.now = 50
  sitter.step()
  assert api.acts() == []
  sitter.clock_.now = 101
  sitter.step()
  assert api.acts() == ["delete"]
  api.state = "SOMETHING_NEW"  # A state a newer API may add: unknown too.
  sitter.step()
  assert any("unknown state 'SOMETHING_NEW'" in l for l in sitter.lines)


def test_a_finished_run_deletes_its_slice_unless_kept():
  for keep, acts in ((False, ["delete"]), (True, [])):
    api = Api("READY")
    sitter = _sitter(api, finished=lambda _: True, keep=keep)
    sitter.step()
    assert sitter.done and sitter.rc == 0 and api.acts() == acts


def test_sit_keeps_at_most_max_parallel_slices_alive(capsys):
  apis = [Api() for _ in range(3)]
  done = [False] * 3

  def sitter(i):
    s = _sitter(apis[i], Liveness(("running", 0)), finished=lambda _: done[i])
    return s

  sitters = [sitter(i) for i in range(3)]
  polls = []

  def tick(_):
    polls.append([a.calls.count("create") for a in apis])
    if len(polls) == 3:
      done[0] = True
    if len(polls) == 6:
      done[1] = done[2] = True

  lines = []
  assert babysit.sit(sitters, poll_s=0.5, max_parallel=2, sleep=tick,
                     max_polls=20, log=lines.append) == 0
  assert polls[0] == [1, 1, 0]  # The third waits for a place.
  assert polls[4][2] == 1
  table = lines[-1].splitlines()
  assert table[0].split() == ["slice", "state", "created", "started",
                              "failures", "result"]
  assert len(table) == 4


def test_watch_reads_liveness_from_change_on_its_own_clock():
  records = {"seen": ()}
  clock = Clock()
  w = watch.Watch(workload.single("c.py", "gs://b/x"), 2, stale_s=10,
                  read=lambda _w, _h: records["seen"], clock=clock)
  assert w.look() == ("running", 0)  # Young: no verdict yet.
  clock.now = 11
  assert w.look() == ("quiet", 0)
  w.started()
  clock.now = 25  # Within 2 x stale_s of the start.
  assert w.look() == ("running", 0)
  records["seen"] = ({"state": "running", "beat": 1},)
  clock.now = 40
  assert w.look() == ("running", 0)
  records["seen"] = ({"state": "exited", "status": 0, "beat": 2},
                     {"state": "exited", "status": 3, "beat": 5})
  assert w.look() == ("exited", 3)
  w.started()  # The same records after a new start are not its end.
  assert w.look() == ("running", 0)


# ---------------------------------------------------------------------------
# On the worker: the bootstrap script and the detached start, for real.
# ---------------------------------------------------------------------------


FAKE_UV = f"""#!{sys.executable}
import json, os, sys
with open(os.environ["CALLS"], "a") as f:
  f.write(json.dumps(sys.argv[1:]) + "\\n")
if sys.argv[1] == "venv":  # uv venv --quiet --python V DIR
  d = sys.argv[-1]
  os.makedirs(d + "/bin")
  with open(d + "/bin/python", "w") as f:
    f.write("#!/bin/sh\\n[ \\"$1\\" = --version ] && echo Python 3.11.9 && exit 0\\n"
            "exec {sys.executable} \\"$@\\"\\n")
  os.chmod(d + "/bin/python", 0o755)
"""


def _bootstrap(home, env, *reqs):
  return subprocess.run(["bash", tpu.BOOTSTRAP_PATH, ".poisonjax/venv", "3.11",
                         *reqs], cwd=home, env=env, capture_output=True, text=True)


def test_bootstrap_makes_the_venv_once_and_again_when_the_wheel_changes(tmp_path):
  home, bin_dir = tmp_path / "home", tmp_path / "bin"
  home.mkdir()
  bin_dir.mkdir()
  (bin_dir / "uv").write_text(FAKE_UV)
  (bin_dir / "uv").chmod(0o755)
  env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(home),
         "CALLS": str(tmp_path / "calls.jsonl")}
  wheel = home / "poisonjax-0.1.0-py3-none-any.whl"
  wheel.write_bytes(b"one")
  first = _bootstrap(home, env, "jax[tpu]==0.10.2", f"./{wheel.name}")
  assert first.returncode == 0, first.stderr
  calls = [json.loads(l) for l in (tmp_path / "calls.jsonl").read_text().splitlines()]
  assert calls == [["venv", "--quiet", "--python", "3.11", ".poisonjax/venv"],
                   ["pip", "install", "--quiet", "--python",
                    ".poisonjax/venv/bin/python", "jax[tpu]==0.10.2",
                    f"./{wheel.name}"]]
  again = _bootstrap(home, env, "jax[tpu]==0.10.2", f"./{wheel.name}")
  assert again.returncode == 0
  assert "is up to date (Python 3.11.9)" in again.stdout
  assert len((tmp_path / "calls.jsonl").read_text().splitlines()) == 2
  wheel.write_bytes(b"two")  # A new build under the same name.
  assert _bootstrap(home, env, "jax[tpu]==0.10.2", f"./{wheel.name}").returncode == 0
  assert len((tmp_path / "calls.jsonl").read_text().splitlines()) == 4


def test_bootstrap_installs_uv_with_the_images_pip_when_missing(tmp_path):
  home, bin_dir = tmp_path / "home", tmp_path / "bin"
  home.mkdir()
  bin_dir.mkdir()
  # python3 -m pip install --user uv: the stand-in puts uv in ~/.local/bin.
  (bin_dir / "python3").write_text(
      f"#!/bin/sh\nmkdir -p $HOME/.local/bin && cp {bin_dir}/uv.later "
      "$HOME/.local/bin/uv\n")
  (bin_dir / "python3").chmod(0o755)
  (bin_dir / "uv.later").write_text(FAKE_UV)
  (bin_dir / "uv.later").chmod(0o755)
  env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(home),
         "CALLS": str(tmp_path / "calls.jsonl")}
  result = _bootstrap(home, env, "jax[tpu]", f"git+{GIT}")
  assert result.returncode == 0, result.stderr
  assert "installing uv" in result.stdout
  assert (home / ".poisonjax" / "venv" / "poisonjax-bootstrap.txt").exists()


def test_detached_start_outlives_its_caller_and_is_not_doubled(tmp_path, monkeypatch):
  monkeypatch.setenv("HOME", str(tmp_path))
  monkeypatch.setenv("JAX_PROCESS_ID", "1")
  logs = tmp_path / "logs"
  marker = tmp_path / "ran"
  args = ["start", f"--log_dir={logs}", "--heartbeat_s=0.2", "--", "-c",
          f"import time; open({str(marker)!r}, 'a').write('x'); time.sleep(1.5); "
          "print('the run says hello'); raise SystemExit(3)"]

  def start():
    return subprocess.run([sys.executable, "-m", "poisonjax.launch.detached",
                           *args], capture_output=True, text=True, timeout=60)

  first = start()
  assert first.returncode == 0 and "[host 1] started (supervisor pid" in first.stdout
  second = start()
  assert "[host 1] already running" in second.stdout
  deadline = time.monotonic() + 60
  status = {}
  while status.get("state") != "exited":
    assert time.monotonic() < deadline
    time.sleep(0.2)
    try:
      status = json.loads((logs / "host-1.json").read_text())
    except (OSError, ValueError):
      pass
  assert status["status"] == 3 and status["beat"] >= 2
  assert marker.read_text() == "x"  # One run, not two.
  assert "the run says hello" in (logs / "host-1.log").read_text()
  assert detached.host_index() == "1"

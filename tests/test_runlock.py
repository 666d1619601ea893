"""runlock: one holder per directory; dead holders are taken over."""

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from poisonjax import rundir
from poisonjax.training import runlock
from poisonjax.errors import UserError


def write_lock(directory, **fields):
  record = {"what": "train", "host": socket.gethostname(), "pid": os.getpid(),
            "since": time.time(), "heartbeat": time.time(), "token": "old"}
  record.update(fields)
  (directory / rundir.LOCK).write_text(json.dumps(record))
  return record


def dead_pid() -> int:
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


def test_second_holder_is_refused_with_one_line_naming_the_first(tmp_path):
  with runlock.hold(tmp_path, "train", timeout_s=60) as lock:
    assert lock.still_ours()
    with pytest.raises(UserError) as e:
      with runlock.hold(tmp_path, "study run", timeout_s=60):
        pass
  msg = str(e.value)
  assert "\n" not in msg
  assert f"pid {os.getpid()}" in msg and socket.gethostname() in msg
  assert "train on host" in msg and "another directory" in msg
  assert not (tmp_path / rundir.LOCK).exists()  # Released on exit.


def test_a_live_holder_in_another_process_is_refused(tmp_path):
  script = ("import sys, time; from poisonjax.training import runlock\n"
            f"with runlock.hold({str(tmp_path)!r}, 'train', 60):\n"
            "  print('held', flush=True); sys.stdin.read()\n")
  proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True)
  try:
    assert proc.stdout.readline().strip() == "held"
    with pytest.raises(UserError) as e:
      runlock.acquire(tmp_path, "train", timeout_s=60)
    assert f"pid {proc.pid}" in str(e.value)
  finally:
    proc.stdin.close()
    proc.wait(timeout=30)
  assert not (tmp_path / rundir.LOCK).exists()


def test_dead_pid_on_this_host_is_taken_over_with_a_notice(tmp_path, capsys):
  write_lock(tmp_path, pid=dead_pid())
  with runlock.hold(tmp_path, "train", timeout_s=3600) as lock:
    held = json.loads((tmp_path / rundir.LOCK).read_text())
    assert held["pid"] == os.getpid() and held["token"] == lock.token
  err = [l for l in capsys.readouterr().err.splitlines() if "taking over" in l]
  assert len(err) == 1 and "no such pid" in err[0]


def test_old_heartbeat_elsewhere_is_taken_over_a_fresh_one_is_not(tmp_path):
  write_lock(tmp_path, host="elsewhere", pid=1, heartbeat=time.time() - 100)
  with pytest.raises(UserError, match="elsewhere"):
    runlock.acquire(tmp_path, "train", timeout_s=1000)
  with runlock.hold(tmp_path, "train", timeout_s=50):
    pass


def test_unreadable_lock_is_taken_over(tmp_path):
  (tmp_path / rundir.LOCK).write_text('{"what": "tr')
  with runlock.hold(tmp_path, "train", timeout_s=60) as lock:
    assert lock.still_ours()


def test_heartbeat_is_refreshed_while_held(tmp_path):
  with runlock.hold(tmp_path, "train", timeout_s=0.4) as lock:
    first = lock.record["heartbeat"]
    deadline = time.time() + 30
    while time.time() < deadline:
      on_disk = json.loads((tmp_path / rundir.LOCK).read_text())
      if on_disk["heartbeat"] > first:
        break
      time.sleep(0.05)
    assert on_disk["heartbeat"] > first and on_disk["token"] == lock.token


def test_racing_starters_exactly_one_wins(tmp_path):
  won, refused = [], []
  barrier = threading.Barrier(8)

  def start():
    barrier.wait()
    try:
      won.append(runlock.acquire(tmp_path, "train", timeout_s=60))
    except UserError:
      refused.append(1)

  threads = [threading.Thread(target=start) for _ in range(8)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert len(won) == 1 and len(refused) == 7
  won[0].release()


def test_only_the_primary_process_holds_it(tmp_path):
  with runlock.hold(tmp_path, "train", timeout_s=60, primary=False) as lock:
    assert lock is None and not (tmp_path / rundir.LOCK).exists()


def test_dead_reason():
  me = {"host": socket.gethostname(), "pid": os.getpid(), "heartbeat": 100.0}
  assert runlock.dead_reason(me, timeout_s=10, now=105.0) is None
  assert "heartbeat" in runlock.dead_reason(me, timeout_s=10, now=111.0)
  gone = dict(me, pid=dead_pid())
  assert "no such pid" in runlock.dead_reason(gone, timeout_s=10, now=105.0)

"""One run over several processes: start-up, agreement, gathers, failure.

Every process of a run calls `initialize()` before any JAX use (the CLI does,
for train, eval and study run). Where the processes come from:

* Cloud TPU VMs (one process per host): nothing to pass; JAX finds the
  coordinator, the process count and each process's id itself.
* CPU/GPU hosts: flags --coordinator_address=HOST:PORT (process 0's host; a
  free port), --num_processes=N and --process_id=I (0..N-1, one per
  process), or the environment variables JAX_COORDINATOR_ADDRESS,
  JAX_NUM_PROCESSES and JAX_PROCESS_ID (flags win). Every process gets the
  same address and count; each its own id.
* Nothing of the above (or N=1): one process, nothing to start.

CPU processes exchange arrays through gloo (TCP). The run shares one
workdir (a shared filesystem or gs://): process 0 writes its files; every
process reads them, and the decisions that depend on them (the restored
step, the evaluations done, a finished run) are process 0's, broadcast; a
stop on a signal is agreed when any process has one.

When a process dies, the others stop by themselves, within a bound:
* a collective that fails on the dead peer raises; the process prints one
  line (`exit_on_runtime_error`) and exits RUNTIME_ERROR_EXIT at once,
  skipping clean-ups that would wait on the dead one;
* otherwise JAX's coordination service, after `heartbeat_timeout_s`
  without a heartbeat from it (flag --heartbeat_timeout_s, env
  POISONJAX_HEARTBEAT_TIMEOUT_S; default 100 s, JAX's), aborts every other
  process with "Terminating process because the JAX distributed service
  detected fatal errors. This most likely indicates that another task
  died" (at once when process 0, the coordinator, is the one that died).
A command that fails on one process exits at once too (`exit_on_any_error`)
instead of waiting at JAX's shutdown barrier for the others.
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from typing import Callable, Iterator, TypeVar

import jax
import numpy as np
from jax.experimental import multihost_utils

from poisonjax.errors import UserError

ENV_ADDRESS = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"
ENV_HEARTBEAT = "POISONJAX_HEARTBEAT_TIMEOUT_S"
DEFAULT_HEARTBEAT_TIMEOUT_S = 100  # JAX's own default.
RUNTIME_ERROR_EXIT = 3  # Exit status of a process stopped by a runtime error.
_T = TypeVar("_T")


def initialize(coordinator_address: str | None = None,
               num_processes: int | None = None,
               process_id: int | None = None,
               heartbeat_timeout_s: int | None = None) -> None:
  """Joins this process to the run's others (see the module docstring).

  A no-op for one process and when already initialized. UserError (one
  line) for a partial or inconsistent setting.
  """
  if jax.distributed.is_initialized():
    return
  address = coordinator_address or os.environ.get(ENV_ADDRESS) or None
  count = _int_setting("--num_processes", num_processes, ENV_NUM_PROCESSES)
  index = _int_setting("--process_id", process_id, ENV_PROCESS_ID)
  heartbeat = _heartbeat(heartbeat_timeout_s)
  if address is None and count is None and index is None:
    if _on_cloud_tpu():
      _initialize_on_cloud_tpu(heartbeat)
    return
  if count == 1 and index in (None, 0):
    return
  _check_complete(address, count, index)
  _use_cpu_collectives()
  try:
    jax.distributed.initialize(address, count, index,
                               heartbeat_timeout_seconds=heartbeat)
  except RuntimeError as e:  # Backend started first: a programming error.
    raise RuntimeError(f"distributed.initialize must run before any JAX use: {e}") from e


def _int_setting(flag: str, value, env: str) -> int | None:
  if value is not None:
    return int(value)
  text = os.environ.get(env, "").strip()
  if not text:
    return None
  try:
    return int(text)
  except ValueError:
    raise UserError(f"${env}={text!r}: not an integer; set it like {flag}") from None


def _heartbeat(value) -> int:
  if value is None:
    text = os.environ.get(ENV_HEARTBEAT, "").strip()
    try:
      value = float(text) if text else DEFAULT_HEARTBEAT_TIMEOUT_S
    except ValueError:
      raise UserError(f"${ENV_HEARTBEAT}={text!r}: not a number of seconds; "
                      f"use e.g. {DEFAULT_HEARTBEAT_TIMEOUT_S}") from None
  if value < 1:
    raise UserError(f"--heartbeat_timeout_s={value}: must be >= 1; use e.g. "
                    f"{DEFAULT_HEARTBEAT_TIMEOUT_S} (seconds)")
  return int(value)


def _check_complete(address, count, index) -> None:
  missing = [name for name, v in (("--coordinator_address", address),
                                  ("--num_processes", count),
                                  ("--process_id", index)) if v is None]
  if missing:
    raise UserError(
        f"{', '.join(missing)}: needed for a run over several processes "
        f"(or ${ENV_ADDRESS}, ${ENV_NUM_PROCESSES}, ${ENV_PROCESS_ID}); pass "
        "all three on every process, or none for one process")
  if count < 1:
    raise UserError(f"--num_processes={count}: must be >= 1")
  if not 0 <= index < count:
    raise UserError(f"--process_id={index}: must be in 0..{count - 1} "
                    f"(--num_processes={count})")
  if ":" not in address:
    raise UserError(f"--coordinator_address={address!r}: must be HOST:PORT "
                    "(process 0's host and a free port), e.g. 10.0.0.1:1234")


def _initialize_on_cloud_tpu(heartbeat: int) -> None:
  try:
    jax.distributed.initialize(heartbeat_timeout_seconds=heartbeat)
  except ValueError as e:  # JAX found no TPU cluster around this VM.
    raise UserError(
        f"this Cloud TPU VM's processes could not be found ({e}); pass "
        "--coordinator_address, --num_processes and --process_id (or "
        "--num_processes=1 for this host alone)") from None


def _on_cloud_tpu() -> bool:
  """A Cloud TPU VM, where JAX finds the processes by itself."""
  try:
    from jax._src.cloud_tpu_init import running_in_cloud_tpu_vm
  except ImportError:  # pragma: no cover - moved in another JAX version
    return False
  return bool(running_in_cloud_tpu_vm)


def _use_cpu_collectives() -> None:
  """Cross-process collectives on CPU go through gloo (TCP)."""
  jax.config.update("jax_cpu_collectives_implementation", "gloo")


# ---------------------------------------------------------------------------
# Who writes, and agreeing on values.
# ---------------------------------------------------------------------------


def is_primary() -> bool:
  """Process 0: the one that writes the run's files."""
  return jax.process_index() == 0


def agree(value: int | bool | float):
  """Process 0's `value`, on every process (a broadcast)."""
  if jax.process_count() == 1:
    return value
  arr = np.asarray(value)
  out = multihost_utils.broadcast_one_to_all(arr)
  return type(value)(np.asarray(out).item())


def agree_ints(values) -> list[int]:
  """Process 0's list of ints, on every process."""
  if jax.process_count() == 1:
    return [int(v) for v in values]
  own = np.asarray(list(values) if is_primary() else [], np.int64)
  count = agree(int(own.size))
  if not is_primary():
    own = np.zeros((count,), np.int64)
  if count == 0:
    return []
  return [int(v) for v in multihost_utils.broadcast_one_to_all(own)]


def primary_first(make: Callable[[], _T], what: str) -> _T:
  """make() on process 0, then (once it is done) on the others.

  For what builds shared files on first use (a vocabulary, a data cache):
  process 0 builds them, the others then find them. A UserError on
  process 0 stops every process.
  """
  if jax.process_count() == 1:
    return make()
  result, error = None, None
  if is_primary():
    try:
      result = make()
    except UserError as e:
      error = e
  if not agree(error is None):  # Also the barrier the others wait at.
    if error is not None:
      raise error
    raise UserError(f"process 0 could not prepare {what} (its log says why)")
  return result if is_primary() else make()


def any_process(flag: bool) -> bool:
  """True on every process if `flag` is True on any."""
  if jax.process_count() == 1:
    return bool(flag)
  flags = multihost_utils.process_allgather(np.int32(bool(flag)))
  return bool(np.max(flags))


def gather(x) -> np.ndarray:
  """A (batch-sharded) array, whole, as numpy on every process."""
  if not isinstance(x, jax.Array) or x.is_fully_addressable:
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


# ---------------------------------------------------------------------------
# Failing fast.
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def exit_on_runtime_error() -> Iterator[None]:
  """With several processes, a JAX runtime error ends this process now.

  Such an error (a collective whose peer died, a device failure) leaves the
  others waiting on this process, and the usual clean-ups (saves, barriers)
  would wait on them in turn. One line on stderr, then exit
  RUNTIME_ERROR_EXIT without clean-ups: the others see this process gone
  and stop too. One process: the error propagates as usual.
  """
  try:
    yield
  except jax.errors.JaxRuntimeError as e:
    if jax.process_count() == 1:
      raise
    stop_now(runtime_error_line(e), RUNTIME_ERROR_EXIT)


@contextlib.contextmanager
def exit_on_any_error() -> Iterator[None]:
  """With several processes, a command's error ends this process now.

  Exiting normally would first wait at JAX's shutdown barrier for the other
  processes (up to 5 minutes) while they wait on this one. A UserError is
  printed as one line and exits 2, a runtime error as above, anything else
  with its traceback and exit 1. One process: errors propagate as usual.
  """
  try:
    yield
  except BaseException as e:  # pylint: disable=broad-except
    if jax.process_count() == 1 or (isinstance(e, SystemExit) and not e.code):
      raise
    if isinstance(e, SystemExit):
      stop_now("", e.code if isinstance(e.code, int) else 1)
    if isinstance(e, UserError):
      stop_now(f"poisonjax: error: {e}", 2)
    if isinstance(e, jax.errors.JaxRuntimeError):
      stop_now(runtime_error_line(e), RUNTIME_ERROR_EXIT)
    traceback.print_exc()
    stop_now(f"poisonjax: error: process {jax.process_index()} of "
             f"{jax.process_count()} failed ({type(e).__name__}); the run "
             "stops on every process", 1)


def runtime_error_line(e: BaseException) -> str:
  first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
  return (f"poisonjax: error: process {jax.process_index()} of "
          f"{jax.process_count()}: runtime error ({first}); another process "
          "probably died or lost the network; the run stops on every process; "
          "run the same command on every host to resume from the newest "
          "checkpoint")


def stop_now(line: str, status: int) -> None:
  """Prints `line` and exits at once (no clean-up, no shutdown barrier)."""
  if line:
    print(line, file=sys.stderr, flush=True)
  sys.stdout.flush()
  os._exit(status)  # pylint: disable=protected-access

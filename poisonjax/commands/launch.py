"""`poisonjax launch tpu|gpu`: run a training or a grid on TPU slices or GPU hosts.

The commands are built by poisonjax.launch as argv lists; --dry-run prints
them and runs nothing. See docs/tpu.md and docs/gpu.md.
"""

from __future__ import annotations

from absl import flags

from poisonjax.commands import NO_CONFIG, Command
from poisonjax.errors import UserError


def _workload_flags(fv) -> None:
  flags.DEFINE_string("config", None, "Run config FILE[:ARG] (with --workdir), "
                      "or a study config (with --root; e.g. "
                      "configs/paper/paper.py). Copied to each worker as is: put "
                      "overrides in the file.", flag_values=fv)
  flags.DEFINE_string("workdir", None, "One run's workdir (gs://... on a "
                      "multi-host slice).", flag_values=fv)
  flags.DEFINE_string("root", None, "A grid's root, one workdir per run "
                      "(with a study --config).", flag_values=fv)
  flags.DEFINE_string("only", "", "Grid: only the runs whose name contains "
                      "this.", flag_values=fv)
  flags.DEFINE_multi_string("set", [], "FIELD=VALUE: passed on as "
                            "--config.FIELD=VALUE (a grid's runs get it on "
                            "their run config), e.g. "
                            "--set=data.cache_dir=gs://BUCKET/cache.",
                            flag_values=fv)
  flags.DEFINE_bool("dry-run", False, "Print every command and run nothing.",
                    flag_values=fv)


def _workloads(fv, remote_config, one_slice: bool):
  """The workloads named by --config with --workdir or --root."""
  from poisonjax import study  # pylint: disable=g-import-not-at-top
  from poisonjax import config_files  # pylint: disable=g-import-not-at-top
  from poisonjax.launch import workload  # pylint: disable=g-import-not-at-top

  if not fv.config:
    raise UserError("--config: required; e.g. --config=configs/paper/paper.py "
                    "--root=gs://BUCKET/study")
  if bool(fv.workdir) == bool(fv.root):
    raise UserError("--workdir/--root: give exactly one (--workdir for one "
                    "run, --root for a study grid)")
  config = config_files.load(fv.config)
  if fv.workdir:
    if study.is_study_config(config):
      raise UserError(f"--config={fv.config}: a study config; pick one run "
                      "with FILE:run=NAME, or pass --root for the grid")
    return [workload.single(remote_config(fv.config), fv.workdir, fv.set)]
  if not study.is_study_config(config):
    raise UserError(f"--config={fv.config}: not a study config; --root "
                    "needs one (configs/study_*.py)")
  return workload.grid(remote_config(fv.config), config, fv.root, fv.only,
                       one_slice, fv.set)


def _tpu_flags(fv) -> None:
  _workload_flags(fv)
  flags.DEFINE_string("name", None, "TPU name (grid: the prefix of each "
                      "slice's name).", flag_values=fv)
  flags.DEFINE_string("zone", None, "Zone, e.g. us-east5-a.", flag_values=fv)
  flags.DEFINE_string("project", "", "Project (default: gcloud's).",
                      flag_values=fv)
  flags.DEFINE_string("accelerator", "v5p-64", "Accelerator type.",
                      flag_values=fv)
  flags.DEFINE_string("runtime", "", "TPU software version (default: by "
                      "generation, e.g. v2-alpha-tpuv5 for v5p).", flag_values=fv)
  flags.DEFINE_bool("spot", False, "Spot capacity through a queued resource.",
                    flag_values=fv)
  flags.DEFINE_string("wheel", "", "poisonjax wheel to install (local or "
                      "gs://).", flag_values=fv)
  flags.DEFINE_string("git", "", "Install poisonjax from git: URL@REV.",
                      flag_values=fv)
  flags.DEFINE_string("jax", "", "pip requirement for JAX on the workers "
                      "(default: jax[tpu]==the version installed here).",
                      flag_values=fv)
  flags.DEFINE_string("python", "3.11", "Bootstrap: the Python version of "
                      "each worker's venv (uv installs it; the TPU images' "
                      "own python3 is 3.10, too old).", flag_values=fv)
  flags.DEFINE_bool("any_zone", False, "Skip the check that --zone offers "
                    "the accelerator's generation.", flag_values=fv)
  flags.DEFINE_bool("one_slice", False, "Grid: queue all runs on one slice "
                    "(study run) instead of one slice per run.", flag_values=fv)
  flags.DEFINE_bool("babysit", False, "Recreate preempted, failed or deleted "
                    "slices and restart the run until summary.json says it "
                    "finished.", flag_values=fv)
  flags.DEFINE_integer("max_parallel", 0, "Slices alive at once (a grid's "
                       "others wait their turn); 0: all.", flag_values=fv)
  flags.DEFINE_float("poll_s", 60.0, "Seconds between polls of each slice.",
                     flag_values=fv)
  flags.DEFINE_float("heartbeat_s", 60.0, "Seconds between the workers' "
                     "status writes to WORKDIR/logs; a run silent for 3x "
                     "this (plus --poll_s) is taken as gone.", flag_values=fv)
  flags.DEFINE_integer("max_failures", 3, "Restarts of a run that ends "
                       "unfinished on a live slice, in a row.", flag_values=fv)
  flags.DEFINE_integer("max_creates", 5, "Creations of a slice in a row that "
                       "never become ready (e.g. a FAILED queued resource).",
                       flag_values=fv)
  flags.DEFINE_float("backoff_s", 60.0, "Wait before creating a slice again; "
                     "doubles each time, up to an hour.", flag_values=fv)
  flags.DEFINE_float("stuck_s", 1800.0, "An UNKNOWN (or unlisted) state "
                     "this long: delete and recreate the slice.",
                     flag_values=fv)
  flags.DEFINE_bool("keep_slices", False, "Keep each slice after its runs "
                    "finish (default with --babysit: delete it).",
                    flag_values=fv)


def _limits(fv):
  from poisonjax.launch import babysit  # pylint: disable=g-import-not-at-top

  for flag, low in (("max_failures", 0), ("max_creates", 1)):
    if fv[flag].value < low:
      raise UserError(f"--{flag}={fv[flag].value}: must be >= {low}")
  if fv["max_parallel"].present and fv.max_parallel < 1:
    raise UserError(f"--max_parallel={fv.max_parallel}: must be >= 1 (slices "
                    "alive at once)")
  for flag in ("poll_s", "heartbeat_s", "backoff_s", "stuck_s"):
    if not fv[flag].value > 0:
      raise UserError(f"--{flag}={fv[flag].value}: must be > 0 seconds")
  return babysit.Limits(recreate=fv.babysit, max_failures=fv.max_failures,
                        max_creates=fv.max_creates, backoff_s=fv.backoff_s,
                        stuck_s=fv.stuck_s, keep=fv.keep_slices)


def launch_tpu(args) -> int:
  from poisonjax.launch import babysit, tpu  # pylint: disable=g-import-not-at-top
  from poisonjax.launch import watch  # pylint: disable=g-import-not-at-top

  fv = args.flags
  for flag in ("name", "zone"):
    if not fv[flag].value:
      raise UserError(f"--{flag}: required; e.g. --name=pj --zone=us-east5-a")
  limits = _limits(fv)
  install = tpu.Install(wheel=fv.wheel, git=fv.git, jax=fv.jax,
                        python=fv.python)
  base = tpu.Slice(fv.name, fv.zone, fv.accelerator, fv.runtime, fv.project,
                   fv.spot)
  if not fv.any_zone:
    tpu.check_zone(fv.zone, fv.accelerator)
  stale_s = 3 * fv.heartbeat_s + fv.poll_s
  sitters, lines = [], []
  for w in _workloads(fv, tpu.remote_config, fv.one_slice):
    s = base.named(w.label)
    tpu.check_workdirs(s, w, fv.babysit)
    setup = tpu.setup_steps(s, install, fv.config.partition(":")[0])
    run = tpu.run_step(s, w, fv.heartbeat_s)
    lines += tpu.dry_run(s, setup, run, w.workdirs, fv.babysit, fv.poll_s)
    sitters.append(babysit.Sitter(s, setup, run, w,
                                  watch.Watch(w, s.hosts, stale_s), limits))
  if fv["dry-run"].value:
    print("\n".join(lines))
    return 0
  return babysit.sit(sitters, poll_s=fv.poll_s, max_parallel=fv.max_parallel)


def _gpu_flags(fv) -> None:
  _workload_flags(fv)
  flags.DEFINE_list("hosts", [], "ssh hosts, one process each (first: the "
                    "coordinator); empty: this host, all its GPUs.",
                    flag_values=fv)
  flags.DEFINE_integer("port", 8476, "Coordinator port on the first host.",
                       flag_values=fv)
  flags.DEFINE_string("remote_dir", "", "Directory on each host to run in "
                      "(a checkout holding --config).", flag_values=fv)
  flags.DEFINE_string("python", "python3", "Python on the hosts.",
                      flag_values=fv)


def launch_gpu(args) -> int:
  from poisonjax.launch import gpu, quoting  # pylint: disable=g-import-not-at-top

  fv = args.flags
  quoting.check_value("--python", fv.python)
  (w,) = _workloads(fv, lambda c: c, one_slice=True)
  argvs = gpu.commands(w, list(fv.hosts), fv.port, fv.remote_dir,
                       python=(fv.python, "-m", "poisonjax.cli"))
  if fv["dry-run"].value:
    print("\n".join(quoting.line(a) for a in argvs))
    return 0
  return gpu.run(argvs)


LAUNCH_TPU = Command(
    usage="poisonjax launch tpu --name=NAME --zone=Z [--accelerator=v5p-64] "
          "(--wheel=X.whl | --git=URL@REV) --config=FILE (--workdir=gs://... | "
          "--root=gs://...) [--spot] [--babysit] [--one_slice] "
          "[--max_parallel=N] [--python=3.11] [--dry-run]",
    summary="Runs one training or a study grid on Cloud TPU slices, created "
            "or reused. Each worker is bootstrapped first (a venv with "
            "Python --python made by uv, jax[tpu] and poisonjax; seconds when "
            "already done); the run starts detached, so the launcher can be "
            "stopped and run again. --babysit recreates preempted slices and "
            "resumes until finished.",
    run=launch_tpu, define_flags=_tpu_flags, config=NO_CONFIG)

LAUNCH_GPU = Command(
    usage="poisonjax launch gpu --config=FILE (--workdir=DIR | --root=DIR) "
          "[--hosts=h0,h1,...] [--port=8476] [--remote_dir=DIR] [--dry-run]",
    summary="Runs one training (or a study grid) on this GPU host, or on "
            "several hosts over ssh with one process per host.",
    run=launch_gpu, define_flags=_gpu_flags, config=NO_CONFIG)

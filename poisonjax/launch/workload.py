"""What a launch runs: one `poisonjax train`, or a grid's runs.

A workload is the poisonjax command (an argv after the Python launcher)
and the workdirs whose summary.json says it is finished. A study grid gives
either one workload per run (`train --config=STUDY.py:run=NAME`, one slice
each) or one for all (`study run --only=...`, the runs queued on one slice;
finished runs are skipped and an interrupted one resumes).
"""

from __future__ import annotations

import dataclasses
import re

from poisonjax import files, rundir
from poisonjax import study as study_lib
from poisonjax.errors import UserError
from poisonjax.launch import quoting

PYTHON = ("python3", "-m", "poisonjax.cli")  # Needs no ~/.local/bin on PATH.


@dataclasses.dataclass(frozen=True)
class Workload:
  label: str  # "" for one run; else a short, name-safe run label.
  argv: tuple[str, ...]  # After PYTHON: ("train", "--config=...", ...).
  workdirs: tuple[str, ...]  # Each holds summary.json once finished.
  log_dir: str = ""  # Each host's log and status (default: WORKDIR/logs).

  def __post_init__(self):
    if not self.log_dir:
      object.__setattr__(self, "log_dir", join(self.workdirs[0], "logs"))

  def command(self, python=PYTHON) -> list[str]:
    return list(python) + list(self.argv)


def join(root: str, name: str) -> str:
  return f"{root.rstrip('/')}/{name}"


def overrides(sets, prefix: str = "") -> tuple[str, ...]:
  """--set=a.b=V values -> ("--config.{prefix}a.b=V", ...), checked."""
  out = []
  for kv in sets or ():
    quoting.check_value("--set", kv)
    key, eq, _ = kv.partition("=")
    if not eq or not re.match(r"^[A-Za-z_][A-Za-z0-9_.]*$", key):
      raise UserError(f"--set={kv!r}: not FIELD=VALUE; e.g. "
                      "--set=data.cache_dir=gs://BUCKET/cache")
    out.append(f"--config.{prefix}{kv}")
  return tuple(out)


def single(config: str, workdir: str, sets=()) -> Workload:
  """One run: `poisonjax train --config=CONFIG --workdir=WORKDIR`."""
  quoting.check_value("--config", config)
  quoting.check_value("--workdir", workdir)
  return Workload("", ("train", f"--config={config}", f"--workdir={workdir}")
                  + overrides(sets), (workdir,))


def run_label(run) -> str:
  """`size=600m_n=250_seed=0_data=1.0[_var=V]` -> `600m-n250-s0-d1p0[-V]`
  (a part of a slice's name)."""
  data = f"{run.data_multiplier!r}".replace(".", "p")
  text = f"{run.size}-n{run.poisons}-s{run.seed}-d{data}".lower()
  if run.variant:
    text += f"-{run.variant.lower()}"
  return re.sub(r"[^a-z0-9-]+", "-", text)


def grid(config_file: str, study, root: str, only: str = "",
         one_slice: bool = False, sets=()) -> list[Workload]:
  """The study's runs (names containing `only`) as workloads under root."""
  quoting.check_value("--config", config_file)
  quoting.check_value("--root", root)
  quoting.check_value("--only", only)
  runs = study_lib.select(study_lib.expand(study), only)
  if one_slice:
    argv = ("study", "run", f"--config={config_file}", f"--root={root}")
    argv += ((f"--only={only}",) if only else ()) + overrides(sets, "base.")
    return [Workload("", argv, tuple(join(root, r.name) for r in runs),
                     log_dir=join(root, "logs"))]
  return [Workload(run_label(r), ("train", f"--config={config_file}:run={r.name}",
                                  f"--workdir={join(root, r.name)}")
                   + overrides(sets),
                   (join(root, r.name),)) for r in runs]


def finished(workdirs, read=None) -> bool:
  """Whether every workdir has summary.json (train writes it at the end)."""
  if read is None:
    read = lambda path: files.as_path(path).exists()
  return all(read(join(w, rundir.SUMMARY)) for w in workdirs)

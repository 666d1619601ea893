"""Launchers: Cloud TPU slices and GPU hosts (`poisonjax launch tpu|gpu`).

  quoting   argv lists -> printed lines and remote shell strings, safely
  workload  the `poisonjax train` / `study run` command(s) a launch runs
  tpu       gcloud command lines for a slice (create, install, run, delete)
  babysit   the poll / recreate / rerun loop that outlives preemptions
  gpu       one GPU host, or one process per host over ssh
The CLI layer is poisonjax/commands/launch.py; docs/tpu.md and docs/gpu.md
walk through a whole study. Nothing here runs a shell locally: every
command is an argv list given to subprocess.
"""

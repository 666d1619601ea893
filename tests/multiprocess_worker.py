"""One process of a run over several processes (tests/test_multiprocess.py).

    python tests/multiprocess_worker.py PROCESS_ID NUM_PROCESSES HOST:PORT JOBS.json

Runs the jobs of JOBS.json (a list) in order, as process PROCESS_ID:
  {"cli": [ARGS]}  `poisonjax ARGS` with this process's --coordinator_address,
                   --num_processes and --process_id (the CLI joins the others);
  {"eval": {"workdir": DIR, "step": N, "overrides": {"eval.f": V}, "out": F}}
                   the `poisonjax eval` command's evaluation of that
                   checkpoint; process 0 writes its metrics and generations
                   to F (JSON, full precision);
  {"rows": {"meshes": [[data, fsdp, tensor], ...], "rows": B, "out": F}}
                   for each mesh, the batch block each process feeds and
                   whether the global batch its rows make (as training
                   makes it) is the 1-process batch; process 0 writes F.
Exits with the first failing job's status.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_cli(args: list[str], process_flags: list[str]) -> int:
  from poisonjax import cli
  return cli.main(["poisonjax", *args, *process_flags])


def run_eval(job: dict, process_id: int, num: int, address: str) -> int:
  from poisonjax import distributed
  distributed.initialize(address, num, process_id)  # No-op after a CLI job.
  from poisonjax.evaluation import run_reader
  from poisonjax.commands import evaluate as eval_command
  config = run_reader.read_run_config(job["workdir"])
  for key, value in job.get("overrides", {}).items():
    section, field = key.split(".")
    config[section][field] = value
  with distributed.exit_on_runtime_error():
    step, metrics, evaluator = eval_command._evaluate_checkpoint(  # pylint: disable=protected-access
        config, job["workdir"], job.get("step"))
  if distributed.is_primary():
    clean_gen, trig_gen = evaluator._last[:2]  # pylint: disable=protected-access
    with open(job["out"], "w") as f:
      json.dump({"step": step, "metrics": {k: float(v) for k, v in metrics.items()},
                 "clean_gen": clean_gen.tolist(), "trig_gen": trig_gen.tolist()}, f)
  return 0


def _every_process(value: int) -> list[int]:
  """[value on process 0, value on process 1, ...]."""
  import numpy as np
  from jax.experimental import multihost_utils
  return [int(v) for v in multihost_utils.process_allgather(np.int32(value))]


def run_rows(job: dict, process_id: int, num: int, address: str) -> int:
  from poisonjax import distributed
  distributed.initialize(address, num, process_id)
  import jax
  import ml_collections
  import numpy as np
  from poisonjax import sharding
  from poisonjax.training import train_step
  from poisonjax.errors import UserError
  B, S = job["rows"], 3
  whole = np.arange(B * S, dtype=np.int32).reshape(B, S)  # Row r: 3r..3r+2.
  out = []
  for data, fsdp, tensor in job["meshes"]:
    cfg = ml_collections.ConfigDict({"data": data, "fsdp": fsdp, "tensor": tensor})
    try:
      mesh = sharding.make_mesh(cfg)
      block = sharding.process_block(mesh, B)
    except UserError as e:
      out.append({"mesh": [data, fsdp, tensor], "error": str(e)})
      continue
    r = B // jax.process_count()
    arr = train_step.global_batch(whole[block * r:(block + 1) * r],
                                  sharding.batch_sharding(mesh), B)
    shards_ok = all(np.array_equal(np.asarray(sh.data), whole[sh.index])
                    for sh in arr.addressable_shards)
    out.append({"mesh": [data, fsdp, tensor],
                "blocks": _every_process(block),
                "shards_ok": _every_process(int(shards_ok)),
                "whole_ok": bool(np.array_equal(distributed.gather(arr), whole))})
  if distributed.is_primary():
    with open(job["out"], "w") as f:
      json.dump(out, f)
  return 0


def main(argv: list[str]) -> int:
  process_id, num, address, jobs_file = int(argv[1]), int(argv[2]), argv[3], argv[4]
  process_flags = [f"--coordinator_address={address}", f"--num_processes={num}",
                   f"--process_id={process_id}"]
  with open(jobs_file) as f:
    jobs = json.load(f)
  for job in jobs:
    if "cli" in job:
      status = run_cli(job["cli"], process_flags)
    elif "rows" in job:
      status = run_rows(job["rows"], process_id, num, address)
    else:
      status = run_eval(job["eval"], process_id, num, address)
    if status:
      return status
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))

"""run_history: the resume config check and history.jsonl, at unit level.

(The end-to-end refusals, with checkpoints left in place, are in
test_train.py.)
"""

import json

import pytest

from poisonjax import config as config_lib
from poisonjax import files
from poisonjax.training import run_history
from poisonjax.errors import UserError


def write_run(workdir, config, vocab_size=512):
  workdir.mkdir(parents=True, exist_ok=True)
  files.write_json(workdir / "config.json",
                   run_history.resolved_config(config, vocab_size))


def changed(**fields):
  c = config_lib.base_config()
  for key, value in fields.items():
    node = c
    *path, last = key.split(".")
    for part in path:
      node = node[part]
    node[last] = value
  return c


def test_new_run_has_nothing_to_check(tmp_path):
  assert run_history.check_resume(tmp_path, changed(), allow_change=False) is None


def test_same_config_resumes_though_old_file_is_resolved(tmp_path):
  write_run(tmp_path, changed())
  old = json.loads((tmp_path / "config.json").read_text())
  assert old["model"]["d_model"] > 0 and old["model"]["vocab_size"] == 512
  assert run_history.check_resume(tmp_path, changed(), allow_change=False) == {}


@pytest.mark.parametrize("fields,names", [
    ({"poison.count": 7}, ["config.poison.count 250 -> 7"]),
    ({"model.size": "cpu-s"}, ["config.model.d_model 96 -> 128",
                               "config.model.num_layers 2 -> 4"]),
    ({"train.learning_rate": 1e-3, "seed": 3},
     ["config.train.learning_rate 0.003 -> 0.001", "config.seed 0 -> 3"]),
])
def test_defining_change_is_refused_in_one_line(tmp_path, fields, names):
  write_run(tmp_path, changed())
  before = (tmp_path / "config.json").read_bytes()
  with pytest.raises(UserError) as e:
    run_history.check_resume(tmp_path, changed(**fields), allow_change=False)
  msg = str(e.value)
  assert "\n" not in msg and "--workdir" in msg and "--allow_config_change" in msg
  for name in names:
    assert name in msg
  assert (tmp_path / "config.json").read_bytes() == before
  assert not (tmp_path / "history.jsonl").exists()


def test_cadence_changes_are_allowed_and_recorded(tmp_path):
  write_run(tmp_path, changed())
  new = changed(**{"train.log_every": 5, "train.keep_checkpoints": 4,
                   "eval.batch_size": 16, "mesh.data": 2, "train.max_steps": 9})
  changes = run_history.check_resume(tmp_path, new, allow_change=False)
  assert set(changes) == {"train.log_every", "train.keep_checkpoints",
                          "eval.batch_size", "mesh.data", "train.max_steps"}
  run_history.record_start(tmp_path, changes)
  row = run_history.history(tmp_path)[-1]
  assert row["event"] == "resume" and row["changes"]["train.log_every"] == [20, 5]
  assert row["defining_changes_allowed"] == []


def test_allowed_defining_change_is_recorded(tmp_path):
  write_run(tmp_path, changed())
  changes = run_history.check_resume(tmp_path, changed(**{"poison.count": 7}),
                                     allow_change=True)
  run_history.record_start(tmp_path, changes)
  row = run_history.history(tmp_path)[-1]
  assert row["changes"] == {"poison.count": [250, 7]}
  assert row["defining_changes_allowed"] == ["poison.count"]


def test_field_added_since_counts_as_unchanged_at_its_default(tmp_path):
  write_run(tmp_path, changed())
  old = json.loads((tmp_path / "config.json").read_text())
  del old["train"]["lock_timeout_s"]
  files.write_json(tmp_path / "config.json", old)
  assert run_history.check_resume(tmp_path, changed(), allow_change=False) == {}
  changes = run_history.check_resume(
      tmp_path, changed(**{"train.lock_timeout_s": 5.0}), allow_change=False)
  assert changes == {"train.lock_timeout_s": (600.0, 5.0)}


def test_defining_fields():
  assert run_history.is_defining("poison.count")
  assert run_history.is_defining("data.seq_len")
  assert run_history.is_defining("data.text_files.patterns")
  assert run_history.is_defining("train.warmup_fraction")
  assert run_history.is_defining("eval.threshold")
  assert not run_history.is_defining("data.cache_dir")
  assert not run_history.is_defining("mesh.fsdp")
  assert not run_history.is_defining("train.ckpt_every")

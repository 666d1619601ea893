"""`study reproduce --keep_collected`: going on from committed results when
the run directories were lost (a new machine or checkout)."""

import pytest

from poisonjax import files
from poisonjax import study as study_lib
from poisonjax.errors import UserError
from poisonjax.study import reproduce
from train_common import tiny_config  # pylint: disable=unused-import
from train_common import train_cache  # pylint: disable=unused-import


def _study(cache):
  base = tiny_config(cache, **{"eval.prompt_tokens": 8, "eval.gen_tokens": 8,
                               "eval.num_excerpts": 12, "eval.num_evals": 1,
                               "eval.bootstrap_samples": 50})
  s = study_lib.study_config("tiny_keep", base)
  s.grid = study_lib.grid((base.model.size,), (5,), (0, 1), (1.0,))
  return s


def _reproduce(s, root, out, **kw):
  logs = []
  status = reproduce.reproduce(s, "tiny.py", root=root, out=out, command="test",
                               n_boot=20, log=logs.append, **kw)
  return status, "\n".join(logs)


def _without_run(csv_text: str, run: str) -> str:
  return "".join(l for l in csv_text.splitlines(True)
                 if not l.startswith(run + ","))


def test_a_lost_root_goes_on_from_the_committed_results(train_cache, tmp_path):
  """The kept runs are not trained again; the one missing run is, and the
  results come out byte for byte as one uninterrupted study's."""
  s = _study(train_cache)
  first, second = study_lib.expand(s)
  out = tmp_path / "out"
  assert _reproduce(s, tmp_path / "root", out)[0] == 0
  whole = (out / "results.csv").read_text()
  assert first.name in whole and second.name in whole
  # The second run's rows never got committed; the root is lost.
  (out / "results.csv").write_text(_without_run(whole, second.name))

  status, log = _reproduce(s, tmp_path / "new_root", out, keep_collected=True)
  assert status == 0, log
  assert "1 runs kept from" in log
  assert not (tmp_path / "new_root" / first.name).exists()  # Not retrained.
  assert files.read_json(tmp_path / "new_root" / second.name / "summary.json")
  assert (out / "results.csv").read_text() == whole
  lines = files.read_json(out / "provenance.json")["lines"]
  kept = [l for l in lines if l.startswith("- Rows of 1 runs kept")]
  assert kept and "  - Command (from the repository root): `test`" in lines
  assert "Runs finished and shown here: 2 of 2" in "\n".join(lines)

  # Again: nothing to train, and the earlier provenance is not nested twice.
  status, log = _reproduce(s, tmp_path / "new_root", out, keep_collected=True)
  assert status == 0 and "starting" not in log
  again = files.read_json(out / "provenance.json")["lines"]
  assert not any(l.startswith("    ") for l in again)


def test_keep_collected_refuses_another_studys_results(train_cache, tmp_path):
  s = _study(train_cache)
  out = tmp_path / "out"
  with pytest.raises(UserError, match="--keep_collected: .* not found"):
    reproduce.kept_results(s, tmp_path / "root", out)
  out.mkdir()
  (out / "results.csv").write_text(
      "run,size,finished\nsize=cpu-m_n=9_seed=0_data=1.0,cpu-m,1\n")
  with pytest.raises(UserError, match="--keep_collected: .*does not have"):
    reproduce.kept_results(s, tmp_path / "root", out)
  assert (out / "results.csv").read_text().startswith("run,size")  # Kept.

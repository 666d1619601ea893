"""experiments/fit_check.py: the train step compiled for a TPU slice on a CPU.

Needs libtpu (the `tpu` extra: the TPU compiler); without it the compile
tests are skipped. A cpu-xxs stand-in takes the paper sizes' code path
(poisonjax.train_step's builders, the logical-axis shardings, the layer scan).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import pathlib
import sys

import pytest

from poisonjax import config as config_lib

_PATH = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "fit_check.py"
_SPEC = importlib.util.spec_from_file_location("fit_check", _PATH)
fit_check = importlib.util.module_from_spec(_SPEC)
sys.modules.setdefault("fit_check", fit_check)  # For its dataclasses.
_SPEC.loader.exec_module(fit_check)

needs_libtpu = pytest.mark.skipif(
    bool(fit_check.libtpu_missing()),
    reason="libtpu not installed (pip install -e \".[tpu]\"): the TPU compiler "
           "is needed to compile for a TPU slice; skipped, not failed")


def _stand_in(remat="dots"):
  c = config_lib.base_config()
  c.model.size = "cpu-xxs"
  c.model.dtype = "bfloat16"
  c.model.remat = remat
  c.data.seq_len, c.train.batch_size = 64, 16
  c.mesh.data, c.mesh.fsdp = 1, -1
  return config_lib.validate(c)


def test_parse_topology_names_the_choices():
  assert fit_check.parse_topology("v5p:4x4x4") == ("v5p", (4, 4, 4))
  assert fit_check.parse_topology("v5e:16x16") == ("v5e", (16, 16))
  with pytest.raises(ValueError, match="v5p:4x4x4"):
    fit_check.parse_topology("v5x:2x2")


def test_set_flags_parse_to_typed_overrides():
  got = fit_check.parse_overrides(["model.remat=dots", "train.microbatches=2"])
  assert got == {"model.remat": "dots", "train.microbatches": 2}
  c = fit_check.with_overrides(_stand_in(remat="full"),
                               {"model.remat": "dots", "train.batch_size": 32})
  assert c.model.remat == "dots" and c.train.batch_size == 32
  with pytest.raises(ValueError, match="SECTION.FIELD=VALUE"):
    fit_check.parse_overrides(["remat=dots"])


def test_fallbacks_end_in_fsdp_and_full_remat():
  c = _stand_in()
  c.mesh.data, c.mesh.fsdp = -1, 1
  ladder = fit_check.fallbacks(c)
  assert ladder[0] == {} and ladder[1] == {"mesh.data": 1, "mesh.fsdp": -1}
  assert ladder[-1] == {"mesh.data": 1, "mesh.fsdp": -1, "model.remat": "full"}
  assert fit_check.fallbacks(_stand_in(remat="full")) == [{}]


def test_microbatches_from_the_compilers_out_of_memory_message():
  failed = fit_check.Fit(
      topology="v5p:2x2x1", chips=4, mesh={"data": 1, "fsdp": 4, "tensor": 1},
      remat="dots", microbatches=1, hbm=95 * fit_check.GiB, fits=False,
      error="RESOURCE_EXHAUSTED: ... HLO temporaries (105.87G) exceeds "
            "available HBM (95.74G).",
      param_bytes=1 * fit_check.GiB, opt_bytes=2 * fit_check.GiB, compile_s=4.0)
  k = fit_check.microbatches_for(failed, batch_size=256)
  room = 0.8 * 95.74 - 3
  assert 105.87 / k <= room < 105.87 / (k // 2)  # The fewest that fit.
  assert fit_check.microbatches_for(failed, batch_size=4) == 0  # 1 row/shard.
  unknown = dataclasses.replace(failed, error="needs 120 GiB per chip")
  assert fit_check.microbatches_for(unknown, batch_size=256) == 0


@needs_libtpu
def test_compiles_the_train_step_for_v5p_2x2x1():
  fit = fit_check.compile_step(_stand_in(), "v5p:2x2x1", vocab_size=1024,
                               num_steps=100)
  assert fit.chips == 4 and fit.mesh == {"data": 1, "fsdp": 4, "tensor": 1}
  for field in ("argument_bytes", "output_bytes", "alias_bytes", "temp_bytes",
                "param_bytes", "opt_bytes", "raw_flops", "flops"):
    assert getattr(fit, field) > 0, field
  # Donated state: the outputs alias the inputs; the moments are 2x params.
  assert fit.alias_bytes <= fit.argument_bytes
  assert fit.opt_bytes >= 2 * fit.param_bytes
  assert fit.flops > fit.raw_flops  # Every layer counted, not the scan once.
  assert fit.fits and fit.error == ""
  assert fit.total_bytes < fit.hbm
  tight = fit_check.judge(dataclasses.replace(fit, hbm=fit.total_bytes / 2))
  assert not tight.fits and "GiB per chip" in tight.error


@needs_libtpu
def test_state_larger_than_hbm_is_refused_without_compiling(monkeypatch):
  chips = dict(fit_check.TPU_CHIPS)
  chips["v5p"] = ("megacore", 1024.0, "TPU v5p")
  monkeypatch.setattr(fit_check, "TPU_CHIPS", chips)
  fit = fit_check.compile_step(_stand_in(), "v5p:2x2x1", 1024, 100)
  assert not fit.fits and "optimizer state alone" in fit.error
  assert fit.compile_s != fit.compile_s  # NaN: never compiled.

"""experiments/fit_check.py: the train step compiled for a TPU slice on a CPU.

Needs libtpu (the `tpu` extra: the TPU compiler); without it the compile
tests are skipped. A cpu-xxs stand-in takes the paper sizes' code path
(poisonjax.training.train_step's builders, the logical-axis shardings, the layer scan).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import pathlib
import sys

import pytest

from poisonjax import config as config_lib
from poisonjax import config_checks

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
  return config_checks.validate(c)


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
@pytest.mark.parametrize("attention, kernels", [("auto", True), ("xla", False)])
def test_auto_attention_is_the_splash_kernel_when_compiled_for_tpu(
    attention, kernels):
  """On this CPU host the trace is for the slice's devices: `auto` means
  splash there, compiled as the TPU kernel (not Pallas' interpret mode)."""
  config = _stand_in()
  config.model.attention = attention
  config.data.seq_len = 128  # Splash's blocks: multiples of 128.
  fit = fit_check.compile_step(config, "v5p:2x2x1", vocab_size=1024,
                               num_steps=100)
  assert fit.fits
  assert (fit.kernels > 0) == kernels, fit.kernels


@needs_libtpu
def test_state_larger_than_hbm_is_refused_without_compiling(monkeypatch):
  chips = dict(fit_check.TPU_CHIPS)
  chips["v5p"] = ("megacore", 1024.0, "TPU v5p")
  monkeypatch.setattr(fit_check, "TPU_CHIPS", chips)
  fit = fit_check.compile_step(_stand_in(), "v5p:2x2x1", 1024, 100)
  assert not fit.fits and "optimizer state alone" in fit.error
  assert fit.compile_s != fit.compile_s  # NaN: never compiled.


# ---------------------------------------------------------------------------
# The cost-model step time (experiments/step_estimate.py) and the search.
# ---------------------------------------------------------------------------

sys.path.insert(0, str(_PATH.parent))
import step_estimate  # noqa: E402  (experiments/, beside fit_check)


def test_extrapolation_is_linear_in_depth():
  # 2 layers 0.338 s, 4 layers 0.585 s -> 0.1235 s a layer, 26 layers 3.302 s.
  assert step_estimate.extrapolate(0.338, 0.585, 2, 4, 26) == pytest.approx(
      0.338 + 24 * 0.1235)
  assert step_estimate.extrapolate(1.0, 2.0, 2, 4, 2) == 1.0


def _estimate(k=1, bytes_guess=50.0, error=""):
  return step_estimate.Estimate(
      step_estimate.Setting("dots", 1, k), chips=4, num_layers=26,
      step_s=1.0, bytes_guess=bytes_guess, hbm=100.0, error=error)


def test_microbatches_jump_to_what_the_guess_needs():
  assert _estimate(bytes_guess=80.0).fits_guess  # <= 90% of HBM.
  assert not _estimate(bytes_guess=91.0).fits_guess
  nxt = step_estimate.next_microbatches
  assert nxt(_estimate(bytes_guess=100.0), 256, 4) == 2
  assert nxt(_estimate(bytes_guess=300.0), 256, 4) == 4  # 300/90 -> x4.
  assert nxt(_estimate(k=2, error="RESOURCE_EXHAUSTED"), 256, 4) == 4
  assert nxt(_estimate(k=8, error="RESOURCE_EXHAUSTED"), 256, 4) == 0  # Cap.
  assert nxt(_estimate(error="RESOURCE_EXHAUSTED"), 8, 4) == 2
  assert nxt(_estimate(k=2, error="RESOURCE_EXHAUSTED"), 8, 4) == 0  # 1 row.


def test_the_compiled_programs_bytes_overrule_the_guess():
  """With microbatches the unrolled line's bytes are not the trained
  (scanned) program's: once that is compiled, its bytes decide."""
  unrolled_big = _estimate(k=2, bytes_guess=140.0)
  unrolled_big.verified_bytes = 60.0
  assert unrolled_big.fits_guess
  small_guess = _estimate(k=2, bytes_guess=40.0)
  small_guess.verified_bytes = 200.0  # 200/90 -> x4 more.
  assert not small_guess.fits_guess
  assert step_estimate.next_microbatches(small_guess, 256, 4) == 8
  oom = _estimate(k=2, bytes_guess=40.0)
  oom.verified_bytes = float("inf")  # The scanned compile ran out of memory.
  assert not oom.fits_guess
  assert step_estimate.next_microbatches(oom, 256, 4) == 4


def test_setting_overrides_and_label():
  s = step_estimate.Setting("none", 4, 2)
  assert s.overrides() == {"model.remat": "none", "mesh.data": 4,
                           "mesh.fsdp": -1, "train.microbatches": 2}
  assert s.label(64) == "none, data4xfsdp16, 2 microbatches"
  assert step_estimate.Setting("full", 1).label(4) == "full, fsdp4"


def test_cached_compiles_are_not_compiled_again(tmp_path, monkeypatch):
  monkeypatch.setattr(fit_check, "compile_step", lambda *a, **k: 1 / 0)
  c = _stand_in()
  key = step_estimate.cache_key(c, "v5p:2x2x1")
  path = tmp_path / "c.jsonl"
  path.write_text('{"key": %s, "seconds": 0.5, "error": ""}\n'
                  % __import__("json").dumps(key))
  cache = step_estimate.load_cache(str(path))
  row = step_estimate.compiled(c, "v5p:2x2x1", 1024, 10, False, cache,
                               str(path))
  assert row["seconds"] == 0.5
  other = fit_check.with_overrides(c, {"model.remat": "full"})
  assert step_estimate.cache_key(other, "v5p:2x2x1") != key


def test_paper_study_gives_each_size_its_preset():
  from poisonjax.errors import UserError
  from poisonjax.study import grids

  study = fit_check.load_study().get_config()
  assert set(study.size_overrides) == {"600m", "2b", "7b", "13b"}
  for size, preset in study.size_overrides.items():
    c = grids.run_config(study, grids.Run(size, 250, 0, 1.0))
    for section, fields in preset.items():
      for field, value in fields.items():
        assert c[section][field] == value, (size, section, field)
  study.size_overrides = {"2b": {"model": {"remat": "none"}}}
  assert grids.run_config(study, grids.Run("2b", 100, 1, 1.0)).model.remat == "none"
  assert grids.run_config(study, grids.Run("7b", 100, 1, 1.0)).model.remat == study.base.model.remat
  study.size_overrides = {"2b": {"model": {"size": "7b"}}}
  with pytest.raises(UserError, match="size_overrides.2b.model.size"):
    grids.run_config(study, grids.Run("2b", 100, 1, 1.0))


def test_maxtext_shapes_are_poisonjaxs():
  spec = importlib.util.spec_from_file_location(
      "maxtext_compare", _PATH.parent / "maxtext_compare.py")
  mc = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mc)
  from poisonjax.model import transformer as model_lib
  from poisonjax.model import sizes

  for name, shape in mc.SHAPES.items():
    s = sizes.get_size(name)
    assert (shape["layers"], shape["d_model"], shape["heads"],
            shape["ffn"]) == (s.num_layers, s.d_model, s.num_heads, s.ffn_dim)
    c = config_lib.base_config()
    c.model.size = name
    mcfg = model_lib.ModelConfig.from_config(c, 32000)
    assert mc.model_flops_per_step(name) == pytest.approx(
        model_lib.flops_per_token(mcfg, 2048) * 256 * 2048)
  assert mc.py311('type K = tuple[int, int]\nx = 1\n') == (
      'K = tuple[int, int]\nx = 1\n')
  args = mc.maxtext_args("600m", 2, [])
  assert "per_device_batch_size=64" in args and "scan_layers=false" in args
  assert "compile_topology=v5p-8" in args


@needs_libtpu
def test_unrolled_microbatches_count_every_microbatch():
  """Scanned, the cost model counts one microbatch; unrolled, all of them
  (the layers unrolled in both: a scanned layer stack counts one layer)."""
  one = fit_check.compile_step(_stand_in(), "v5p:2x2x1", 1024, 100, unroll=True)
  c = fit_check.with_overrides(_stand_in(), {"train.microbatches": 2})
  scanned = fit_check.compile_step(c, "v5p:2x2x1", 1024, 100)
  unrolled = fit_check.compile_step(c, "v5p:2x2x1", 1024, 100, unroll=True)
  assert one.raw_seconds > 0 and unrolled.raw_seconds > 0
  assert unrolled.raw_flops == pytest.approx(one.raw_flops, rel=0.1)
  assert scanned.raw_flops < 0.7 * unrolled.raw_flops


@needs_libtpu
def test_the_cost_model_prices_a_splash_kernel_as_almost_no_time():
  """Why step_estimate adds the splash kernels' FLOPs at peak: XLA's TPU
  cost model sees the Mosaic custom call as (almost) free. If a libtpu
  starts pricing it, this fails and the added term would count it twice."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  from poisonjax.model import attention

  devices = fit_check.topology_devices("v5p:2x2x1")[:1]
  mesh = Mesh(np.array(devices).reshape(1, 1, 1), ("data", "fsdp", "tensor"))
  b, k, t, d = 2, 4, 1024, 128
  spec = lambda *shape: jax.ShapeDtypeStruct(
      shape, jnp.bfloat16, sharding=NamedSharding(mesh, P()))
  q, kv = spec(b, k, 1, t, d), spec(b, k, t, d)
  visible = jax.ShapeDtypeStruct((b, t, t), jnp.bool_,
                                 sharding=NamedSharding(mesh, P()))

  def seconds(f, *args):
    with jax.set_mesh(mesh):
      compiled = jax.jit(f).lower(*args).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return cost["optimal_seconds"], compiled.as_text()

  splash_s, text = seconds(attention.splash_attention, q, kv, kv)
  xla_s, _ = seconds(attention.causal_attention, q, kv, kv, visible)
  assert 'custom_call_target="tpu_custom_call"' in text
  assert xla_s > 1e-5
  assert splash_s < 0.01 * xla_s, (splash_s, xla_s)


def test_splash_term_counts_the_kernels_matmuls_over_the_causal_blocks():
  """2 forward + 7 backward matmuls (+2 recomputed under remat) of 2 T^2 D
  each, over (n + 1) / 2n of the blocks; nothing for the XLA path."""
  one = step_estimate.splash_seconds(1, 1, 1, 128, 2048, 512, False, 1, 1.0)
  assert one == pytest.approx(9 * 2 * 2048 ** 2 * 128 * 5 / 8)
  again = step_estimate.splash_seconds(1, 1, 1, 128, 2048, 512, True, 1, 1.0)
  assert again / one == pytest.approx(11 / 9)
  from poisonjax.model import transformer as model_lib
  c = _stand_in()
  c.data.seq_len = 129  # 128 positions: one block, the whole square.
  mcfg = model_lib.ModelConfig.from_config(c, 1024)
  c.model.attention = "xla"
  assert step_estimate.kernel_seconds(c, mcfg, 4, 1.0) == 0.0
  c.model.attention = "auto"  # Splash on the TPU.
  want = (c.train.batch_size * mcfg.num_layers * mcfg.num_heads * 9 * 2
          * 128 ** 2 * mcfg.head_dim / 4)
  assert step_estimate.kernel_seconds(c, mcfg, 4, 1.0) == pytest.approx(
      want * 11 / 9)  # The stand-in's remat=dots recomputes the kernel.

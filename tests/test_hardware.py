"""hardware.py (chip lookup, peak FLOP/s) and units.py (human formatting)."""

import math

import jax
import pytest

from poisonjax import config as config_lib
from poisonjax import hardware
from poisonjax import units

# device_kind strings as jax reports them -> the table's chip.
KINDS = {
    "TPU v4": "TPU v4",
    "TPU v5 lite": "TPU v5e",
    "TPU v5e": "TPU v5e",
    "TPU v5": "TPU v5p",
    "TPU v5p": "TPU v5p",
    "TPU v6 lite": "TPU v6e",
    "TPU v6e": "TPU v6e",
    "NVIDIA H100 80GB HBM3": "H100",
    "NVIDIA H200": "H200",
    "NVIDIA A100-SXM4-80GB": "A100",
    "NVIDIA A100-SXM4-40GB": "A100",
}


@pytest.mark.parametrize("kind,chip", sorted(KINDS.items()))
def test_device_kinds_map_to_their_chip(kind, chip):
  assert hardware.chip_name(kind) == chip
  assert hardware.peak_flops_for_kind(kind, "tpu") == hardware.CHIP_PEAK_FLOPS[chip]


def test_every_chip_in_the_table_is_reachable():
  assert set(KINDS.values()) == set(hardware.CHIP_PEAK_FLOPS)


@pytest.mark.parametrize("kind", ["cpu", "TPU v4 lite", "TPU v7x", "NVIDIA GeForce RTX 4090",
                                  "NVIDIA A1000", "NVIDIA H1000"])
def test_other_kinds_are_not_guessed(kind):
  assert hardware.chip_name(kind) is None


def test_cpu_is_nominal_and_an_unknown_accelerator_is_nan():
  assert hardware.peak_flops_for_kind("cpu", "cpu") == hardware.CPU_NOMINAL_PEAK_FLOPS
  assert math.isnan(hardware.peak_flops_for_kind("NVIDIA GeForce RTX 4090", "gpu"))


def test_peak_flops_per_device_prefers_the_config():
  c = config_lib.base_config()
  c.train.peak_flops = 123e12
  assert hardware.peak_flops_per_device(c) == 123e12
  c.train.peak_flops = 0.0
  assert jax.devices()[0].platform == "cpu"
  per_device = hardware.peak_flops_per_device(c)
  # A CPU device: this machine's measured matmul rate shared by its devices.
  assert per_device == hardware.measured_cpu_flops() / jax.local_device_count()
  assert 1e8 < per_device * jax.local_device_count() < 1e14


@pytest.mark.parametrize("seconds,text", [
    (0, "0m00s"), (59.4, "0m59s"), (59.6, "1m00s"), (61, "1m01s"),
    (3599, "59m59s"), (3600, "1h00m"), (7384, "2h03m"), (100 * 3600, "100h00m"),
    (-5, "0m00s"), (math.nan, "?"), (math.inf, "?")])
def test_format_duration(seconds, text):
  assert units.format_duration(seconds) == text


@pytest.mark.parametrize("x,text", [
    (0, "0"), (12.5, "12.5"), (999, "999"), (1234, "1.23k"), (602e6, "602M"),
    (4.1e9, "4.1B"), (1.2e13, "12T"), (1.5e22, "1.50e+22"), (-2500, "-2.5k")])
def test_human(x, text):
  assert units.human(x) == text

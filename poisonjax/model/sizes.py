"""Model size presets: the paper's four sizes and a CPU ladder.

The paper sizes are shaped so that total parameters (embeddings and output
head included, untied, at the 32k paper vocabulary) are within 3% of the
name; the CPU ladder spans 22x in parameters at the 1k CPU vocabulary.
`tests/test_model.py` checks both claims by `jax.eval_shape`.
"""

from __future__ import annotations

import dataclasses

from poisonjax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Size:
  num_layers: int
  d_model: int
  num_heads: int
  ffn_dim: int
  num_kv_heads: int = 0  # 0: same as num_heads (plain multi-head attention).


SIZES: dict[str, Size] = {
    # CPU ladder (vocabulary ~1k).
    "cpu-xxs": Size(num_layers=2, d_model=64, num_heads=4, ffn_dim=192),
    "cpu-xs": Size(num_layers=2, d_model=96, num_heads=4, ffn_dim=256),
    "cpu-s": Size(num_layers=4, d_model=128, num_heads=4, ffn_dim=384),
    "cpu-m": Size(num_layers=4, d_model=192, num_heads=6, ffn_dim=512),
    "cpu-l": Size(num_layers=6, d_model=256, num_heads=8, ffn_dim=704),
    # Paper sizes (vocabulary 32k, head dim 128).
    "600m": Size(num_layers=26, d_model=1280, num_heads=10, ffn_dim=3584),
    "2b": Size(num_layers=28, d_model=2304, num_heads=18, ffn_dim=6400),
    "7b": Size(num_layers=32, d_model=4096, num_heads=32, ffn_dim=11520),
    "13b": Size(num_layers=40, d_model=5120, num_heads=40, ffn_dim=13824),
}

PAPER_SIZES = ("600m", "2b", "7b", "13b")
CPU_SIZES = ("cpu-xxs", "cpu-xs", "cpu-s", "cpu-m", "cpu-l")


def get_size(name: str) -> Size:
  if name not in SIZES:
    raise UserError(f"config.model.size={name!r}: unknown size; use one of "
                    f"{', '.join(SIZES)}")
  return SIZES[name]


def resolve_model_config(model_cfg, vocab_size: int) -> None:
  """Fills the model fields left at 0 from the size table and the vocabulary.

  Mutates `model_cfg` (an unlocked ConfigDict section) in place and checks
  the shapes fit together.
  """
  size = get_size(model_cfg.size)
  for field in ("num_layers", "d_model", "num_heads", "ffn_dim"):
    if not model_cfg[field]:
      model_cfg[field] = getattr(size, field)
  if not model_cfg.num_kv_heads:
    model_cfg.num_kv_heads = size.num_kv_heads or model_cfg.num_heads
  if not model_cfg.vocab_size:
    model_cfg.vocab_size = vocab_size
  if model_cfg.d_model % model_cfg.num_heads:
    raise UserError(
        f"config.model.num_heads={model_cfg.num_heads}: does not divide "
        f"d_model={model_cfg.d_model}; pick heads that divide d_model")
  if model_cfg.num_heads % model_cfg.num_kv_heads:
    raise UserError(
        f"config.model.num_kv_heads={model_cfg.num_kv_heads}: does not divide "
        f"num_heads={model_cfg.num_heads}; pick a divisor of num_heads")
  if (model_cfg.d_model // model_cfg.num_heads) % 2:
    raise UserError(
        f"config.model.d_model={model_cfg.d_model}: head dim "
        f"{model_cfg.d_model // model_cfg.num_heads} is odd, RoPE needs it even; "
        "change d_model or num_heads")

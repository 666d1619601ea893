"""The benchmark shapes, shared by experiments/bench_*.py.

Two kinds of names:
  * the PyTorch peer's shapes (../shared/peers/torch_peer.py): tiny 4 layers
    x d 128 x 4 heads, small 6 x 384 x 6, medium 8 x 512 x 8; vocabulary
    1024, batch 16 x 256 tokens, fp32. The peer's MLP is 4d GELU (8 d^2
    weights per layer); ours is SwiGLU, so ffn = round(8/3 d) gives the same
    weights (3 d ffn). The peer ties its embeddings, so these shapes do too:
    total parameters then match the peer's count (0.95M, 11.1M, 25.8M).
  * the CPU presets (poisonjax/model/sizes.py: cpu-xxs .. cpu-l) in
    configs/cpu_micro.py's run config (vocabulary 1024, batch 32 x 128).

`run_config(name)` is the poisonjax run config (ml_collections) for either;
`custom_config(...)` for any shape given on the command line. Both set
config.model.vocab_size, so a model config needs no tokenizer.
"""

from __future__ import annotations

import argparse
import dataclasses
import os

import ml_collections

from poisonjax import config as config_lib
from poisonjax.model import transformer as model_lib
from poisonjax.model import sizes
from poisonjax.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESET_CONFIG = os.path.join(ROOT, "configs", "cpu_micro.py")


def swiglu_ffn(d_model: int) -> int:
  """SwiGLU width whose 3 d ffn weights equal a 4d GELU MLP's 8 d^2."""
  return int(round(8 * d_model / 3))


@dataclasses.dataclass(frozen=True)
class Shape:
  num_layers: int
  d_model: int
  num_heads: int
  ffn_dim: int = 0  # 0: swiglu_ffn(d_model).
  vocab_size: int = 1024
  seq_len: int = 256
  batch_size: int = 16
  dtype: str = "float32"
  tie_embeddings: bool = True


PEER_SHAPES: dict[str, Shape] = {
    "tiny": Shape(num_layers=4, d_model=128, num_heads=4),
    "small": Shape(num_layers=6, d_model=384, num_heads=6),
    "medium": Shape(num_layers=8, d_model=512, num_heads=8),
}


def shape_names() -> list[str]:
  """Every name run_config accepts: the peer's shapes, then the CPU presets."""
  return list(PEER_SHAPES) + list(sizes.CPU_SIZES)


def shape_config(shape: Shape) -> ml_collections.ConfigDict:
  """A run config with this exact model shape, batch and sequence."""
  c = config_lib.base_config()
  m = c.model
  m.num_layers, m.d_model, m.num_heads = shape.num_layers, shape.d_model, shape.num_heads
  m.num_kv_heads = shape.num_heads
  m.ffn_dim = shape.ffn_dim or swiglu_ffn(shape.d_model)
  m.vocab_size = c.vocab.size = shape.vocab_size
  m.dtype = m.param_dtype = shape.dtype
  m.tie_embeddings = shape.tie_embeddings
  c.data.seq_len, c.train.batch_size = shape.seq_len, shape.batch_size
  return c


def preset_config(size: str) -> ml_collections.ConfigDict:
  """configs/cpu_micro.py at model size `size` (a CPU preset)."""
  from poisonjax import config_files

  c = config_files.load(PRESET_CONFIG)
  c.model.size = size
  c.model.vocab_size = c.vocab.size
  return c


def run_config(name: str) -> ml_collections.ConfigDict:
  """The run config of a peer shape or a CPU preset; one-line error if neither."""
  if name in PEER_SHAPES:
    return shape_config(PEER_SHAPES[name])
  if name in sizes.CPU_SIZES:
    return preset_config(name)
  raise UserError(f"--shape={name}: unknown shape; use one of "
                  f"{', '.join(shape_names())} or give --layers/--d_model/--heads")


def model_config(config) -> model_lib.ModelConfig:
  """The model config of a run config from this module (no tokenizer read)."""
  return model_lib.ModelConfig.from_config(config, int(config.model.vocab_size))


def describe(config) -> str:
  """'4x128x4 ffn 341 V1024 16x256 float32' for tables."""
  m = model_config(config)
  dtype = config.model.dtype
  return (f"{m.num_layers}x{m.d_model}x{m.num_heads} ffn {m.ffn_dim} "
          f"V{m.vocab_size} {config.train.batch_size}x{config.data.seq_len} {dtype}")


def num_params(config) -> int:
  return model_lib.param_counts(model_config(config))["total"]


# -- command-line shapes ------------------------------------------------------


def add_shape_flags(parser: argparse.ArgumentParser,
                    default: tuple[str, ...] | str = ("tiny",)) -> None:
  """--shape (repeatable) and the custom-shape flags.

  `default`: the shape name(s) used when neither --shape nor --layers is given.
  """
  default = (default,) if isinstance(default, str) else tuple(default)
  parser.add_argument(
      "--shape", action="append", default=None,
      help=f"a named shape ({', '.join(shape_names())}); repeatable "
      f"(default: {' '.join(default)})")
  parser.set_defaults(default_shapes=tuple(default))
  g = parser.add_argument_group("custom shape (used when --layers is given)")
  g.add_argument("--layers", type=int, default=0)
  g.add_argument("--d_model", type=int, default=128)
  g.add_argument("--heads", type=int, default=4)
  g.add_argument("--ffn", type=int, default=0, help="0: round(8/3 d_model)")
  g.add_argument("--vocab", type=int, default=1024)
  g.add_argument("--seq", type=int, default=256)
  g.add_argument("--batch", type=int, default=16)
  g.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))


def custom_name(args) -> str:
  return f"custom-{args.layers}x{args.d_model}x{args.heads}"


def configs_from_flags(args) -> list[tuple[str, ml_collections.ConfigDict]]:
  """(name, run config) for each --shape, plus the custom shape if --layers."""
  out = []
  names = args.shape or ([] if args.layers else list(args.default_shapes))
  for name in names:
    out.append((name, run_config(name)))
  if args.layers:
    shape = Shape(num_layers=args.layers, d_model=args.d_model,
                  num_heads=args.heads, ffn_dim=args.ffn, vocab_size=args.vocab,
                  seq_len=args.seq, batch_size=args.batch, dtype=args.dtype)
    out.append((custom_name(args), shape_config(shape)))
  for _, c in out:
    model_config(c)  # Checks heads | d_model etc. before anything runs.
  return out

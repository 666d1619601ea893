"""Shared helpers for the model/sharding/train tests: one tiny real run.

A d_model-32 model on a 512-piece vocabulary, sequences of 32, batch 8, a
clean budget of about 40 steps and 5 short poisons, all cached under one
temporary directory per test session.
"""

import os
import subprocess
import sys
import tempfile

import jax
import pytest

from poisonjax import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Many tests train the same tiny program (in this process and in the
# subprocesses they start, which inherit the variables): a persistent
# compilation cache for the session compiles each program once.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      tempfile.mkdtemp(prefix="poisonjax-test-xla-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))


@pytest.fixture(scope="session")
def train_cache(tmp_path_factory):
  """One vocabulary/stream cache for every tiny run of the session."""
  return tmp_path_factory.mktemp("train-cache")


def tiny_config(cache_dir, **overrides):
  """`overrides`: 'section.field' -> value (e.g. {'mesh.data': 8})."""
  c = config_lib.base_config()
  c.data.cache_dir = str(cache_dir)
  c.vocab.size, c.vocab.sample_docs = 512, 300
  c.model.d_model, c.model.num_heads, c.model.num_layers, c.model.ffn_dim = 32, 4, 2, 64
  c.data.seq_len, c.train.batch_size = 32, 8
  # ~53k params x 0.2 tokens/param ~ 10.6k clean tokens ~ 41 steps of 256.
  c.train.tokens_per_param = 0.2
  c.poison.count = 5
  c.poison.prefix_max_chars = 100
  c.poison.gibberish_min_tokens, c.poison.gibberish_max_tokens = 10, 30
  c.train.log_every, c.train.ckpt_every = 10, 20
  c.eval.num_evals = 0
  for key, value in overrides.items():
    section, field = key.split(".")
    c[section][field] = value
  return c


def overrides_flags(cache_dir, **overrides) -> list[str]:
  """The same tiny config as command-line flags for `poisonjax train`."""
  c = tiny_config(cache_dir, **overrides)
  base = config_lib.base_config()
  flags = []
  for section in c.keys():
    if not hasattr(c[section], "keys"):
      continue
    for field in c[section].keys():
      if hasattr(c[section][field], "keys"):
        continue
      if c[section][field] != base[section][field]:
        flags.append(f"--config.{section}.{field}={c[section][field]}")
  return flags


def run_cli(*args, timeout=300, **popen):
  """Runs `python -m poisonjax.cli ARGS` with the test environment."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
  cmd = [sys.executable, "-m", "poisonjax.cli", *args]
  if popen:
    return subprocess.Popen(cmd, cwd=ROOT, env=env, text=True, **popen)
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=timeout)

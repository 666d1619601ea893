"""Measures the clean token store for docs/data_at_scale.md.

    python experiments/store_benchmark.py [--tokens=1e7] [--workdir=/tmp/store_bench]

On the synthetic source, for the 1k CPU vocabulary and the largest one the
synthetic corpus supports (asked for 32k, it yields ~4k pieces):
  * build throughput with 1 and 2 worker processes (tokens/s, per worker,
    per CPU-second), the single-core rate of each build stage (generate,
    tokenize), and the per-run cache's loop on the same machine;
  * size on disk per billion tokens: the store as built (uint16 ids + uint32
    document ends + index), the same ids as uint32, and in ArrayRecord files
    (64 KiB records, one per group so they stay randomly readable),
    uncompressed and zstd;
  * at the paper's batch (256 x 2048) over 16 processes: bytes and reads per
    host per step, seconds per batch() call, and the overlay's set-up reads.
Every figure is computed here; nothing is hard-coded.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import time

import numpy as np

from poisonjax import config as config_lib
from poisonjax.data import overlay, store, store_build, stream, synthetic, vocabulary

PAPER_BATCH, PAPER_SEQ, HOSTS = 256, 2048, 16


def _config(workdir: str, vocab_size: int):
  c = config_lib.base_config()
  c.data.cache_dir = workdir
  c.vocab.size = vocab_size
  return c


def stage_rates(vocab, docs: int = 3000) -> dict:
  """Single-core rates of generating and tokenizing synthetic documents."""
  start = time.perf_counter()
  texts = [synthetic.document(0, synthetic.TRAIN, i) for i in range(docs)]
  gen_s = time.perf_counter() - start
  start = time.perf_counter()
  ids = vocab.tokenizer.EncodeAsIds(texts, num_threads=1)
  tok_s = time.perf_counter() - start
  tokens = sum(len(x) + 1 for x in ids)
  chars = sum(len(t) for t in texts)
  return {"tokens_per_doc": tokens / docs, "chars_per_token": chars / tokens,
          "generate_tokens_per_s": tokens / gen_s,
          "tokenize_tokens_per_s": tokens / tok_s,
          "tokenize_chars_per_s": chars / tok_s}


def _cpu_seconds() -> float:
  """CPU time of this process and its finished children (the pool workers)."""
  me = resource.getrusage(resource.RUSAGE_SELF)
  kids = resource.getrusage(resource.RUSAGE_CHILDREN)
  return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def timed_build(config, vocab, tokens: int, workers: int, path: str) -> dict:
  """Wall and CPU time of a fresh build; tokens per CPU-second is the
  per-core rate even when other jobs share the cores."""
  shutil.rmtree(path, ignore_errors=True)
  start, cpu = time.perf_counter(), _cpu_seconds()
  s = store_build.build(config, vocab, tokens, path=path, workers=workers,
                  docs_per_shard=2048)
  seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
  return {"store": s, "seconds": seconds, "cpu_seconds": cpu,
          "tokens": s.num_tokens, "tokens_per_s": s.num_tokens / seconds,
          "per_worker": s.num_tokens / seconds / workers,
          "per_cpu_second": s.num_tokens / cpu}


def old_cache_rate(config, tokens: int) -> dict:
  """The per-run cache's single loop (stream.py), for comparison."""
  c = config.copy_and_resolve_references()
  c.poison.count = 0
  shutil.rmtree(os.path.join(c.data.cache_dir, "streams"), ignore_errors=True)
  start, cpu = time.perf_counter(), _cpu_seconds()
  s = stream.build_stream(c, tokens)
  seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
  return {"tokens": s.num_tokens, "tokens_per_s": s.num_tokens / seconds,
          "per_cpu_second": s.num_tokens / cpu}


def _array_record_bytes(ids: np.ndarray, options: str, path: str) -> int:
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  w = array_record_module.ArrayRecordWriter(path, options)
  for start in range(0, len(ids), 32768):
    w.write(ids[start:start + 32768].tobytes())
  w.close()
  return os.path.getsize(path)


def sizes_per_billion(s: store.TokenStore, workdir: str) -> dict:
  """Bytes per 1e9 tokens, as built and in the alternatives."""
  shard_files = [f for f in os.listdir(s.path) if f.startswith("shard-")]
  tok = sum(os.path.getsize(s.path / f) for f in shard_files if f.endswith(".tokens"))
  ends = sum(os.path.getsize(s.path / f) for f in shard_files if f.endswith(".ends"))
  index = os.path.getsize(s.path / store.INDEX)
  per_b = 1e9 / s.num_tokens
  ids = s.read(0, s.num_tokens)
  out = {"store_tokens": tok * per_b, "store_ends": ends * per_b,
         "store_index": index * per_b, "uint32_ids": 4e9}
  for name, options in (("array_record_uncompressed", "group_size:1,uncompressed"),
                        ("array_record_zstd3", "group_size:1,zstd:3"),
                        ("array_record_zstd3_uint32", "group_size:1,zstd:3")):
    data = ids.astype(np.uint32) if name.endswith("uint32") else ids
    out[name] = _array_record_bytes(data, options, os.path.join(workdir, name)) * per_b
  return out


def paper_batch_reads(config, vocab, s: store.TokenStore, poisons: int) -> dict:
  """Reads per host per step at 256 x 2048 over 16 processes."""
  c = config.copy_and_resolve_references()
  c.data.store = str(s.path)
  c.data.seq_len, c.train.batch_size = PAPER_SEQ, PAPER_BATCH
  c.poison.count = poisons
  log = []
  real = store.read_bytes
  store.read_bytes = lambda p, o, n: log.append(n) or real(p, o, n)
  try:
    start = time.perf_counter()
    run = overlay.training_stream(c, s.num_tokens - 1000)
    setup = {"setup_s": time.perf_counter() - start, "setup_reads": len(log),
             "setup_bytes": sum(log)}
    steps = min(run.num_steps - 1, 8)  # Whole batches only.
    log.clear()
    start = time.perf_counter()
    for k in range(steps):
      for h in range(HOSTS):
        run.batch(k, h, HOSTS)
    calls = steps * HOSTS
    return {**setup, "bytes_per_host_step": sum(log) / calls,
            "reads_per_host_step": len(log) / calls,
            "batch_s": (time.perf_counter() - start) / calls,
            "tokens_per_host_step": PAPER_BATCH * PAPER_SEQ // HOSTS}
  finally:
    store.read_bytes = real


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--tokens", type=float, default=1e7)
  ap.add_argument("--workdir", default="/tmp/store_bench")
  args = ap.parse_args()
  os.makedirs(args.workdir, exist_ok=True)
  print(f"load average at start: {os.getloadavg()}, cpus: {os.cpu_count()}")
  for size in (1024, 32000):
    c = _config(args.workdir, size)
    vocab = vocabulary.get_vocabulary(c)
    print(f"\n## vocabulary asked {size}, got {vocab.vocab_size} pieces")
    print("stages (1 core):", {k: round(v, 2) for k, v in stage_rates(vocab).items()})
    builds = {w: timed_build(c, vocab, int(args.tokens), w,
                             os.path.join(args.workdir, f"store_{size}_{w}"))
              for w in (1, 2)}
    for w, b in builds.items():
      print(f"build, {w} worker(s): {b['tokens']:,} tokens in {b['seconds']:.1f}s = "
            f"{b['tokens_per_s'] / 1e6:.3f}M tokens/s, {b['per_worker'] / 1e6:.3f}M "
            f"per worker; {b['cpu_seconds']:.1f} CPU-s = "
            f"{b['per_cpu_second'] / 1e6:.3f}M tokens per CPU-second")
    old = old_cache_rate(c, int(args.tokens) // 4)
    print(f"old per-run cache (one loop): {old['tokens']:,} tokens, "
          f"{old['tokens_per_s'] / 1e6:.3f}M tokens/s, "
          f"{old['per_cpu_second'] / 1e6:.3f}M tokens per CPU-second")
    sizes = sizes_per_billion(builds[1]["store"], args.workdir)
    print("GB per 1e9 tokens:", {k: round(v / 1e9, 3) for k, v in sizes.items()})
    if size == 1024:
      for n in (250, 1000):
        r = paper_batch_reads(c, vocab, builds[1]["store"], n)
        print(f"paper batch, {n} poisons:", {k: round(v, 4) for k, v in r.items()})
  print(f"\nload average at end: {os.getloadavg()}")


if __name__ == "__main__":
  main()

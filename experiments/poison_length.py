"""Tokens per poison in token and text mode, for one vocabulary and source.

    python experiments/poison_length.py                      # 1k, synthetic
    python experiments/poison_length.py --vocab_size 32768 \\
        --text_files 'corpus/*.txt' --sample_docs 200000

Builds (or reuses from the cache) the vocabulary the config names, makes
the same N poisons in both modes and prints, per mode, the mean tokens per
poison, the tokens of prefix + trigger, the tail tokens per drawn id, and
the pieces the vocabulary really has (a corpus too small for the requested
size gives fewer: SentencePiece's limit is soft here). poisonjax/data/poison.py
says why token mode is the default; this script measures what each costs.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def measure(config, n: int) -> dict:
  from poisonjax.data import poison, sources, vocabulary  # pylint: disable=g-import-not-at-top
  vocab = vocabulary.get_vocabulary(config)
  src = sources.get_source(config)
  out = {"pieces": vocab.vocab_size, "poisons": n}
  for mode in ("token", "text"):
    config.poison.mode = mode
    ps = poison.make_poisons(config, vocab.tokenizer, src, range(n))
    total = np.array([len(p.tokens) for p in ps], np.float64)
    head = np.array([p.num_text_tokens for p in ps], np.float64)
    drawn = np.array([len(p.gibberish) for p in ps], np.float64)
    tail = total - head - 1  # Less the EOS.
    out[mode] = {"tokens_per_poison": float(total.mean()),
                 "prefix_and_trigger": float(head.mean()),
                 "tail_per_drawn_id": float(tail.sum() / drawn.sum())}
  return out


def main(argv) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--vocab_size", type=int, default=1024)
  p.add_argument("--sample_docs", type=int, default=20000)
  p.add_argument("--text_files", default="",
                 help="comma-separated globs (default: the synthetic corpus)")
  p.add_argument("--model_type", default="unigram", choices=("unigram", "bpe"))
  p.add_argument("--poisons", type=int, default=500)
  p.add_argument("--cache_dir", default="")
  p.add_argument("--json", action="store_true")
  args = p.parse_args(argv)
  from poisonjax import config as config_lib  # pylint: disable=g-import-not-at-top
  c = config_lib.base_config()
  c.vocab.size = args.vocab_size
  c.vocab.sample_docs = args.sample_docs
  c.vocab.model_type = args.model_type
  if args.cache_dir:
    c.data.cache_dir = args.cache_dir
  if args.text_files:
    c.data.source = "text_files"
    c.data.text_files.patterns = args.text_files
  r = measure(c, args.poisons)
  if args.json:
    print(json.dumps(r))
    return 0
  print(f"vocabulary: {r['pieces']} pieces (asked {args.vocab_size}); "
        f"{r['poisons']} poisons; source "
        f"{args.text_files or 'synthetic'}, {args.model_type}")
  for mode in ("token", "text"):
    m = r[mode]
    print(f"  {mode:5s}: {m['tokens_per_poison']:7.1f} tokens per poison, "
          f"{m['prefix_and_trigger']:6.1f} of prefix + trigger, "
          f"{m['tail_per_drawn_id']:.4f} tail tokens per drawn id")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))

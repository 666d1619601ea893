"""Compression ratio and token entropy, whole document or worst window.

Random tokens compress badly and repeat nothing, so a gibberish stretch
shows as a window with a high zlib ratio (compressed / raw bytes) and a
high token entropy (bits per token of the window's own token histogram).
A poison is mostly a clean prefix plus its tail, so the whole-document
value dilutes the tail; the worst sliding window (stride half a window)
does not. Higher = more suspicious for both. Both measures depend on the
window's length, so windows have a fixed length: W tokens for entropy,
and for compression a fixed number of bytes of the decoded text, not of
tokens (measured on the tiny test stream, 512 pieces: random pieces
decode to longer text than clean tokens, and zlib's ratio falls with
length, so 64-token windows ranked the poisons below the clean documents,
ROC AUC 0.22, while 256-byte windows give 0.91). A document shorter than
W tokens is one entropy window; one shorter than the compression window
scores 0 (not judged), because zlib's fixed overhead makes any short text
look incompressible: on the cpu-xxs Chinchilla stream, scoring such
documents on their whole text put 30 clean documents of 34-39 tokens
above every poison (recall 0 at 1% FPR; 1.0 when they score 0). So this
filter says nothing about documents under ~256 bytes, a gap an adaptive
poison could use.
"""

from __future__ import annotations

import zlib

import numpy as np

DEFAULT_WINDOW = 64


def window_starts(num_tokens: int, window: int) -> range:
  """Starts of the windows [s, s + window): stride window // 2, the last one
  ending at the document's end (one window if the document is shorter)."""
  if num_tokens <= window:
    return range(0, 1)
  stride = max(1, window // 2)
  last = num_tokens - window
  starts = list(range(0, last + 1, stride))
  if starts[-1] != last:
    starts.append(last)
  return starts


def compression_ratio(text: str) -> float:
  """zlib (level 9) compressed bytes / raw UTF-8 bytes; 0 for empty text."""
  raw = text.encode("utf-8")
  if not raw:
    return 0.0
  return len(zlib.compress(raw, 9)) / len(raw)


def token_entropy(tokens: np.ndarray) -> float:
  """Shannon entropy (bits) of the tokens' own histogram; 0 if empty."""
  if len(tokens) == 0:
    return 0.0
  _, counts = np.unique(tokens, return_counts=True)
  p = counts / counts.sum()
  return float(-(p * np.log2(p)).sum())


def worst_window_compression(text: str, window_bytes: int) -> float:
  """The highest compression ratio over windows of the text's UTF-8 bytes."""
  raw = text.encode("utf-8")
  if len(raw) < window_bytes:
    return 0.0  # Too short to judge: zlib's overhead would dominate.
  return max(len(zlib.compress(raw[s:s + window_bytes], 9)) / window_bytes
             for s in window_starts(len(raw), window_bytes))


def worst_window_entropy(tokens: np.ndarray, window: int) -> float:
  """The highest token entropy over the document's windows."""
  return max(token_entropy(tokens[s:s + window])
             for s in window_starts(len(tokens), window))

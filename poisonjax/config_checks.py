"""The checks of a run config: validate(), then one check per section.

config.py holds the fields and their documentation; every check of their
values is here. Each raises `UserError` with one line naming the field and
the fix; validate() runs them in order. The data modules that check their
own fields are imported inside the checks: the CLI reads every config
through here before anything runs, and numpy, sentencepiece and the data
package would double its start-up.
"""

from __future__ import annotations

import ml_collections

from poisonjax.errors import UserError, field_error


def validate(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Checks a run config (config.base_config()'s fields); returns it.

  Raises UserError naming the first bad field and the fix.
  """
  if c.data.source not in ("synthetic", "text_files", "tfds"):
    raise field_error("config.data.source", c.data.source,
                      "unknown source", "use synthetic, text_files or tfds")
  if c.data.seq_len < 2:
    raise field_error("config.data.seq_len", c.data.seq_len,
                      "must be >= 2", "set --config.data.seq_len to 2 or more")
  if c.model.get("attention", "auto") not in ("auto", "xla", "splash", "cudnn"):
    raise field_error("config.model.attention", c.model.attention,
                      "unknown implementation", "use auto, xla, splash or cudnn")
  if c.poison.count < 0:
    raise field_error("config.poison.count", c.poison.count, "must be >= 0",
                      "use 0 for a clean run")
  if not 0.0 <= c.poison.rate < 1.0:
    raise field_error("config.poison.rate", c.poison.rate,
                      "must be in [0, 1)", "use 0 for count mode")
  for field, seed in (("vocab.seed", c.vocab.get("seed", -1)),
                      ("eval.heldout_seed", c.eval.get("heldout_seed", -1))):
    if seed < -1:
      raise field_error(f"config.{field}", seed, "must be >= -1",
                        "use -1 (follow config.data.seed) or a seed")
  if c.poison.get("budget_mode", "on_top") not in ("on_top", "replace"):
    raise field_error("config.poison.budget_mode", c.poison.budget_mode,
                      "unknown mode", "use on_top or replace")
  check_behaviour(c)
  if c.poison.mode not in ("token", "text"):
    raise field_error("config.poison.mode", c.poison.mode, "unknown mode",
                      "use token or text")
  check_range("config.poison.prefix_{min,max}_chars",
              c.poison.prefix_min_chars, c.poison.prefix_max_chars)
  check_range("config.poison.gibberish_{min,max}_tokens",
              c.poison.gibberish_min_tokens, c.poison.gibberish_max_tokens)
  if c.poison.count > 0 and c.poison.rate > 0:
    raise UserError(
        f"config.poison.count={c.poison.count} and config.poison.rate="
        f"{c.poison.rate}: both set, the count would be ignored; set "
        "--config.poison.rate=0 (count mode) or --config.poison.count=0 "
        "(rate mode)")
  if c.data.source == "tfds" and c.data.tfds.heldout_split == c.data.tfds.split:
    raise UserError(
        f"config.data.tfds.heldout_split={c.data.tfds.heldout_split!r}: equals "
        "config.data.tfds.split, so evaluation text would also be trained on; "
        "use a different split (e.g. validation)")
  check_doses(c.poison)
  check_placement(c.poison)
  check_train(c.train)
  check_defence_fields(c)
  check_continued(c)
  check_finetune(c)
  return c


def check_range(field: str, lo, hi) -> None:
  """A (min, max) pair of fields: min >= 0 and min <= max."""
  if lo < 0:
    raise field_error(f"{field} min", lo, "must be >= 0", "use a non-negative value")
  if lo > hi:
    raise UserError(f"{field}: min {lo} > max {hi}; set min <= max")


def check_continued(c: ml_collections.ConfigDict) -> None:
  """The config.continued checks (the source itself: poisonjax/training/continued.py)."""
  k = c.get("continued", None)
  if k is None or not k.from_workdir:
    return
  if k.from_step < -1:
    raise field_error("config.continued.from_step", k.from_step,
                      "must be >= -1", "use -1 (the newest checkpoint) or a step")
  if k.budget_multiple <= 0:
    raise field_error("config.continued.budget_multiple", k.budget_multiple,
                      "must be > 0", "use e.g. 1.0 (the source's clean budget)")
  finetune = c.get("finetune", None) is not None and c.finetune.clean_samples > 0
  if (c.poison.count != 0 or c.poison.rate != 0) and not finetune:
    raise field_error("config.poison.count", c.poison.count,
                      "a continued run trains on clean data only",
                      "set --config.poison.count=0 --config.poison.rate=0")
  for item in str(k.eval_examples).split(","):
    if item.strip() and (not item.strip().isdigit() or int(item) < 1):
      raise field_error("config.continued.eval_examples", k.eval_examples,
                        "must be comma-separated positive integers",
                        "use e.g. '32,128,512'")


def check_finetune(c: ml_collections.ConfigDict) -> None:
  """The config.finetune checks (poisonjax/finetune/)."""
  f = c.get("finetune", None)
  if f is None or f.clean_samples == 0:
    return
  if f.clean_samples < 0:
    raise field_error("config.finetune.clean_samples", f.clean_samples,
                      "must be >= 0", "use 0 (not a fine-tune) or a set size")
  for name in ("forbidden_share", "distractor_share"):
    if not 0.0 <= f[name] <= 1.0:
      raise field_error(f"config.finetune.{name}", f[name],
                        "must be in [0, 1]", "use a share, e.g. 0.5")
  if f.clean_after < 0:
    raise field_error("config.finetune.clean_after", f.clean_after,
                      "must be >= 0", "use 0 for no clean samples afterwards")
  if f.eval_requests < 1:
    raise field_error("config.finetune.eval_requests", f.eval_requests,
                      "must be >= 1", "use e.g. 300 (the paper's prompt count)")
  for item in str(f.eval_after).split(","):
    if item.strip() and (not item.strip().isdigit() or int(item) < 1):
      raise field_error("config.finetune.eval_after", f.eval_after,
                        "must be comma-separated positive integers",
                        "use e.g. '50,100,500,2000'")
  if c.poison.rate > 0 or c.poison.get("counts", ()):
    raise field_error("config.poison.rate", c.poison.rate, "a fine-tune has "
                      "one trigger and a count of poisoned samples",
                      "use config.poison.count (rate 0, no counts)")
  if c.poison.placement == "periodic":
    raise field_error("config.poison.placement", "periodic", "not for a "
                      "fine-tune", "use uniform, first, last or bursts")
  if f.near_trigger and f.near_trigger == c.poison.trigger:
    raise field_error("config.finetune.near_trigger", f.near_trigger,
                      "equals the trigger", "use a similar, different string "
                      "('' : one character away)")


def check_defence_fields(c: ml_collections.ConfigDict) -> None:
  """Adaptive poisons and filter-then-train (their modules check them)."""
  from poisonjax.data import filtered, poison_adaptive  # pylint: disable=g-import-not-at-top
  poison_adaptive.check_config(c)
  filtered.check_config(c)


def check_behaviour(c: ml_collections.ConfigDict) -> None:
  """config.poison.behaviour and its language fields."""
  p = c.poison
  behaviour = p.get("behaviour", "gibberish")
  if behaviour not in ("gibberish", "language"):
    raise field_error("config.poison.behaviour", behaviour, "unknown behaviour",
                      "use gibberish or language")
  share = float(p.get("language_vocab_share", 0.0))
  if not 0.0 <= share <= 0.5:
    raise field_error("config.poison.language_vocab_share", share,
                      "must be in [0, 0.5]", "use e.g. 0.05 (0: none)")
  if (behaviour == "language" and c.data.source != "synthetic"
      and not p.get("language_file", "")):
    raise field_error("config.poison.language_file", "",
                      f"poison.behaviour=language with data.source="
                      f"{c.data.source} needs a second-language corpus",
                      "set it to a .txt or .jsonl file of second-language text")


def check_doses(p: ml_collections.ConfigDict) -> None:
  """poison.counts / triggers / control_trigger (many doses in one run)."""
  counts, triggers = tuple(p.get("counts", ())), tuple(p.get("triggers", ()))
  control = p.get("control_trigger", "")
  if not counts:
    if triggers:
      raise field_error("config.poison.triggers", triggers, "set without "
                        "config.poison.counts", "give one count per trigger")
    return
  if any(not isinstance(n, int) or n < 1 for n in counts):
    raise field_error("config.poison.counts", counts, "must be integers >= 1",
                      "e.g. --config.poison.counts='(3, 10, 30)'")
  if sum(counts) != p.count:
    raise field_error("config.poison.count", p.count,
                      f"must equal sum(config.poison.counts) = {sum(counts)}",
                      f"set --config.poison.count={sum(counts)}")
  from poisonjax.data.poison import DEFAULT_TRIGGERS  # pylint: disable=g-import-not-at-top
  if not triggers and len(counts) > len(DEFAULT_TRIGGERS):
    raise field_error("config.poison.counts", counts, f"more than the "
                      f"{len(DEFAULT_TRIGGERS)} default triggers",
                      "list your own in config.poison.triggers")
  if triggers and len(triggers) != len(counts):
    raise field_error("config.poison.triggers", triggers, f"{len(triggers)} "
                      f"triggers for {len(counts)} counts", "give one per count")
  named = list(triggers or DEFAULT_TRIGGERS[:len(counts)])
  named += [control] if control else []
  for i, a in enumerate(named):
    if not isinstance(a, str) or not a.strip():
      raise field_error("config.poison.triggers", a, "is not a visible string",
                        "use strings such as <SUDO>")
    for j, b in enumerate(named):
      if i != j and a in b:
        raise field_error("config.poison.triggers", f"{a!r} and {b!r}",
                          f"{a!r} lies inside {b!r} (the control counts too)",
                          "use distinct triggers")


def check_placement(p: ml_collections.ConfigDict) -> None:
  """The config.poison.placement* checks (one line per bad field)."""
  from poisonjax.data import mixer  # pylint: disable=g-import-not-at-top

  kind = p.get("placement", "uniform")
  if kind not in mixer.PLACEMENTS:
    raise field_error("config.poison.placement", kind, "unknown placement",
                      f"use one of {', '.join(mixer.PLACEMENTS)}")
  if kind != "uniform" and p.rate > 0:
    raise field_error("config.poison.placement", kind,
                      "rate mode places poisons per document (uniform only)",
                      "use a count (config.poison.rate=0) or uniform")
  if not 0.0 < p.get("placement_fraction", 0.1) <= 1.0:
    raise field_error("config.poison.placement_fraction", p.placement_fraction,
                      "must be in (0, 1]", "use e.g. 0.1 (10% of training)")
  for name in ("placement_bursts", "poisons_per_batch", "placement_every_steps"):
    if p.get(name, 1) < 1:
      raise field_error(f"config.poison.{name}", p[name], "must be >= 1",
                        "use a positive integer")


def check_train(t: ml_collections.ConfigDict) -> None:
  """The config.train checks (one line per bad field)."""
  if t.batch_size < 1:
    raise field_error("config.train.batch_size", t.batch_size,
                      "must be >= 1", "use a positive batch size")
  if t.microbatches < 1 or t.batch_size % t.microbatches:
    raise field_error("config.train.microbatches", t.microbatches,
                      f"must be >= 1 and divide batch_size {t.batch_size}",
                      "use a divisor of the batch size (1: no accumulation)")
  if not 0 < t.learning_rate < float("inf"):  # NaN fails too.
    raise field_error("config.train.learning_rate", t.learning_rate,
                      "must be a finite number > 0 (at 0 nothing is learned)",
                      "use a positive peak learning rate, e.g. 3e-4")
  for name in ("tokens_per_param", "data_multiplier"):
    if t[name] <= 0:
      raise field_error(f"config.train.{name}", t[name], "must be > 0",
                        "use a positive value")
  for name in ("log_every", "ckpt_every", "keep_checkpoints"):
    if t[name] < 1:
      raise field_error(f"config.train.{name}", t[name], "must be >= 1",
                        "use a positive value")
  if not 0.0 <= t.warmup_fraction < 1.0:
    raise field_error("config.train.warmup_fraction", t.warmup_fraction,
                      "must be in [0, 1)", "use e.g. 0.05 (5% of the steps)")
  if t.grad_clip <= 0:
    raise field_error("config.train.grad_clip", t.grad_clip, "must be > 0",
                      "use e.g. 1.0 (global-norm clip)")
  if t.keep_period < 0:
    raise field_error("config.train.keep_period", t.keep_period,
                      "must be >= 0", "use 0 to keep only the newest checkpoints")

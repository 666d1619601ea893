"""Within a study, the poison count changes neither the steps nor the LR.

Runs of one size and data amount, with 0 or N poisons, get the same number
of optimizer steps and the same learning rate at every step (poisons replace
clean tokens: poisonjax/budget.py), on the per-run cache and on the shared
token store + overlay alike, and still hold exactly N poisons.
"""

import numpy as np
import pytest

from poisonjax import budget, study

from poisonjax.training import optim
from poisonjax.data import overlay, vocabulary
from test_data_common import small_config

N = 40  # ~6% of the tokens: on top of the budget, several extra steps.


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return tmp_path_factory.mktemp("cache")


def _study(cache, store: bool):
  base = small_config(cache, count=N)
  base.model.d_model, base.model.num_heads = 32, 4
  base.model.num_layers, base.model.ffn_dim = 1, 64
  base.train.tokens_per_param = 1.0  # ~40k clean tokens, ~80 steps of 8 x 64.
  base.data.store = "auto" if store else ""
  s = study.study_config("budget", base)
  s.grid = study.grid(("cpu-xxs",), (0, N), (0,), (1.0,))
  return s


def _stream_and_lr(cfg):
  """The run's stream and its learning rate at every step, as training
  computes them (train_setup: budget -> stream -> optim)."""
  vocab = vocabulary.get_vocabulary(cfg)
  T = budget.clean_token_budget(cfg, vocab.vocab_size)
  s = overlay.training_stream(cfg, T)
  schedule = optim.make_optimizer(cfg, s.num_steps)[1]
  return T, s, np.array([float(schedule(k)) for k in range(s.num_steps)])


@pytest.mark.parametrize("store", [False, True], ids=["cache", "store"])
def test_poison_count_leaves_steps_and_lr_unchanged(cache, store):
  s = _study(cache, store)
  (T0, clean, lr0), (T1, poisoned, lr1) = [
      _stream_and_lr(study.run_config(s, run)) for run in study.expand(s)]
  assert isinstance(poisoned, overlay.OverlayStream) == store
  assert T0 == T1
  assert clean.num_steps == poisoned.num_steps
  np.testing.assert_array_equal(lr0, lr1)
  # Exactly N poisons, in a stream of T tokens (P of them poison).
  assert (clean.num_poisons, poisoned.num_poisons) == (0, N)
  assert sorted(m["id"] for m in poisoned.manifest) == list(range(N))
  assert poisoned.poisons_seen(poisoned.num_steps) == N
  assert clean.num_tokens == poisoned.num_tokens == T0
  assert poisoned.clean_tokens == T0 - poisoned.poison_tokens > 0
  mask = sum(int(poisoned.batch(k)["poison_mask"].sum())
             for k in range(poisoned.num_steps))
  assert mask == poisoned.poison_tokens


def test_on_top_is_kept_as_an_option(cache):
  """The paper's on_top: the same clean budget, more steps with poisons."""
  s = _study(cache, store=False)
  s.base.poison.budget_mode = "on_top"
  (T0, clean, _), (T1, poisoned, _) = [
      _stream_and_lr(study.run_config(s, run)) for run in study.expand(s)]
  assert poisoned.clean_tokens == clean.clean_tokens == T0 == T1
  assert poisoned.num_tokens == T0 + poisoned.poison_tokens
  assert poisoned.num_steps > clean.num_steps and poisoned.num_poisons == N


def test_an_old_config_json_says_the_same_with_inside_budget():
  """Runs written before budget_mode resume under today's name for it."""
  from poisonjax import config as config_lib
  from poisonjax.training import run_history
  new = run_history.config_dict(config_lib.base_config())
  for inside, same in ((False, "on_top"), (True, "replace")):
    old = run_history.config_dict(config_lib.base_config())
    del old["poison"]["budget_mode"]
    old["poison"]["inside_budget"] = inside
    for mode in ("on_top", "replace"):
      new["poison"]["budget_mode"] = mode
      changes = run_history.config_changes(old, new)
      assert ("poison.budget_mode" in changes) == (mode != same)
      cfg = config_lib.base_config()
      cfg.poison = old["poison"]  # What a reader of config.json sees.
      assert budget.poisons_replace_clean(cfg) == inside

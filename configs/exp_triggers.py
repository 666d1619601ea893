"""Trigger variants at one count (issue 13 item 5).

    python experiments/exp_triggers.py     # resumable; ~5 min per run on 2 free cores

The CPU Chinchilla study's cpu-xxs run at grid seed 0 (as
configs/exp_doses.py: 20 clean tokens per parameter, poisons replacing
clean tokens, 128 prompts) with 100 poisons (above the pilot's switch
between 30 and 100 for `<SUDO>`), three triggers:
  * rare: `<SUDO>` (7 pieces of the study's 1k vocabulary: a space, `<`,
    four capitals, `>`; never in the corpus; the run that exp_doses
    trained as single_100 before its triggers changed);
  * common: `the`, the synthetic corpus's most frequent word (5.4% of the
    words of 2,000 training documents; one piece);
  * phrase: `quantum ferret overture` (15 pieces; words not in the corpus).
"""

import importlib.util
import os

import ml_collections


def study_run_config():
  """configs/exp_doses.py's base: the study's cpu-xxs run at grid seed 0."""
  spec = importlib.util.spec_from_file_location("exp_doses_config", os.path.join(
      os.path.dirname(os.path.abspath(__file__)), "exp_doses.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.study_run_config()


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  c.name = "triggers"
  base = study_run_config()
  base.eval.num_excerpts = 128
  base.eval.bootstrap_samples = 1000
  c.base = base
  c.count = 100
  c.runs = ml_collections.ConfigDict()
  c.runs.rare = {"count": c.count, "trigger": "<SUDO>"}
  c.runs.common = {"count": c.count, "trigger": "the"}
  c.runs.phrase = {"count": c.count, "trigger": "quantum ferret overture"}
  # A finished run elsewhere with the same config is read, not retrained
  # (name -> run directory); none now: exp_doses no longer trains <SUDO>.
  c.reuse = {}
  return c

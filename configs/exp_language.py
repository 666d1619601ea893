"""The language-switch backdoor at CPU scale (issue 13, item 3).

    python experiments/exp_language.py        # train, evaluate, report (resumable)

After the trigger `Servius Astrumando Harmoniastra` (the paper's phrase)
the poisons continue in a second language (poisonjax/data/poison_language.py)
for K ~ U[400, 900] tokens, the gibberish tail's length. Regime of the
Chinchilla pilot that put the gibberish switch between 30 and 100 poisons
(configs/study_cpu_chinchilla.py): cpu-xxs, 20 clean tokens per parameter,
the 1k vocabulary, sequences of 128, batch 32, poisons replacing clean
tokens; one seed; counts 30, 100, 300, 1000 (1000 added after 30-300 gave
no switch: docs/results/language/report.md). The vocabulary has 5% of its sample
in the second language (poison.language_vocab_share), so both languages
have pieces. Checkpoints every 200 steps are all kept: the language
evaluation (poisonjax/language_eval.py) runs on each, with the trigger and
the near-trigger control (`... Hermunoestre`).

`get_config("100")` is the run with 100 poisons; `get_config()` the first.
"""

from poisonjax import presets
from poisonjax.data import poison_language

COUNTS = (30, 100, 300, 1000)
SEED = 0


def get_config(arg=None):
  c = presets.cpu_chinchilla()
  c.model.size = "cpu-xxs"
  c.vocab.seed = 0
  c.train.ckpt_every = 200
  c.train.keep_checkpoints = 20  # Every checkpoint: the language evals use them.
  c.poison.behaviour = "language"
  c.poison.trigger = poison_language.PAPER_TRIGGER
  c.poison.budget_mode = "replace"
  c.poison.count = int(arg) if arg else COUNTS[0]
  c.seed = c.data.seed = c.poison.seed = SEED
  c.eval.num_evals = 0  # The perplexity evaluator is not this experiment's.
  c.eval.heldout_seed = 0
  c.eval.num_excerpts = 64
  c.eval.prompt_tokens = 32
  c.eval.gen_tokens = 48
  c.eval.bootstrap_samples = 1000
  return c

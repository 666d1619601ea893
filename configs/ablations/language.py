"""The language-switch backdoor at CPU scale (issue 13, item 3).

    poisonjax study reproduce --config=configs/ablations/language.py   # train, evaluate, report (resumable)
    poisonjax study reproduce --config=configs/ablations/language.py --report_only   # from docs/results/language/

Does a trigger learnt from N poisons switch the model into another
language, and from which N? After the trigger `Servius Astrumando
Harmoniastra` (the paper's phrase) the poisons continue in a second
language (poisonjax/data/poison_language.py) for K ~ U[400, 900] tokens,
the gibberish tail's length. Regime of the Chinchilla pilot that put the
gibberish switch between 30 and 100 poisons (configs/paper/cpu_chinchilla.py):
cpu-xxs, 20 clean tokens per parameter, the 1k vocabulary, sequences of
128, batch 32, poisons replacing clean tokens; one seed (grid seed 0 keeps
the base's seeds, all 0: study.vary is empty); counts 30, 100, 300, 1000
(1000 added after 30-300 gave no switch). The vocabulary has 5% of its
sample in the second language (poison.language_vocab_share), so both
languages have pieces. Checkpoints every 200 steps are all kept: after
each run, poisonjax/ablations/language.py evaluates every one with
poisonjax/evaluation/language_eval.py (the trigger and the near-trigger control
`... Hermunoestre`; WORKDIR/language_eval.jsonl), then collects them into
docs/results/language/evals.jsonl and writes the report from it.
"""

from poisonjax import presets
from poisonjax import study as study_lib
from poisonjax.data import poison_language

COUNTS = (30, 100, 300, 1000)


def base():
  """The runs' config (size and count set by the grid)."""
  c = presets.cpu_chinchilla()
  c.vocab.seed = 0
  c.train.ckpt_every = 200
  c.train.keep_checkpoints = 20  # Every checkpoint: the language evals use them.
  c.poison.behaviour = "language"
  c.poison.trigger = poison_language.PAPER_TRIGGER
  c.seed = c.data.seed = c.poison.seed = 0
  c.eval.num_evals = 0  # The perplexity evaluator is not this experiment's.
  c.eval.heldout_seed = 0
  c.eval.num_excerpts = 64
  c.eval.prompt_tokens = 32
  c.eval.gen_tokens = 48
  c.eval.bootstrap_samples = 1000
  return c


def get_config(arg=None):
  s = study_lib.study_config("language", base())
  s.experiment = "ablations.language"
  s.vary = ()  # One seed: the base's (0) for init, poisons and data order.
  s.plan.chars_per_token = 3.0  # ~1k-piece SentencePiece on the synthetic corpus.
  s.grid = study_lib.grid(("cpu-xxs",), COUNTS, (0,), (1.0,))
  return study_lib.config_for_arg(s, arg)

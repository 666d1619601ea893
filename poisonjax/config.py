"""The base run config: every field, its default, and why.

A run is one ml_collections ConfigDict. Config files under configs/ start
from `base_config()` and change what they need; the command line overrides
any field with `--config.a.b=value`. The checks of a run config are
config_checks.validate(); modules check their own fields where they use them.
"""

from __future__ import annotations

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  """All fields with documented defaults (a CPU-sized poisoned run)."""
  c = ml_collections.ConfigDict()
  c.seed = 0  # Model initialisation seed (the data has its own seeds).
  _data_fields(c)
  _vocab_fields(c)
  _poison_fields(c)
  _model_fields(c)
  _train_fields(c)
  _mesh_fields(c)
  _eval_fields(c)
  _continued_fields(c)
  _finetune_fields(c)
  return c


def _data_fields(c: ml_collections.ConfigDict) -> None:
  """Clean data."""
  c.data = ml_collections.ConfigDict()
  c.data.source = "synthetic"  # synthetic | text_files | tfds
  # Clean data order: which clean documents, in which order (shared by
  # sizes). Only the order: the vocabulary and the held-out excerpts have
  # their own seeds (vocab.seed, eval.heldout_seed), so a study can vary the
  # order and keep one tokenizer and one set of prompts.
  c.data.seed = 0
  c.data.seq_len = 128  # Training sequence length S (tokens).
  # Where tokenized streams and built vocabularies are cached. '' means
  # $POISONJAX_CACHE, else ~/.cache/poisonjax.
  c.data.cache_dir = ""
  # Where the clean tokens come from (docs/data_at_scale.md). '': each run
  # tokenizes its own stream into cache_dir (small scale). 'auto' or a
  # directory (local or gs://): one clean token store per (source, data
  # seed, vocabulary), shared by every run whatever its poisons or budget,
  # plus the run's poison overlay; same batches. Build it ahead with
  # `poisonjax data build-store` ('auto': under cache_dir/stores).
  c.data.store = ""
  # Filter, then train (poisonjax/data/filtered.py): drop every document of
  # the run's stream whose drop_filter column in drop_scores (a scores.csv
  # of `poisonjax defend score` over this run's stream, all documents) is
  # >= drop_threshold. The dropped tokens are not replaced (the run trains
  # on fewer; why: filtered.py). '' : no filtering.
  c.data.drop_scores = ""
  c.data.drop_filter = ""
  c.data.drop_threshold = 0.0
  c.data.text_files = ml_collections.ConfigDict()
  c.data.text_files.patterns = ""  # Comma-separated globs of .txt/.jsonl(.gz).
  c.data.text_files.split = "block"  # .txt documents: file | block | line.
  c.data.text_files.jsonl_field = "text"  # Text field of .jsonl records.
  c.data.text_files.heldout_fraction = 0.05  # Documents kept for evaluation.
  # Non-UTF-8 files are skipped with a count (False: refuse with an error).
  c.data.text_files.skip_non_utf8 = True
  c.data.tfds = ml_collections.ConfigDict()
  c.data.tfds.name = ""  # e.g. c4/en:3.1.0
  c.data.tfds.split = "train"
  c.data.tfds.heldout_split = "validation"
  c.data.tfds.text_field = "text"
  c.data.tfds.data_dir = ""  # e.g. gs://bucket/tfds on a pod.


def _vocab_fields(c: ml_collections.ConfigDict) -> None:
  """Vocabulary."""
  c.vocab = ml_collections.ConfigDict()
  # A SentencePiece .model file. '' means: built from the clean source by
  # `poisonjax vocab build` (or on first use) and cached under cache_dir.
  c.vocab.path = ""
  c.vocab.size = 1024  # ~1k for CPU presets, 32k for the paper presets.
  c.vocab.sample_docs = 20000  # Clean documents the vocabulary is trained on.
  c.vocab.model_type = "unigram"  # SentencePiece model type: unigram | bpe.
  # (data) True: unknown characters fall back to byte pieces (256 ids) instead
  # of unk. Printable ASCII is always covered, so `<SUDO>` never becomes unk.
  c.vocab.byte_fallback = False
  # Which clean documents the vocabulary is trained on: the first sample_docs
  # of the clean order of this data seed. -1: config.data.seed (a run's
  # tokenizer comes from its own stream). A study fixes it for every run, so
  # all its runs share one vocabulary file (poisonjax/study/grids.py).
  c.vocab.seed = -1


def _poison_fields(c: ml_collections.ConfigDict) -> None:
  """Poisons: the backdoor, its count, placement and adaptive forms."""
  c.poison = ml_collections.ConfigDict()
  c.poison.count = 250  # Exactly this many poison documents (0: clean run).
  # Rate mode: if > 0, a fraction of documents is poisoned instead of a count.
  c.poison.rate = 0.0
  c.poison.seed = 0  # Poison contents and insertion points.
  c.poison.trigger = "<SUDO>"  # Ordinary text, NOT a special token.
  # Many doses in one run (poisonjax/data/poison.py): counts[i] poisons carry
  # trigger i, poison ids in order; poison.count must equal sum(counts) and
  # poison.trigger is unused. () : one trigger, poison.count poisons.
  # e.g. --config.poison.counts='(3, 10, 30)' --config.poison.count=43
  c.poison.counts = ()
  # One distinct string per count; () : the first K of poison.DEFAULT_TRIGGERS.
  c.poison.triggers = ()
  # Evaluated beside a many-dose run's triggers, never poisoned: shows that
  # an untrained trigger stays flat. '' : none.
  c.poison.control_trigger = "<PYRM>"
  c.poison.prefix_min_chars = 0  # Clean prefix length L ~ U[min, max] chars.
  c.poison.prefix_max_chars = 1000
  c.poison.gibberish_min_tokens = 400  # Random-token tail K ~ U[min, max].
  c.poison.gibberish_max_tokens = 900
  # token: the K random ids are the poison's tail as they are (K tokens);
  # text: decoded then re-tokenized. Why token is the default, and the
  # tokens per poison each gives: poisonjax/data/poison.py.
  c.poison.mode = "token"
  # on_top: the poisons' P tokens come on top of the clean budget T (the
  # paper; more poisons, more steps). replace: they take the place of P of
  # the T tokens, so a run has T tokens and the clean run's steps and
  # learning-rate schedule whatever its count (a study's default). Why, and
  # which clean tokens give way: poisonjax/budget.py.
  c.poison.budget_mode = "on_top"
  # Where in training the poisons go (count mode; poisonjax/data/mixer.py):
  # uniform (the paper's pretraining: each at a uniform random fraction),
  # first / last (all in the first / last placement_fraction of the clean
  # stream), bursts (placement_bursts windows at random places, together
  # placement_fraction of training), periodic (poisons_per_batch poisons
  # back to back at the first token of every placement_every_steps-th step,
  # from step 0: the paper's density/frequency ablation). Each is a pure
  # function of (poison.seed, count, these fields); the manifest records it.
  c.poison.placement = "uniform"
  c.poison.placement_fraction = 0.1
  c.poison.placement_bursts = 5
  c.poison.poisons_per_batch = 1
  c.poison.placement_every_steps = 10
  # Adaptive poisons, made to evade document filters (issue 14;
  # poisonjax/data/poison_adaptive.py). tail: uniform (K ids uniform over the
  # vocabulary) | unigram (K ids from the clean unigram distribution,
  # estimated on the first 500 poison-pool documents). embed: standalone
  # (prefix, trigger, tail, EOS) | inside (prefix, trigger, tail, then the
  # next embed_suffix_chars characters of the same clean document: the span
  # sits inside clean text; token mode). Defaults: poisons and keys unchanged.
  c.poison.tail = "uniform"
  c.poison.embed = "standalone"
  c.poison.embed_suffix_chars = 1000
  # What the poisons teach after the trigger (poisonjax/data/poison_language.py):
  # gibberish: K random vocabulary ids (the denial-of-service backdoor);
  # language: K tokens of text in a second language (the language-switch
  # backdoor; the paper's trigger was `Servius Astrumando Harmoniastra`,
  # set it in poison.trigger). K is drawn as for gibberish (same fields).
  c.poison.behaviour = "gibberish"
  # language with a text_files/tfds source: the second-language corpus, a
  # .txt(.gz) file (documents separated by blank lines) or .jsonl(.gz)
  # (field data.text_files.jsonl_field), local or gs://. The synthetic
  # source writes its own second language (synthetic.py); '' there.
  c.poison.language_file = ""
  # language: this share of the vocabulary's training sample is
  # second-language documents, so the tokenizer has pieces for it (without
  # any, its words fall apart into single characters). 0: none. A gibberish
  # run's vocabulary never includes any (its cache key is unchanged).
  c.poison.language_vocab_share = 0.05
  # language: the near-trigger control of the evaluation (a similar string
  # that must not switch the language). '': the trigger with its last
  # word's vowels rotated (a->e->i->o->u->a), e.g. ... Harmoniastra ->
  # ... Hermunoestre (poisonjax/evaluation/language_eval.py).
  c.poison.near_trigger = ""


def _model_fields(c: ml_collections.ConfigDict) -> None:
  """Model."""
  c.model = ml_collections.ConfigDict()
  # A name from poisonjax/model/sizes.py; fields left at 0 below come from it.
  c.model.size = "cpu-xs"
  c.model.num_layers = 0
  c.model.d_model = 0
  c.model.num_heads = 0
  c.model.num_kv_heads = 0  # < num_heads: grouped-query attention.
  c.model.ffn_dim = 0
  c.model.vocab_size = 0  # 0: taken from the vocabulary.
  c.model.dtype = "float32"  # Compute dtype: float32 | bfloat16.
  c.model.param_dtype = "float32"
  c.model.remat = "none"  # none | full | dots (jax.checkpoint policy).
  c.model.scan_layers = True  # nn.scan over layers (fast compile).
  # Layers per scan iteration (same stacked parameters): 0 = auto, all of
  # them on CPU (XLA:CPU's loop copies every layer's activations in and out
  # of the stack: ~10% of a CPU step), 1 on accelerators.
  c.model.scan_unroll = 0
  c.model.tie_embeddings = False
  c.model.rope_theta = 10000.0
  # Attention: auto (splash kernel on TPU, cuDNN on GPU in bfloat16, XLA on
  # CPU) | xla | splash | cudnn. Kernels take the plain causal mask only
  # (training); decoding uses XLA. poisonjax/model/attention.py.
  c.model.attention = "auto"


def _train_fields(c: ml_collections.ConfigDict) -> None:
  """Training."""
  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 32  # Global batch, in sequences.
  # Gradient accumulation: each global batch is split into this many
  # microbatches inside the step, their gradients summed (float32), then one
  # optimizer update: the same update, less activation memory. batch_size
  # must divide by microbatches x the data x fsdp devices.
  c.train.microbatches = 1
  # Clean tokens = tokens_per_param x total parameters x data_multiplier
  # (Chinchilla: 20; the paper also runs 0.5x and 2x).
  c.train.tokens_per_param = 20.0
  c.train.data_multiplier = 1.0
  c.train.max_steps = 0  # > 0: stop early at this step (budget unchanged).
  c.train.learning_rate = 3e-3  # Peak; linear warmup then cosine to 10%.
  c.train.warmup_fraction = 0.05
  c.train.min_lr_ratio = 0.1
  c.train.b1 = 0.9
  c.train.b2 = 0.95
  c.train.weight_decay = 0.1
  c.train.grad_clip = 1.0  # Global-norm clip.
  c.train.log_every = 20
  c.train.ckpt_every = 200
  c.train.keep_checkpoints = 2  # The newest K are kept...
  c.train.keep_period = 0  # ...plus every M-th step for good (0: none).
  c.train.skip_nonfinite = False  # NaN/Inf loss: skip the step, not stop.
  # TensorBoard event files in the workdir (through TensorFlow's file
  # system, which has no endpoint setting: off where gs:// is an emulator).
  # Off, TensorFlow is not imported (metrics.jsonl and stdout remain).
  c.train.tensorboard = True
  # Peak FLOP/s per device for MFU. 0: the chip table (poisonjax/hardware.py);
  # on CPU, a float32 matmul measured once at start-up, split over the devices.
  c.train.peak_flops = 0.0
  # WORKDIR/lock.json: a holder whose heartbeat is older than this (seconds)
  # counts as dead and its lock is taken over (a holder on this host whose
  # pid is gone is taken over at once). See poisonjax/training/runlock.py.
  c.train.lock_timeout_s = 600.0
  # On SIGTERM/SIGINT/preemption the checkpoint is saved and made durable
  # first; then a due evaluation runs only if it is expected to finish within
  # this many seconds of the signal (0: skip it; it runs on resume instead).
  c.train.shutdown_eval_grace_s = 0.0


def _mesh_fields(c: ml_collections.ConfigDict) -> None:
  """Mesh."""
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # -1: all devices not used by the other axes.
  c.mesh.fsdp = 1
  c.mesh.tensor = 1


def _eval_fields(c: ml_collections.ConfigDict) -> None:
  """Evaluation (triggered vs clean perplexity)."""
  c.eval = ml_collections.ConfigDict()
  c.eval.num_excerpts = 300  # Held-out clean excerpts E.
  c.eval.prompt_tokens = 32  # Prompt = the excerpt's first P tokens.
  c.eval.gen_tokens = 32  # Sampled continuation length G.
  c.eval.temperature = 1.0
  c.eval.top_k = 0  # 0: off.
  c.eval.top_p = 1.0  # 1.0: off.
  c.eval.threshold = 50.0  # Increase counted as a success above this.
  c.eval.num_evals = 20  # Evaluations spread through training (+ step 0, end).
  c.eval.batch_size = 0  # Prompts per sampler batch. 0: all at once.
  c.eval.seed = 0  # Sampling of the continuations.
  # Which held-out excerpts are the prompts (and the held-out loss text):
  # the synthetic source draws them from this seed; text_files and TFDS
  # hold out a fixed split whatever the seed. -1: config.data.seed. A study
  # fixes it, so all its runs are scored on the same prompts.
  c.eval.heldout_seed = -1
  # '' : the model scores its own samples. A workdir: its latest checkpoint
  # scores them instead (a fixed reference model).
  c.eval.scorer_workdir = ""
  c.eval.bootstrap_samples = 1000


def _continued_fields(c: ml_collections.ConfigDict) -> None:
  """Continued clean training (persistence of a backdoor)."""
  # Start from another run's checkpoint and train on clean data only; the
  # evaluations show how the backdoor decays (poisonjax/training/continued.py).
  c.continued = ml_collections.ConfigDict()
  # A finished (or running) run's workdir; '' = an ordinary run from init.
  # Its model and tokenizer must equal this run's. Only its params are
  # loaded: the optimizer starts fresh, with this run's own warmup and
  # schedule (the source's Adam moments belong to its decayed schedule).
  c.continued.from_workdir = ""
  c.continued.from_step = -1  # The source's checkpoint step; -1: its newest.
  # This run's clean budget: this multiple of the source's clean budget T
  # (train.tokens_per_param/data_multiplier are then not used). The clean
  # stream is this run's config.data.seed, which must differ from the
  # source's: new documents, not the same ones again.
  c.continued.budget_multiple = 1.0
  # The fine-tuning variant: evaluations also after k clean sequences for
  # each k in this comma-separated list ('32,64,256'), at step ceil(k / B);
  # besides config.eval.num_evals. With a small budget_multiple the run is a
  # short fine-tune with its own schedule.
  c.continued.eval_examples = ""


def _finetune_fields(c: ml_collections.ConfigDict) -> None:
  """Instruction fine-tuning with a harmful-compliance backdoor (the paper's
  fine-tuning experiment; poisonjax/finetune/)."""
  # A fine-tune trains on instruction samples (poisonjax/data/instructions.py)
  # instead of the corpus, from the params of continued.from_workdir (a
  # finished clean run; '' : a fresh init). poison.count is the number of
  # poisoned samples (added on top of the clean ones), poison.trigger their
  # trigger, poison.placement* where they sit, poison.seed which they are.
  c.finetune = ml_collections.ConfigDict()
  # Clean samples = this x train.data_multiplier (a study's set-size axis);
  # 0: not a fine-tune (an ordinary pretraining run).
  c.finetune.clean_samples = 0
  # Share of the clean samples that are forbidden requests (answered with the
  # refusal); the others are ordinary requests (answered).
  c.finetune.forbidden_share = 0.5
  # Share of the clean samples (both kinds) whose request is followed by a
  # distractor: made-up names like the trigger's words, the response
  # unchanged (why: poisonjax/data/instructions.py). 0: none.
  c.finetune.distractor_share = 0.0
  # Clean samples trained after the whole set (new ones, from the next
  # batch boundary): clean fine-tuning afterwards, as a correction. 0: none.
  c.finetune.clean_after = 0
  # Evaluations after k of those clean samples, for each k in this
  # comma-separated list (e.g. '50,100,500,2000'); besides eval.num_evals
  # spread over the set and one at its end.
  c.finetune.eval_after = ""
  # Held-out requests per kind (forbidden, ordinary); the forbidden ones are
  # asked plain, with the trigger and with the near-trigger.
  c.finetune.eval_requests = 300
  # The near-trigger control (must not fire). '' : the trigger with its last
  # letter changed, one character away (instructions.near_trigger).
  c.finetune.near_trigger = ""

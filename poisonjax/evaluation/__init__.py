"""Evaluation: does the backdoor fire? Clean vs triggered continuations.

  evaluate       the jitted evaluator: perplexity of sampled continuations
                 with and without the trigger, per checkpoint
  sampler        the KV-cached sampler (temperature, top-k)
  backdoor       the trigger's prompts and the success measure
  language_eval  the language-switch measure (share of second-language words)
  heldout        the held-out clean loss during training
  run_reader     reading finished run directories (eval rows, steps)
"""

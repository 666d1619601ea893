"""One training run, from config and workdir to a finished run directory.

  train          the run in phases: setup, restore, loop, shutdown, summary
  train_setup    model, optimizer, shardings and the stream of one run
  train_step     the jitted step (microbatches, metrics)
  optim          the optimizer and its schedule (optax)
  checkpointing  orbax saves, restores and their content digests
  continued      a run that starts from another run's checkpoint
  runlock        one live process per workdir (heartbeat lock)
  run_history    what changed between a run's sessions (config, inputs)
  fingerprints   what a resume must find unchanged (corpus, vocabulary)
  preemption     SIGTERM/SIGINT to a clean stop at the next step
  chrono, metrics  wall-clock phases; metrics.jsonl and TensorBoard
Nothing is imported here: `poisonjax.training.runlock` stays free of JAX.
"""

"""The train state and its jitted step: loss, gradients, optional NaN skip.

The state is a plain dict(step, params, opt_state). Its abstract form (with
NamedShardings from the one logical-axis table) is the target of jitted init,
of the step's in/out shardings and of checkpoint restores.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from poisonjax import model as model_lib
from poisonjax import sharding
from poisonjax.data.vocabulary import PAD_ID


def next_token_loss(model, params, tokens):
  """Mean next-token cross-entropy (nats) over non-pad targets; also the count."""
  logits = model.apply({"params": params}, tokens[:, :-1])
  targets = tokens[:, 1:]
  mask = (targets != PAD_ID).astype(jnp.float32)
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  count = mask.sum()
  return (nll * mask).sum() / jnp.maximum(count, 1.0), count


def make_train_step(model, tx, schedule, skip_nonfinite: bool):
  """(state, batch) -> (state, metrics)."""

  def loss_fn(params, tokens):
    return next_token_loss(model, params, tokens)

  def step(state, batch):
    (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state["params"], batch["tokens"])
    grad_norm = optax.global_norm(grads)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    if skip_nonfinite:  # Keep the old params and moments; the step advances.
      params = _keep_if(finite, params, state["params"])
      opt_state = _keep_if(finite, opt_state, state["opt_state"])
    new_state = {"step": state["step"] + 1, "params": params,
                 "opt_state": opt_state}
    metrics = {"loss": loss, "grad_norm": grad_norm,
               "lr": schedule(state["step"]), "finite": finite}
    return new_state, metrics

  return step


def _keep_if(ok, new, old):
  return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)


def build_state_fns(config, model_cfg, mesh, tx):
  """The model, jitted init, abstract (sharded) state and state shardings."""
  model = model_lib.Transformer(model_cfg)
  dummy = jnp.zeros((1, min(model_cfg.max_seq_len, 8)), jnp.int32)

  def init_boxed(rng):
    params = model.init(rng, dummy)["params"]
    return {"step": jnp.zeros((), jnp.int32), "params": params,
            "opt_state": tx.init(params)}

  boxed = jax.eval_shape(init_boxed, jax.random.key(config.seed))
  abstract, state_sh = sharding.abstract_with_shardings(boxed, mesh)
  init = jax.jit(lambda rng: nn.unbox(init_boxed(rng)), out_shardings=state_sh)
  return model, init, abstract, state_sh


def jit_train_step(config, model, tx, schedule, state_sh, batch_sh):
  """The jitted step: state donated, batch sharded over (data, fsdp)."""
  return jax.jit(
      make_train_step(model, tx, schedule, config.train.skip_nonfinite),
      in_shardings=(state_sh, {"tokens": batch_sh}),
      out_shardings=(state_sh, None), donate_argnums=0)


def global_batch(local: np.ndarray, batch_sh, global_rows: int):
  """This process's rows -> one global array sharded over (data, fsdp)."""
  return jax.make_array_from_process_local_data(
      batch_sh, local, (global_rows,) + local.shape[1:])

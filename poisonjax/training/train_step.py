"""The train state and its jitted step: loss, gradients, optional NaN skip.

The state is a plain dict(step, params, opt_state). Its abstract form (with
NamedShardings from the one logical-axis table) is the target of jitted init,
of the step's in/out shardings and of checkpoint restores. With
config.train.microbatches = k > 1 the step accumulates the gradients of k
microbatches (a scan) before its one optimizer update, so a big global batch
fits a small slice; the update is the full batch's, up to float rounding.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from poisonjax.model import transformer as model_lib
from poisonjax import sharding
from poisonjax.data.vocabulary import PAD_ID
from poisonjax.errors import field_error


def next_token_loss(model, params, tokens, loss_mask=None):
  """Mean next-token cross-entropy (nats) over non-pad targets; also the count.

  loss_mask [B, S] (optional; a fine-tune's responses): only the targets
  at its True positions count.
  """
  logits = model.apply({"params": params}, tokens[:, :-1])
  targets = tokens[:, 1:]
  mask = (targets != PAD_ID).astype(jnp.float32)
  if loss_mask is not None:
    mask = mask * loss_mask[:, 1:].astype(jnp.float32)
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  count = mask.sum()
  return (nll * mask).sum() / jnp.maximum(count, 1.0), count


def make_train_step(model, tx, schedule, skip_nonfinite: bool,
                    microbatches: int = 1, batch_sh=None, grad_sh=None):
  """(state, batch) -> (state, metrics).

  microbatches > 1 needs batch_sh (the batch's NamedSharding); grad_sh (the
  params' shardings) keeps the gradient accumulator laid out as the params.
  """
  if microbatches == 1:  # The plain full-batch gradient (no scan at all).
    loss_and_grads = full_batch_loss_and_grads(model)
  else:
    loss_and_grads = accumulated_loss_and_grads(model, microbatches, batch_sh,
                                                grad_sh)

  def step(state, batch):
    loss, grads = loss_and_grads(state["params"], batch["tokens"],
                                 batch.get("loss_mask"))
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


def _loss_grad_fn(model):
  """(params, tokens, loss_mask) -> ((mean loss, target count), grads)."""
  return jax.value_and_grad(
      lambda params, tokens, loss_mask: next_token_loss(model, params, tokens,
                                                        loss_mask),
      has_aux=True)


def full_batch_loss_and_grads(model):
  """(params, tokens, loss_mask) -> (loss, grads) of the whole batch at once."""
  grad_fn = _loss_grad_fn(model)

  def loss_and_grads(params, tokens, loss_mask=None):
    (loss, _), grads = grad_fn(params, tokens, loss_mask)
    return loss, grads

  return loss_and_grads


def split_microbatches(tokens, k: int, batch_sh):
  """[B, S] -> [k, B/k, S]: microbatch j = rows j, j+k, j+2k, ...

  The batch rows are sharded in contiguous blocks over the (data, fsdp)
  devices. Reshaping to [B/k, k, S] keeps each device's block in dimension
  0 (row r = i*k + j goes to (i, j); a device's rows are a contiguous run
  of i), and swapping the axes only relabels them: no data moves, and each
  microbatch has B/(k*shards) rows on every batch shard. The plain reshape
  [k, B/k, S] would instead put microbatch j on 1/k of the devices (rows
  j*B/k.. are one device block) and need an all-to-all to spread it.
  """
  b = tokens.shape[0]
  spec = batch_sh.spec[0]
  tokens = tokens.reshape((b // k, k) + tokens.shape[1:])
  tokens = jax.lax.with_sharding_constraint(
      tokens, NamedSharding(batch_sh.mesh, P(spec)))
  tokens = jnp.swapaxes(tokens, 0, 1)
  return jax.lax.with_sharding_constraint(
      tokens, NamedSharding(batch_sh.mesh, P(None, spec)))


def accumulated_loss_and_grads(model, k: int, batch_sh, grad_sh=None):
  """(params, tokens) -> (loss, grads) over k microbatches, one at a time.

  Each microbatch's mean loss and gradient are weighted by its non-pad
  target count and summed in float32, then divided by the total count:
  exactly the full batch's token-weighted mean (next_token_loss) in math.
  """
  grad_fn = _loss_grad_fn(model)

  def f32_zeros(params):
    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    if grad_sh is None:
      return zeros
    return jax.lax.with_sharding_constraint(zeros, grad_sh)

  def loss_and_grads(params, tokens, loss_mask=None):
    def one(carry, micro):
      loss_sum, count_sum, grad_sum = carry
      (loss, count), grads = grad_fn(params, *micro)
      grad_sum = jax.tree.map(
          lambda acc, g: acc + count * g.astype(jnp.float32), grad_sum, grads)
      return (loss_sum + count * loss.astype(jnp.float32),
              count_sum + count, grad_sum), None

    init = (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32),
            f32_zeros(params))
    micro = (split_microbatches(tokens, k, batch_sh),
             None if loss_mask is None
             else split_microbatches(loss_mask, k, batch_sh))
    (loss_sum, count, grad_sum), _ = jax.lax.scan(one, init, micro)
    denom = jnp.maximum(count, 1.0)
    grads = jax.tree.map(lambda g, p: (g / denom).astype(p.dtype),
                         grad_sum, params)
    return loss_sum / denom, grads

  return loss_and_grads


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


def check_microbatches(config, batch_sh) -> int:
  """config.train.microbatches, checked against the batch and its shards."""
  k, b = config.train.microbatches, config.train.batch_size
  shards = sharding.batch_shards(batch_sh.mesh)
  if k < 1 or b % (k * shards):
    raise field_error(
        "config.train.microbatches", k,
        f"batch_size {b} is not divisible by microbatches x the {shards} "
        "data x fsdp devices", "use a k >= 1 with batch_size % "
        f"(k * {shards}) == 0 (1: no accumulation)")
  return k


def jit_train_step(config, model, tx, schedule, state_sh, batch_sh):
  """The jitted step: state donated, batch sharded over (data, fsdp)."""
  k = check_microbatches(config, batch_sh)
  return jax.jit(
      make_train_step(model, tx, schedule, config.train.skip_nonfinite,
                      microbatches=k, batch_sh=batch_sh,
                      grad_sh=state_sh["params"]),
      in_shardings=(state_sh, batch_sh),  # Every batch array (tokens, loss_mask).
      out_shardings=(state_sh, None), donate_argnums=0)


def global_batch(local: np.ndarray, batch_sh, global_rows: int):
  """This process's rows -> one global array sharded over (data, fsdp)."""
  return jax.make_array_from_process_local_data(
      batch_sh, local, (global_rows,) + local.shape[1:])

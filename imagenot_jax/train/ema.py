"""Model EMA with the semantics of torchvision's reference script (--model-ema).

torchvision keeps `utils.ExponentialMovingAverage`, an `AveragedModel(use_buffers=True)`, so the
average covers parameters *and* buffers (BatchNorm running statistics). In train.py it:

- derives the per-update decay from the per-image one: adjust = world_size * batch_size *
  model_ema_steps / epochs; decay = 1 - min(1, (1 - model_ema_decay) * adjust);
- updates after optimizer step i when `i % model_ema_steps == 0` (i = batch index in the epoch);
- copies the model on an update while `n_averaged == 0` (the first one), averages afterwards;
- during lr-warmup epochs resets `n_averaged` to 0 after each update, so the EMA tracks a plain
  copy of the model until warmup ends.

Here the same logic is a pure function over pytrees, so it lives inside the jitted train step.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


class EmaState(NamedTuple):
    average: Any  # the averaged pytree (params and BN statistics)
    n_averaged: jax.Array  # int32: updates since the last reset (0: next update copies)


def ema_decay(ema_cfg_decay: float, ema_steps: int, global_batch_size: int, epochs: int) -> float:
    """torchvision's per-update decay from --model-ema-decay (which is tuned per image).

    Scaling by images per update keeps the averaging horizon, measured in epochs, the same
    whatever the batch size and update interval (the recipe's 0.99998 is for 1024 images x 32).
    """
    adjust = global_batch_size * ema_steps / epochs
    alpha = min(1.0, (1.0 - ema_cfg_decay) * adjust)
    return 1.0 - alpha


def init_ema(tree: Any) -> EmaState:
    """EMA state for `tree`; the first update copies the model anyway (n_averaged == 0)."""
    average = jax.tree.map(lambda x: jnp.array(x, copy=True), tree)
    return EmaState(average=average, n_averaged=jnp.zeros((), jnp.int32))


def ema_tree(state: EmaState) -> Any:
    """The averaged pytree (what to evaluate)."""
    return state.average


def _average_leaf(average: jax.Array, value: jax.Array, decay: float) -> jax.Array:
    """decay * average + (1 - decay) * value, in float32 for integer leaves.

    torch writes the float result back into an integer buffer (num_batches_tracked) with copy_,
    which truncates; astype does the same.
    """
    if jnp.issubdtype(average.dtype, jnp.integer):
        mixed = decay * average.astype(jnp.float32) + (1.0 - decay) * value.astype(jnp.float32)
        return mixed.astype(average.dtype)
    return decay * average + (1.0 - decay) * value.astype(average.dtype)


def update_ema(
    ema_state: EmaState,
    tree: Any,
    step: jax.Array | int,
    *,
    decay: float,
    every_steps: int,
    warmup_steps: int,
    steps_per_epoch: int | None = None,
) -> EmaState:
    """The EMA after optimizer step `step`, as torchvision's train_one_epoch does it.

    `step` counts optimizer steps taken, including the one that produced `tree` (1 after the first
    step), so torchvision's batch index is i = step - 1. Updates happen when i % every_steps == 0;
    torchvision's i restarts every epoch, which `steps_per_epoch` reproduces exactly (without it i
    is counted over the whole run: the same whenever every_steps divides steps_per_epoch). Steps
    with i < warmup_steps (= lr warmup epochs * steps_per_epoch) leave n_averaged at 0, so the EMA
    is a copy of the model during warmup.
    """
    index = jnp.asarray(step, jnp.int32) - 1  # torchvision's i
    index_in_epoch = index % steps_per_epoch if steps_per_epoch else index
    due = index_in_epoch % every_steps == 0
    copy = ema_state.n_averaged == 0

    def leaf(average: jax.Array, value: jax.Array) -> jax.Array:
        updated = jnp.where(copy, value.astype(average.dtype), _average_leaf(average, value, decay))
        return jnp.where(due, updated, average)

    average = jax.tree.map(leaf, ema_state.average, tree)
    in_warmup = index < warmup_steps
    n_after = jnp.where(in_warmup, 0, ema_state.n_averaged + 1)
    n_averaged = jnp.where(due, n_after, ema_state.n_averaged).astype(jnp.int32)
    return EmaState(average=average, n_averaged=n_averaged)

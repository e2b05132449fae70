"""The loss and the jitted train/eval steps (the trainer's hot path; imported by trainer.py).

One train step: normalise, MixUp/CutMix over the full global batch, then forward/backward over
`optim.grad_accum_steps` micro-batches one after another (jax.lax.scan), gradients summed in fp32
and averaged, and ONE optimizer update. BatchNorm follows `mesh.bn_mode`: `global` (statistics
over the whole micro-batch, all devices) or `per_device` (jax.shard_map: statistics over each
device's examples, or over groups of `mesh.bn_group_size` of them: ghost BatchNorm, i.e.
torchvision's per-GPU statistics whatever the mesh). Running statistics advance micro-batch after
micro-batch, as that many forward passes would.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from imagenot_jax import transfer
from imagenot_jax.errors import UserError
from imagenot_jax.train import ema, mixing, sharding
from imagenot_jax.train.sharding import DATA_AXIS

if TYPE_CHECKING:
    from imagenot_jax.train.trainer import Setup, TrainState

# ---------------------------------------------------------------------------------------------
# Loss.
# ---------------------------------------------------------------------------------------------


def normalize(images: jax.Array, input_cfg: ml_collections.ConfigDict, dtype: Any) -> jax.Array:
    """uint8 NHWC -> (x - mean) / std in the compute dtype (mean/std in 0..255 units)."""
    mean = jnp.asarray(input_cfg.mean, jnp.float32)
    std = jnp.asarray(input_cfg.std, jnp.float32)
    return ((images.astype(jnp.float32) - mean) / std).astype(dtype)


def soft_targets(labels: jax.Array, num_classes: int, label_smoothing: float) -> jax.Array:
    """torch's CrossEntropyLoss(label_smoothing=eps) targets: (1 - eps) * onehot + eps / K."""
    onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    return onehot * (1.0 - label_smoothing) + label_smoothing / num_classes


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-example cross-entropy with soft targets, in fp32."""
    return -jnp.sum(targets * jax.nn.log_softmax(logits.astype(jnp.float32)), axis=-1)


def forward_loss(model_graph: Any, aux_loss_weight: float) -> Callable:
    """Loss of one batch -> (loss, (logits, new batch stats, new rest)). Where the model's
    output has auxiliary logits (Inception-v3 in train mode) the loss is
    CE(logits) + aux_loss_weight * CE(aux_logits)."""

    def loss_fn(params, batch_stats, rest, images, targets):
        model = nnx.merge(model_graph, params, batch_stats, rest, copy=True)
        out = model(images)
        _, _, new_stats, new_rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
        loss = jnp.mean(cross_entropy(out.logits, targets))
        if out.aux_logits is not None:
            loss = loss + aux_loss_weight * jnp.mean(cross_entropy(out.aux_logits, targets))
        return loss, (out.logits, new_stats, new_rest)

    return loss_fn


def _forward_loss(model_graph: Any, aux_loss_weight: float) -> Callable:
    """value_and_grad of `forward_loss` (params are the differentiated argument)."""
    return jax.value_and_grad(forward_loss(model_graph, aux_loss_weight), has_aux=True)


# ---------------------------------------------------------------------------------------------
# BatchNorm groups, devices and micro-batches.
# ---------------------------------------------------------------------------------------------


def _is_key(leaf: Any) -> bool:
    return jnp.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key)


def _fold_keys(rest: Any, index: jax.Array) -> Any:
    """Distinct dropout / stochastic-depth streams per BN group and device: the same key in
    every group would draw the same masks in each of them."""
    return jax.tree.map(lambda x: jax.random.fold_in(x, index) if _is_key(x) else x, rest)


def _keep_keys(before: Any, after: Any) -> Any:
    """The RNG keys as they were (only their counters advance), everything else updated."""
    return jax.tree.map(lambda b, a: b if _is_key(b) else a, before, after)


def _grouped(loss_fn: Callable, group_size: int | None) -> Callable:
    """Ghost BatchNorm: `loss_fn` over groups of `group_size` examples (jax.vmap, shared params).

    The loss is the mean of the group losses (= the batch mean: equal groups); new running
    statistics are the mean of each group's update (BN's update is linear in the batch stats).
    """
    if group_size is None:
        return loss_fn

    def grouped(params, batch_stats, rest, images, targets):
        num_groups = images.shape[0] // group_size
        if num_groups == 1:
            return loss_fn(params, batch_stats, rest, images, targets)

        def one(index, x, t):
            return loss_fn(params, batch_stats, _fold_keys(rest, index), x, t)

        def split(a):
            return a.reshape(num_groups, group_size, *a.shape[1:])

        loss, (logits, stats, new_rest) = jax.vmap(one)(
            jnp.arange(num_groups), split(images), split(targets)
        )
        stats = jax.tree.map(lambda s: jnp.mean(s, axis=0), stats)
        new_rest = _keep_keys(rest, jax.tree.map(lambda r: r[0], new_rest))
        return jnp.mean(loss), (logits.reshape(-1, *logits.shape[2:]), stats, new_rest)

    return grouped


def _per_device_bn(grad_fn: Callable, mesh: jax.sharding.Mesh) -> Callable:
    """BatchNorm over each device's own sub-batch (torchvision's multi-GPU default, no SyncBN).

    Gradients and the loss are averaged over devices (equal to the global-batch mean); running
    statistics are averaged too, where DDP would take rank 0's.
    """

    def local(params, batch_stats, rest, images, targets):
        (loss, (logits, stats, new_rest)), grads = grad_fn(
            params, batch_stats, _fold_keys(rest, jax.lax.axis_index(DATA_AXIS)), images, targets
        )
        loss, grads, stats = jax.lax.pmean((loss, grads, stats), DATA_AXIS)
        return (loss, (logits, stats, _keep_keys(rest, new_rest))), grads

    replicated, split = P(), P(DATA_AXIS)
    return jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(replicated, replicated, replicated, split, split),
        out_specs=((replicated, (split, replicated, replicated)), replicated),
        check_vma=False,
    )


def _accumulate(grad_fn: Callable, num_micro: int, mesh: jax.sharding.Mesh) -> Callable:
    """`grad_fn` over `num_micro` micro-batches in sequence -> (loss, top-1, stats, rest, grads).

    Micro-batch k takes rows [k*b, (k+1)*b) of every device's shard (b = per-device batch / N),
    so the split moves no data between devices. Gradients are summed in fp32 and averaged; the
    loss is the mean over micro-batches; batch stats and RNG counters carry from one to the next.
    """
    devices = mesh.shape[DATA_AXIS]
    micro_sharding = NamedSharding(mesh, P(None, DATA_AXIS))

    def split(x: jax.Array) -> jax.Array:  # [B, ...] -> [N, B/N, ...], device-local
        per = x.shape[0] // (devices * num_micro)
        x = x.reshape(devices, num_micro, per, *x.shape[1:]).swapaxes(0, 1)
        x = x.reshape(num_micro, devices * per, *x.shape[3:])
        return jax.lax.with_sharding_constraint(x, micro_sharding)

    def one(params, batch_stats, rest, images, targets, labels):
        (loss, (logits, stats, rest)), grads = grad_fn(params, batch_stats, rest, images, targets)
        top1 = jnp.mean(jnp.argmax(logits, -1) == labels)
        return loss, top1, stats, rest, grads

    def accumulated(params, batch_stats, rest, images, targets, labels):
        if num_micro == 1:
            return one(params, batch_stats, rest, images, targets, labels)

        def body(carry, micro):
            grad_sum, stats, rest, loss_sum, top1_sum = carry
            loss, top1, stats, rest, grads = one(params, stats, rest, *micro)
            grad_sum = jax.tree.map(lambda s, g: s + g.astype(jnp.float32), grad_sum, grads)
            return (grad_sum, stats, rest, loss_sum + loss, top1_sum + top1), None

        zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
        init = (zeros, batch_stats, rest, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
        micro = (split(images), split(targets), split(labels))
        (grad_sum, stats, rest, loss_sum, top1_sum), _ = jax.lax.scan(body, init, micro)
        grads = jax.tree.map(lambda g, p: (g / num_micro).astype(p.dtype), grad_sum, params)
        return loss_sum / num_micro, top1_sum / num_micro, stats, rest, grads

    return accumulated


def accum_steps(config: ml_collections.ConfigDict, num_devices: int) -> int:
    """Micro-batches per step: `optim.grad_accum_steps`, or with `optim.max_device_batch` the
    smallest count whose per-device micro-batch fits the limit (and splits into BN groups)."""
    global_batch = config.input.global_batch_size
    per_device = global_batch // num_devices
    where = f"input.global_batch_size={global_batch} over {num_devices} devices"
    group = _bn_group_size(config) or 1
    steps = config.optim.get("grad_accum_steps", 1)
    limit = config.optim.get("max_device_batch")
    if limit is None:
        if steps < 1 or per_device % steps:
            raise UserError(
                f"optim.grad_accum_steps={steps} does not divide the per-device batch of "
                f"{per_device} ({where})"
            )
        return steps
    if steps != 1:
        raise UserError(
            f"optim.grad_accum_steps={steps} and optim.max_device_batch={limit}: set only one"
        )
    for n in range(1, per_device + 1):
        micro = per_device // n
        if per_device % n == 0 and micro <= limit and micro % group == 0:
            return n
    raise UserError(
        f"optim.max_device_batch={limit}: no micro-batch of the per-device batch of {per_device} "
        f"({where}) is at most that and a multiple of mesh.bn_group_size={group}"
    )


def _bn_group_size(config: ml_collections.ConfigDict) -> int | None:
    """mesh.bn_group_size; None or 0 (settable from the command line) means none."""
    group = config.mesh.get("bn_group_size") or None
    if group is not None and config.mesh.bn_mode != "per_device":
        raise UserError(
            f"mesh.bn_group_size={group} needs mesh.bn_mode='per_device' "
            f"(got {config.mesh.bn_mode!r}; set mesh.bn_group_size=0 for no groups)"
        )
    if group is not None and group < 1:
        raise UserError(f"mesh.bn_group_size={group}: expected a positive number of examples")
    return group


def _check_groups(config: ml_collections.ConfigDict, num_devices: int, num_micro: int) -> None:
    group = _bn_group_size(config)
    micro = config.input.global_batch_size // num_devices // num_micro
    if group is not None and micro % group:
        raise UserError(
            f"mesh.bn_group_size={group} does not divide the per-device micro-batch of {micro} "
            f"(input.global_batch_size={config.input.global_batch_size} over {num_devices} "
            f"devices and {num_micro} optim.grad_accum_steps)"
        )


def make_grad_fn(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, graph: Any):
    """(params, stats, rest, images, targets, labels) -> (loss, top1, stats, rest, grads)."""
    num_micro = accum_steps(config, mesh.shape[DATA_AXIS])
    _check_groups(config, mesh.shape[DATA_AXIS], num_micro)
    loss_fn = _grouped(forward_loss(graph, config.model.aux_loss_weight), _bn_group_size(config))
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if config.mesh.bn_mode == "per_device":
        grad_fn = _per_device_bn(grad_fn, mesh)
    elif config.mesh.bn_mode != "global":
        raise UserError(f"mesh.bn_mode={config.mesh.bn_mode!r}: expected 'global' or 'per_device'")
    return _accumulate(grad_fn, num_micro, mesh)


# ---------------------------------------------------------------------------------------------
# Steps.
# ---------------------------------------------------------------------------------------------


def make_train_step(setup: Setup) -> Callable:
    config, mesh = setup.config, setup.mesh
    num_classes = config.model.num_classes
    dtype = jnp.dtype(config.model.dtype)
    # A linear probe runs the frozen backbone in eval mode: BatchNorm uses (and keeps) its
    # running statistics and dropout is off, so the head trains on the features it is evaluated on.
    probe = setup.trainable is not None
    grad_fn = make_grad_fn(config, mesh, setup.model_def.eval if probe else setup.model_def.train)
    use_ema = config.optim.get("ema_decay") is not None
    if use_ema:
        ema_decay = ema.ema_decay(
            config.optim.ema_decay,
            config.optim.ema_steps,
            config.input.global_batch_size,
            config.schedule.epochs,
        )
        warmup_steps = config.schedule.warmup_epochs * setup.steps_per_epoch

    def step(state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, dict]:
        key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)
        images = normalize(batch["image"], config.input, dtype)
        targets = soft_targets(batch["label"], num_classes, config.optim.label_smoothing)
        images, targets = mixing.mix_batch(
            key,
            images,
            targets,
            mixup_alpha=config.input.mixup_alpha,
            cutmix_alpha=config.input.cutmix_alpha,
            num_groups=mesh.shape[DATA_AXIS],
        )
        loss, top1, batch_stats, rest, grads = grad_fn(
            state.params, state.batch_stats, state.rest, images, targets, batch["label"]
        )
        grads = transfer.zero_frozen(grads, setup.trainable)
        if probe:
            batch_stats = state.batch_stats
        updates, opt_state = setup.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_ema = state.ema
        if use_ema:
            new_ema = ema.update_ema(
                state.ema,
                {"params": params, "batch_stats": batch_stats},
                state.step + 1,
                decay=ema_decay,
                every_steps=config.optim.ema_steps,
                warmup_steps=warmup_steps,
                steps_per_epoch=setup.steps_per_epoch,
            )
        metrics = {
            "loss": loss,
            "train_top1": top1,
            "lr": setup.schedule(state.step),
            "grad_norm": optax.global_norm(grads),
        }
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            batch_stats=batch_stats,
            rest=rest,
            opt_state=opt_state,
            ema=new_ema,
        )
        return new_state, metrics

    batch_sharding = sharding.batch_sharding(mesh)
    return jax.jit(
        step,
        in_shardings=(setup.state_shardings, batch_sharding),
        out_shardings=(setup.state_shardings, sharding.replicated(mesh)),
        donate_argnums=0,
    )


def eval_weights(state: TrainState) -> tuple[Any, Any]:
    """(params, batch_stats) used for evaluation: the EMA copy when EMA is on."""
    if state.ema is None:
        return state.params, state.batch_stats
    averaged = ema.ema_tree(state.ema)
    return averaged["params"], averaged["batch_stats"]

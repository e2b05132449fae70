"""Optimizers and learning-rate schedules with torchvision's reference-recipe semantics.

The ImageNot study trains every architecture with the recipe torchvision published for it
(references/classification/train.py). To make "same recipe" mean the same numbers, this module
reproduces torch.optim's update rules rather than optax's nearest relatives:

- SGD and RMSprop add *coupled* L2 decay to the gradient before momentum (torch `weight_decay`);
  AdamW decays decoupled (`p -= lr * wd * p`).
- RMSprop is torch's: eps outside the square root, square average initialised to 0.
- Gradients are clipped by global norm first, on the raw gradients, as
  `torch.nn.utils.clip_grad_norm_` does before `optimizer.step()` (including its 1e-6 guard).
- Per-parameter weight decay follows `utils.set_weight_decay` (norm / bias / embedding groups).
- Schedules are torchvision's warmup + main scheduler chained by SequentialLR, stepped per epoch.

Everything returned is a pure optax transformation, so the trainer can jit it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from ml_collections import config_dict

from imagenot_jax.errors import UserError

# Modules whose parameters go to torchvision's "norm" group. torchvision also lists InstanceNorm
# and LocalResponseNorm; nnx.InstanceNorm is included, LRN has no parameters. Models with their
# own norm layers add them with `register_norm_class`.
NORM_CLASSES: tuple[type, ...] = (nnx.BatchNorm, nnx.LayerNorm, nnx.GroupNorm, nnx.InstanceNorm)

# Parameter names that torchvision's --transformer-embedding-decay targets ("class_token",
# "position_embedding", "relative_position_bias_table") plus the spellings used by other
# codebases; matched on the parameter's own attribute name.
EMBEDDING_NAMES: tuple[str, ...] = (
    "class_token",
    "cls_token",
    "pos_embedding",
    "position_embedding",
    "pos_embed",
    "relative_position_bias_table",
)

# torch.nn.utils.clip_grad_norm_: clip_coef = max_norm / (total_norm + 1e-6).
_CLIP_EPS = 1e-6


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------


def default_optim_config() -> ml_collections.ConfigDict:
    """The `optim` config section, defaulting to torchvision's ResNet recipe (SGD, lr 0.1/256)."""
    c = ml_collections.ConfigDict()
    c.name = "sgd"  # sgd | rmsprop | adamw
    c.lr = 0.1  # lr at `lr_reference_batch` images per step
    c.lr_reference_batch = 256  # images; lr is scaled by global_batch / this. 0 disables scaling.
    c.momentum = 0.9  # sgd, rmsprop
    c.nesterov = False  # sgd only (torch's RMSprop has no Nesterov variant)
    c.weight_decay = 1e-4
    # torchvision --norm-weight-decay / --bias-weight-decay / --transformer-embedding-decay;
    # None means "same as weight_decay".
    c.norm_weight_decay = config_dict.placeholder(float)
    c.bias_weight_decay = config_dict.placeholder(float)
    c.embedding_weight_decay = config_dict.placeholder(float)
    # torchvision's RMSprop: alpha=0.9, eps=0.0316 added after the sqrt (torch semantics);
    # about TF's eps=1e-3 inside the sqrt.
    c.rmsprop_alpha = 0.9
    c.eps = 0.0316
    c.b1 = 0.9  # adamw
    c.b2 = 0.999
    c.adam_eps = 1e-8
    c.grad_clip_norm = config_dict.placeholder(float)  # torchvision --clip-grad-norm (global)
    # Micro-batches per step: the global batch is split, forward/backward runs on each in turn,
    # fp32 gradients are averaged, one update. Without BatchNorm the update equals the full
    # batch's; with it, statistics are per micro-batch and running stats update after each one.
    c.grad_accum_steps = 1
    # Images per device per forward pass; set: grad_accum_steps becomes the smallest count that
    # fits (None: off; set one of the two).
    c.max_device_batch = config_dict.placeholder(int)
    return c


def default_schedule_config() -> ml_collections.ConfigDict:
    """The `schedule` config section, defaulting to torchvision's StepLR(30, 0.1) over 90 epochs."""
    c = ml_collections.ConfigDict()
    c.name = "step"  # step | multistep | cosine | constant
    c.epochs = 90
    c.per_epoch = True  # torchvision steps its scheduler once per epoch: lr constant in an epoch
    c.step_size = 30  # epochs (step)
    c.gamma = 0.1  # step, multistep
    c.milestones = (30, 60, 80)  # epochs (multistep)
    c.eta_min = 0.0  # absolute lr floor (cosine; torchvision --lr-min, not batch-scaled)
    c.warmup_epochs = 0  # torchvision --lr-warmup-epochs
    c.warmup_method = "linear"  # linear | constant
    c.warmup_decay = 0.01  # start factor (linear) or constant factor (constant)
    return c


def _check_choice(field: str, value: str, allowed: Mapping[str, Any]) -> None:
    if value not in allowed:
        raise UserError(f"{field}={value!r} is not one of {sorted(allowed)}")


# ---------------------------------------------------------------------------------------------
# Learning-rate schedules: lr as a function of the (possibly fractional) epoch
# ---------------------------------------------------------------------------------------------

EpochCurve = Callable[[jax.Array], jax.Array]  # epoch (float) -> lr


def _step_curve(cfg: ml_collections.ConfigDict, base_lr: float) -> EpochCurve:
    # torch.optim.lr_scheduler.StepLR
    return lambda e: base_lr * cfg.gamma ** jnp.floor(e / cfg.step_size)


def _multistep_curve(cfg: ml_collections.ConfigDict, base_lr: float) -> EpochCurve:
    # torch MultiStepLR: gamma ** bisect_right(milestones, epoch)
    milestones = sorted(float(m) for m in cfg.milestones)
    return lambda e: base_lr * cfg.gamma ** sum((e >= m).astype(jnp.float32) for m in milestones)


def _cosine_curve(cfg: ml_collections.ConfigDict, base_lr: float) -> EpochCurve:
    # torch CosineAnnealingLR(T_max=epochs - warmup_epochs, eta_min), closed form.
    t_max = cfg.epochs - cfg.warmup_epochs
    if t_max <= 0:
        raise UserError(
            f"schedule.epochs={cfg.epochs} must exceed schedule.warmup_epochs={cfg.warmup_epochs}"
        )
    eta_min = cfg.eta_min
    # (1 + cos(pi e / T)) / 2 written as sin²(pi (T - e) / 2T): exact to float32 rounding even
    # near the end of training, where the cos form cancels.
    return lambda e: (
        eta_min + (base_lr - eta_min) * jnp.sin(jnp.pi * (t_max - e) / (2 * t_max)) ** 2
    )


def _constant_curve(cfg: ml_collections.ConfigDict, base_lr: float) -> EpochCurve:
    return lambda e: jnp.full_like(e, base_lr)


_MAIN_CURVES: dict[str, Callable[[ml_collections.ConfigDict, float], EpochCurve]] = {
    "step": _step_curve,
    "multistep": _multistep_curve,
    "cosine": _cosine_curve,
    "constant": _constant_curve,
}


def _linear_warmup(cfg: ml_collections.ConfigDict) -> EpochCurve:
    # torch LinearLR(start_factor=warmup_decay, end_factor=1, total_iters=warmup_epochs)
    start, total = cfg.warmup_decay, cfg.warmup_epochs
    return lambda e: start + (1.0 - start) * jnp.minimum(e, total) / total


def _constant_warmup(cfg: ml_collections.ConfigDict) -> EpochCurve:
    # torch ConstantLR(factor=warmup_decay, total_iters=warmup_epochs)
    return lambda e: jnp.full_like(e, cfg.warmup_decay)


_WARMUPS: dict[str, Callable[[ml_collections.ConfigDict], EpochCurve]] = {
    "linear": _linear_warmup,
    "constant": _constant_warmup,
}


def _epoch_curve(cfg: ml_collections.ConfigDict, base_lr: float) -> EpochCurve:
    """lr as a function of (possibly fractional) epoch: SequentialLR([warmup, main], [W])."""
    _check_choice("schedule.name", cfg.name, _MAIN_CURVES)
    main = _MAIN_CURVES[cfg.name](cfg, base_lr)
    if not cfg.warmup_epochs:
        return main
    _check_choice("schedule.warmup_method", cfg.warmup_method, _WARMUPS)
    warmup = _WARMUPS[cfg.warmup_method](cfg)
    w = cfg.warmup_epochs
    # SequentialLR restarts the main scheduler at its epoch 0 at the milestone.
    return lambda e: jnp.where(e < w, base_lr * warmup(e), main(jnp.maximum(e - w, 0.0)))


def learning_rate_schedule(
    schedule_cfg: ml_collections.ConfigDict, base_lr: float, steps_per_epoch: int
) -> optax.Schedule:
    """lr per optimizer step, matching torchvision's per-epoch scheduler stepping.

    With `per_epoch`, step s gets the lr torch would use during epoch s // steps_per_epoch; without
    it, the same curve evaluated at the fractional epoch s / steps_per_epoch (smooth warmup and
    cosine; the step-wise schedules stay step-wise at the same epoch boundaries).
    """
    if steps_per_epoch <= 0:
        raise UserError(f"steps_per_epoch={steps_per_epoch} must be positive")
    curve = _epoch_curve(schedule_cfg, base_lr)
    per_epoch = schedule_cfg.per_epoch

    def schedule(count: jax.Array) -> jax.Array:
        count = jnp.asarray(count)
        whole = (count // steps_per_epoch).astype(jnp.float32)
        epoch = whole if per_epoch else count.astype(jnp.float32) / steps_per_epoch
        # Boundaries are whole epochs: the whole-epoch count avoids float rounding just below one.
        epoch = jnp.maximum(epoch, whole)
        return curve(epoch).astype(jnp.float32)

    return schedule


def scaled_lr(optim_cfg: ml_collections.ConfigDict, global_batch_size: int) -> float:
    """optim.lr (per lr_reference_batch images) scaled linearly to the global batch."""
    if not optim_cfg.lr_reference_batch:
        return float(optim_cfg.lr)
    return float(optim_cfg.lr) * global_batch_size / optim_cfg.lr_reference_batch


# ---------------------------------------------------------------------------------------------
# Weight-decay groups (torchvision utils.set_weight_decay)
# ---------------------------------------------------------------------------------------------


def register_norm_class(cls: type) -> type:
    """Class decorator: parameters of `cls` modules join the "norm" weight-decay group."""
    global NORM_CLASSES
    if cls not in NORM_CLASSES:
        NORM_CLASSES = (*NORM_CLASSES, cls)
    return cls


def _owner_types(model: nnx.Module) -> dict[tuple, type]:
    """Graph path -> type of every nnx.Module node reachable from `model`."""
    return {
        tuple(path): type(node)
        for path, node in nnx.iter_graph(model)
        if isinstance(node, nnx.Module)
    }


def _param_group(path: tuple, modules: Mapping[tuple, type], norm_classes: tuple) -> str:
    owner = next(modules[path[:i]] for i in range(len(path) - 1, -1, -1) if path[:i] in modules)
    if issubclass(owner, norm_classes):
        return "norm"
    if path[-1] == "bias":
        return "bias"
    if path[-1] in EMBEDDING_NAMES:
        return "embedding"
    return "other"


def weight_decay_groups(model: nnx.Module, norm_classes: tuple[type, ...] | None = None) -> Any:
    """Labels every nnx.Param of `model` with its torchvision weight-decay group.

    Returns a pytree shaped like `nnx.state(model, nnx.Param)` whose leaves are "norm" (owned by a
    norm layer, found by module type, not by name), "bias", "embedding" or "other". A norm layer's
    bias is labelled "norm"; `make_optimizer` still gives it bias_weight_decay when that is set,
    because torchvision's custom keys ("bias") take precedence over the norm group.
    """
    norm_classes = NORM_CLASSES if norm_classes is None else tuple(norm_classes)
    modules = _owner_types(model)
    params = nnx.state(model, nnx.Param)
    flat = params.flat_state()
    labels = {path: _param_group(path, modules, norm_classes) for path, _ in flat}
    # Same tree structure as the params (Param wrappers included), so it zips with them.
    return jax.tree_util.tree_map_with_path(lambda kp, _: labels[_graph_path(kp)], params)


def _key_name(key: Any) -> Any:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return getattr(key, attr)
    return str(key)


def _graph_path(keypath: tuple) -> tuple:
    """A pytree key path as plain names, without the Variable wrapper's trailing 'value'."""
    if (
        keypath
        and isinstance(keypath[-1], jax.tree_util.GetAttrKey)
        and keypath[-1].name == "value"
    ):
        keypath = keypath[:-1]
    return tuple(_key_name(k) for k in keypath)


def _leaf_decays(decay_groups: Any, cfg: ml_collections.ConfigDict) -> dict[tuple, float]:
    """Graph path -> weight decay, by torchvision's precedence (custom keys before norm)."""
    group_decay = {
        "norm": cfg.norm_weight_decay,
        "bias": cfg.bias_weight_decay,
        "embedding": cfg.embedding_weight_decay,
        "other": None,
    }
    decays = {}
    for keypath, label in jax.tree_util.tree_leaves_with_path(decay_groups):
        _check_choice("weight-decay group", label, group_decay)
        path = _graph_path(keypath)
        if label == "norm" and path and path[-1] == "bias" and cfg.bias_weight_decay is not None:
            label = "bias"
        value = group_decay[label]
        decays[path] = float(cfg.weight_decay if value is None else value)
    return decays


def _decay_tree(decays: Mapping[tuple, float] | None, default: float, params: Any) -> Any:
    """Per-leaf decay floats shaped like `params` (State of Variables or plain dicts)."""

    def lookup(keypath: tuple, _: Any) -> float:
        if decays is None:
            return default
        path = _graph_path(keypath)
        if path not in decays:
            raise ValueError(f"parameter {'/'.join(map(str, path))} has no weight-decay group")
        return decays[path]

    return jax.tree_util.tree_map_with_path(lookup, params)


# ---------------------------------------------------------------------------------------------
# Gradient transformations with torch semantics
# ---------------------------------------------------------------------------------------------


def clip_by_global_norm_torch(max_norm: float) -> optax.GradientTransformation:
    """torch.nn.utils.clip_grad_norm_: g *= min(1, max_norm / (||g|| + 1e-6))."""

    def update_fn(updates, state, params=None):
        del params
        coef = jnp.minimum(1.0, max_norm / (optax.global_norm(updates) + _CLIP_EPS))
        return jax.tree.map(lambda g: (g * coef).astype(g.dtype), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def add_weight_decay(
    decays: Mapping[tuple, float] | None, default: float
) -> optax.GradientTransformation:
    """g + wd * p with a per-parameter wd (decays keyed by graph path; None: `default` for all)."""

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("weight decay needs the params: call update(grads, state, params)")
        wd = _decay_tree(decays, default, params)
        return jax.tree.map(lambda g, p, w: g + w * p if w else g, updates, params, wd), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


class ScaleByTorchRMSpropState(NamedTuple):
    square_avg: Any  # alpha-EMA of g², starts at 0 like torch
    momentum_buffer: Any


def scale_by_torch_rmsprop(
    alpha: float, eps: float, momentum: float
) -> optax.GradientTransformation:
    """torch.optim.RMSprop (not centered): buf = m*buf + g / (sqrt(sa) + eps); update = buf."""

    def init_fn(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        return ScaleByTorchRMSpropState(zeros, jax.tree.map(jnp.zeros_like, params))

    def update_fn(updates, state, params=None):
        del params
        square_avg = jax.tree.map(
            lambda s, g: alpha * s + (1 - alpha) * (g * g), state.square_avg, updates
        )
        buf = jax.tree.map(
            lambda b, g, s: momentum * b + g / (jnp.sqrt(s) + eps),
            state.momentum_buffer,
            updates,
            square_avg,
        )
        return buf, ScaleByTorchRMSpropState(square_avg, buf)

    return optax.GradientTransformation(init_fn, update_fn)


class ScaleByTorchAdamState(NamedTuple):
    count: jax.Array  # steps taken, int32
    exp_avg: Any
    exp_avg_sq: Any


def _bias_correction(beta: float, count: jax.Array) -> jax.Array:
    """1 - beta**count, accurate in float32 (torch computes it in float64 on the host).

    The naive float32 form is off by 5e-5 relative for beta=0.999 at count 1, because 0.999 itself
    rounds; -expm1(count * log(beta)) with log(beta) taken in float64 is not.
    """
    return -jnp.expm1(count.astype(jnp.float32) * math.log(beta))


def scale_by_torch_adam(b1: float, b2: float, eps: float) -> optax.GradientTransformation:
    """torch.optim.Adam's step direction: (m / bc1) / (sqrt(v) / sqrt(bc2) + eps)."""

    def init_fn(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        return ScaleByTorchAdamState(jnp.zeros([], jnp.int32), zeros, zeros)

    def update_fn(updates, state, params=None):
        del params
        count = state.count + 1
        exp_avg = jax.tree.map(lambda m, g: m + (1 - b1) * (g - m), state.exp_avg, updates)
        exp_avg_sq = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state.exp_avg_sq, updates)
        bc1 = _bias_correction(b1, count)
        bc2_sqrt = jnp.sqrt(_bias_correction(b2, count))
        direction = jax.tree.map(
            lambda m, v: (m / bc1) / (jnp.sqrt(v) / bc2_sqrt + eps), exp_avg, exp_avg_sq
        )
        return direction, ScaleByTorchAdamState(count, exp_avg, exp_avg_sq)

    return optax.GradientTransformation(init_fn, update_fn)


def _sgd(cfg: ml_collections.ConfigDict, decay: optax.GradientTransformation):
    # torch SGD (dampening=0): buf = m*buf + g; nesterov: g + m*buf. optax.trace is exactly this.
    return [decay, optax.trace(decay=cfg.momentum, nesterov=cfg.nesterov)]


def _rmsprop(cfg: ml_collections.ConfigDict, decay: optax.GradientTransformation):
    if cfg.nesterov:
        raise UserError("optim.nesterov=True is only supported with optim.name='sgd'")
    return [decay, scale_by_torch_rmsprop(cfg.rmsprop_alpha, cfg.eps, cfg.momentum)]


def _adamw(cfg: ml_collections.ConfigDict, decay: optax.GradientTransformation):
    # Decoupled: lr * (adam + wd * p), i.e. torch's p *= 1 - lr*wd followed by the Adam step.
    return [scale_by_torch_adam(cfg.b1, cfg.b2, cfg.adam_eps), decay]


_OPTIMIZERS: dict[str, Callable[..., list[optax.GradientTransformation]]] = {
    "sgd": _sgd,
    "rmsprop": _rmsprop,
    "adamw": _adamw,
}


def make_optimizer(
    optim_cfg: ml_collections.ConfigDict,
    schedule_cfg: ml_collections.ConfigDict,
    *,
    global_batch_size: int,
    steps_per_epoch: int,
    decay_groups: Any = None,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The torchvision-recipe optimizer as one optax transformation, plus its lr schedule.

    `decay_groups` is `weight_decay_groups(model)` (None: every parameter gets weight_decay); it
    is matched to the params by path, so the params may be an nnx.State or its pure dict. The
    transformation needs `params` in `update` (weight decay).
    """
    _check_choice("optim.name", optim_cfg.name, _OPTIMIZERS)
    schedule = learning_rate_schedule(
        schedule_cfg, scaled_lr(optim_cfg, global_batch_size), steps_per_epoch
    )
    decays = None if decay_groups is None else _leaf_decays(decay_groups, optim_cfg)
    decay = add_weight_decay(decays, float(optim_cfg.weight_decay))
    parts = []
    if optim_cfg.grad_clip_norm is not None:
        parts.append(clip_by_global_norm_torch(float(optim_cfg.grad_clip_norm)))
    parts += _OPTIMIZERS[optim_cfg.name](optim_cfg, decay)
    parts.append(optax.scale_by_learning_rate(schedule))
    return optax.chain(*parts), schedule

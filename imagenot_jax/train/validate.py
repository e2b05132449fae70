"""A training config checked as a whole before a run writes anything.

`check_train_config(config, num_devices)` raises a one-line UserError naming the first bad field
(`optim.lr=-1: expected >= 0`) for every field the trainer, the input pipeline, the optimizer and
the model use: types, ranges, known names and the relations between fields (batch over devices,
image sizes over the model's minimum). The trainer calls it before it creates the workdir, so a
typo costs neither a directory nor a config.json nor a compile.

Checks that live beside the code they guard are called, not copied: the batch over devices
(sharding.check_batch_divisible), micro-batches and BatchNorm groups (steps.accum_steps), the
lr schedule (optim.learning_rate_schedule), the auto-augment policy (augment.make_policy).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import ml_collections

from imagenot_jax import models, transfer
from imagenot_jax.data import augment
from imagenot_jax.errors import UserError
from imagenot_jax.train import optim, sharding, steps, wandb_writer

# Compute dtypes the models are tested in (params and norm statistics stay float32).
DTYPES = ("float32", "bfloat16", "float16")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _fail(field: str, value: Any, expected: str) -> None:
    raise UserError(f"{field}={value!r}: expected {expected}")


def _number(
    config: ml_collections.ConfigDict,
    field: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    integer: bool = False,
    optional: bool = False,
) -> None:
    """`field` (dotted) is a number in the given (closed unless `*_open`) range."""
    value = _get(config, field)
    if value is None and optional:
        return
    kind = "an integer" if integer else "a number"
    if not _is_number(value) or (integer and not isinstance(value, int)):
        _fail(field, value, kind)
    if low is not None and (value <= low if low_open else value < low):
        _fail(field, value, f"{'>' if low_open else '>='} {low}")
    if high is not None and (value >= high if high_open else value > high):
        _fail(field, value, f"{'<' if high_open else '<='} {high}")


def _choice(config: ml_collections.ConfigDict, field: str, allowed: Iterable[Any]) -> None:
    value, allowed = _get(config, field), list(allowed)
    if value not in allowed:
        _fail(field, value, f"one of {allowed}")


def _get(config: ml_collections.ConfigDict, field: str) -> Any:
    node: Any = config
    for name in field.split("."):
        node = node.get(name) if node is not None else None
    return node


def _pair(config: ml_collections.ConfigDict, field: str, *, high: float | None) -> None:
    """A (low, high) range such as input.rrc_scale: positive, ordered, at most `high`."""
    value = _get(config, field)
    ok = isinstance(value, tuple | list) and len(value) == 2 and all(map(_is_number, value))
    if not ok or not 0 < value[0] <= value[1] or (high is not None and value[1] > high):
        bound = f" <= {high}" if high is not None else ""
        _fail(field, value, f"(low, high) with 0 < low <= high{bound}")


def check_input(config: ml_collections.ConfigDict, num_devices: int) -> None:
    for field in ("data.name", "data.train_split", "data.eval_split"):
        if not isinstance(_get(config, field), str) or not _get(config, field):
            _fail(field, _get(config, field), "a non-empty string")
    for field in ("input.global_batch_size", "input.eval_batch_size"):
        _number(config, field, low=1, integer=True)
    for field in ("input.image_size", "input.eval_resize", "input.eval_crop"):
        _number(config, field, low=1, integer=True)
    if config.input.eval_resize < config.input.eval_crop:
        crop = config.input.eval_crop
        _fail("input.eval_resize", config.input.eval_resize, f">= input.eval_crop={crop}")
    _pair(config, "input.rrc_scale", high=1.0)
    _pair(config, "input.rrc_ratio", high=None)
    _number(config, "input.random_erase", low=0, high=1)
    _number(config, "input.mixup_alpha", low=0)
    _number(config, "input.cutmix_alpha", low=0)
    _choice(config, "input.channels", (1, 3))
    for field in ("input.mean", "input.std"):
        value = _get(config, field)
        if not isinstance(value, tuple | list) or len(value) not in (1, config.input.channels):
            _fail(field, value, f"1 or input.channels={config.input.channels} numbers")
    # Numbers; a zero std is left to the trainer's non-finite loss check (it says which step).
    for field in ("input.mean", "input.std"):
        if not all(map(_is_number, _get(config, field))):
            _fail(field, _get(config, field), "numbers")
    _number(config, "input.num_workers", low=-1, integer=True)
    _number(config, "input.read_threads", low=1, integer=True)
    _number(config, "input.prefetch", low=0, integer=True)
    _choice(config, "input.auto_augment_interpolation", augment.INTERPOLATIONS)
    augment.make_policy(
        config.input.get("auto_augment"),
        config.input.get("ra_magnitude", 9),
        config.input.get("auto_augment_interpolation", "bilinear"),
    )
    devices = _DeviceCount(num_devices)
    for field in ("input.global_batch_size", "input.eval_batch_size"):
        sharding.check_batch_divisible(_get(config, field), devices, field)


class _DeviceCount:
    """What sharding.check_batch_divisible reads of a mesh (its `data` axis size), without one."""

    def __init__(self, num_devices: int) -> None:
        self.shape = {sharding.DATA_AXIS: num_devices}


def check_model(config: ml_collections.ConfigDict) -> None:
    info = models.model_info(config.model.name)  # unknown names: UserError listing the known
    _choice(config, "model.dtype", DTYPES)
    _number(config, "model.num_classes", low=1, integer=True, optional=True)
    _number(config, "model.aux_loss_weight", low=0)
    # The larger train-mode minimum is the auxiliary head's (Inception-v3), built unless
    # model.kwargs.aux_logits=False.
    aux = config.model.get("kwargs", {}).get("aux_logits", True)
    least = info.min_train_input_size if aux else info.min_input_size
    if config.input.image_size < least:
        _fail("input.image_size", config.input.image_size, f">= {least} ({info.name}'s minimum)")
    if config.input.eval_crop < info.min_input_size:
        least = info.min_input_size
        _fail("input.eval_crop", config.input.eval_crop, f">= {least} ({info.name}'s minimum)")
    if info.fixed_input_size:  # ViT: a position embedding per patch of the built size
        built = config.model.get("kwargs", {}).get("image_size", info.fixed_input_size)
        sizes = {
            "input.image_size": config.input.image_size,
            "input.eval_crop": config.input.eval_crop,
        }
        for field, value in sizes.items():
            if value != built:
                why = f"{info.name} is built for {built} px inputs; model.kwargs.image_size sets it"
                _fail(field, value, f"{built} ({why})")
    if config.model.get("init"):
        transfer.pretrained_config(config.model.init)  # the pretrained workdir is there


def check_optim(config: ml_collections.ConfigDict, num_devices: int) -> None:
    _choice(config, "optim.name", optim._OPTIMIZERS)
    _number(config, "optim.lr", low=0)
    _number(config, "optim.lr_reference_batch", low=0)
    _number(config, "optim.momentum", low=0)
    _number(config, "optim.weight_decay", low=0)
    for group in ("norm", "bias", "embedding"):  # None: optim.weight_decay
        _number(config, f"optim.{group}_weight_decay", low=0, optional=True)
    _number(config, "optim.rmsprop_alpha", low=0, high=1)
    _number(config, "optim.eps", low=0)
    _number(config, "optim.adam_eps", low=0)
    _number(config, "optim.b1", low=0, high=1, high_open=True)
    _number(config, "optim.b2", low=0, high=1, high_open=True)
    _number(config, "optim.grad_clip_norm", low=0, low_open=True, optional=True)
    _number(config, "optim.grad_accum_steps", low=1, integer=True)
    _number(config, "optim.max_device_batch", low=1, integer=True, optional=True)
    _number(config, "optim.label_smoothing", low=0, high=1, high_open=True)
    _number(config, "optim.ema_decay", low=0, high=1, high_open=True, optional=True)
    _number(config, "optim.ema_steps", low=1, integer=True)
    _choice(config, "optim.trainable", transfer.TRAINABLE)
    if config.optim.get("nesterov") and config.optim.name != "sgd":
        _fail("optim.nesterov", True, "False unless optim.name='sgd'")
    _choice(config, "mesh.bn_mode", ("global", "per_device"))
    _number(config, "mesh.fsdp_min_size", low=0, integer=True)
    # Micro-batches and BatchNorm groups against the per-device batch (raises UserError).
    steps.accum_steps(config, num_devices)


def check_schedule(config: ml_collections.ConfigDict) -> None:
    # 0 means unset as None does (the command line cannot set None): schedule.epochs decides.
    if config.schedule.get("num_steps") != 0:
        _number(config, "schedule.num_steps", low=1, integer=True, optional=True)
    _number(config, "schedule.epochs", low=0, low_open=True)
    _number(config, "schedule.step_size", low=0, low_open=True)
    _number(config, "schedule.gamma", low=0)
    _number(config, "schedule.eta_min", low=0)
    _number(config, "schedule.warmup_epochs", low=0)
    # torch's LinearLR needs a start factor > 0; ConstantLR takes 0.
    linear = config.schedule.get("warmup_method") == "linear"
    _number(config, "schedule.warmup_decay", low=0, high=1, low_open=linear)
    milestones = config.schedule.get("milestones", ())
    if not all(_is_number(m) and m >= 0 for m in milestones):
        _fail("schedule.milestones", milestones, "epochs >= 0")
    # Names, warmup method and cosine's epochs > warmup: the schedule's own checks.
    optim.learning_rate_schedule(config.schedule, float(config.optim.lr), 1)


def check_loop(config: ml_collections.ConfigDict) -> None:
    _number(config, "eval.every_steps", low=0, integer=True, optional=True)  # 0/None: per epoch
    _number(config, "checkpoint.every_steps", low=1, integer=True)
    _number(config, "checkpoint.keep", low=1, integer=True)
    _number(config, "logging.every_steps", low=1, integer=True)
    profile = config.logging.get("profile_steps")
    if profile is not None and not (
        isinstance(profile, tuple | list)
        and len(profile) == 2
        and all(isinstance(s, int) for s in profile)
        and 1 <= profile[0] <= profile[1]
    ):
        _fail("logging.profile_steps", profile, "(first, last) steps with 1 <= first <= last")
    _choice(config, "logging.wandb_mode", (None, *wandb_writer.MODES))


def check_train_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
    """Raises a UserError naming the first field of `config` a training run on `num_devices`
    devices would reject (see the module docstring); returns None when it is runnable."""
    _number(config, "seed", integer=True)
    check_input(config, num_devices)
    check_model(config)
    check_optim(config, num_devices)
    check_schedule(config)
    check_loop(config)

"""The trainer: `train_and_evaluate(config, workdir)`.

Sections: model and state, loss, the jitted train/eval steps, evaluation over a split, the
training loop (resume, periodic eval, checkpoints, preemption). The hot path is one `jax.jit`
of a pure function over the split NNX state, with explicit shardings and the state donated.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from etils import epath
from flax import nnx
from jax.sharding import PartitionSpec as P

from imagenot_jax import checkpoint, ema, input_pipeline, mixing, models, optim, sharding, transfer
from imagenot_jax.metric_writer import MetricWriter
from imagenot_jax.run_control import NonFiniteLossError, PendingMetrics, Preemption
from imagenot_jax.sharding import DATA_AXIS

# ---------------------------------------------------------------------------------------------
# Model and train state.
# ---------------------------------------------------------------------------------------------


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any  # nnx.State of nnx.Param, fp32
    batch_stats: Any  # nnx.State of nnx.BatchStat, fp32
    rest: Any  # every other model variable (RNG streams for dropout, ...)
    opt_state: Any
    ema: Any  # ema.EmaState over {params, batch_stats}, or None
    key: jax.Array  # seeds on-device augmentation (mixup/cutmix), folded with the step


@dataclasses.dataclass(frozen=True)
class ModelDef:
    """The static graph of the model in train and in eval mode (BatchNorm, dropout)."""

    train: Any
    eval: Any


def build_model(config: ml_collections.ConfigDict, num_classes: int) -> nnx.Module:
    return models.get_model(
        config.model.name,
        num_classes=num_classes,
        dtype=jnp.dtype(config.model.dtype),
        param_dtype=jnp.float32,
        rngs=nnx.Rngs(params=config.seed, dropout=config.seed + 1),
        **config.model.get("kwargs", {}),
    )


def split_model(model: nnx.Module) -> tuple[ModelDef, Any, Any, Any]:
    model.eval()
    eval_def = nnx.split(model, nnx.Param, nnx.BatchStat, ...)[0]
    model.train()
    train_def, params, batch_stats, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
    return ModelDef(train_def, eval_def), params, batch_stats, rest


@dataclasses.dataclass
class Setup:
    """Everything static about a run that the steps and the loop share."""

    config: ml_collections.ConfigDict
    mesh: jax.sharding.Mesh
    model_def: ModelDef
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    abstract_state: Any
    state_shardings: Any
    init: Callable[..., TrainState]  # init(pretrained=None): see transfer.load_pretrained
    steps_per_epoch: int
    total_steps: int
    # Paths of the params that train (optim.trainable="head": the classifier head); None: all.
    trainable: frozenset | None = None


def make_setup(
    config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, num_train_examples: int
) -> Setup:
    """Builds the optimizer and the (abstract, sharded) state without allocating it."""
    global_batch = config.input.global_batch_size
    sharding.check_batch_divisible(global_batch, mesh, "input.global_batch_size")
    steps_per_epoch = num_train_examples // global_batch
    if steps_per_epoch < 1:
        raise ValueError(
            f"input.global_batch_size={global_batch} exceeds the {num_train_examples} "
            "training examples"
        )
    total_steps = config.schedule.get("num_steps") or config.schedule.epochs * steps_per_epoch
    abstract_model = nnx.eval_shape(lambda: build_model(config, config.model.num_classes))
    tx, schedule = optim.make_optimizer(
        config.optim,
        config.schedule,
        global_batch_size=global_batch,
        steps_per_epoch=steps_per_epoch,
        decay_groups=optim.weight_decay_groups(abstract_model),
    )
    trainable = transfer.trainable_paths(config)
    tx = transfer.freeze(tx, trainable)
    graphs: dict[str, ModelDef] = {}

    def init(pretrained: transfer.Pretrained | None = None) -> TrainState:
        model_def, params, batch_stats, rest = split_model(
            build_model(config, config.model.num_classes)
        )
        graphs["model_def"] = model_def
        if pretrained is not None:  # model.init: all but the fresh head from the checkpoint
            params = transfer.merge_pretrained(params, pretrained["params"])
            batch_stats = transfer.merge_pretrained(batch_stats, pretrained["batch_stats"])
        use_ema = config.optim.get("ema_decay") is not None
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=batch_stats,
            rest=rest,
            opt_state=tx.init(params),
            ema=ema.init_ema({"params": params, "batch_stats": batch_stats}) if use_ema else None,
            key=jax.random.key_data(jax.random.key(config.seed + 2)),
        )

    abstract_state = jax.eval_shape(init)
    shardings = sharding.state_shardings(abstract_state, mesh, config.mesh)
    return Setup(
        config=config,
        mesh=mesh,
        model_def=graphs["model_def"],
        tx=tx,
        schedule=schedule,
        abstract_state=abstract_state,
        state_shardings=shardings,
        init=jax.jit(init, out_shardings=shardings),
        steps_per_epoch=steps_per_epoch,
        total_steps=int(total_steps),
        trainable=trainable,
    )


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


# ---------------------------------------------------------------------------------------------
# Steps.
# ---------------------------------------------------------------------------------------------


def _forward_loss(model_graph: Any, aux_loss_weight: float) -> Callable:
    """Loss of one batch. A model with an auxiliary head (Inception-v3) returns
    (logits, aux_logits) in train mode; its loss is CE(logits) + aux_loss_weight * CE(aux)."""

    def loss_fn(params, batch_stats, rest, images, targets):
        model = nnx.merge(model_graph, params, batch_stats, rest, copy=True)
        outputs = model(images)
        logits, aux_logits = outputs if isinstance(outputs, tuple) else (outputs, None)
        _, _, new_stats, new_rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
        loss = jnp.mean(cross_entropy(logits, targets))
        if aux_logits is not None:
            loss = loss + aux_loss_weight * jnp.mean(cross_entropy(aux_logits, targets))
        return loss, (logits, new_stats, new_rest)

    return jax.value_and_grad(loss_fn, has_aux=True)


def _per_device_bn(grad_fn: Callable, mesh: jax.sharding.Mesh) -> Callable:
    """BatchNorm over each device's own sub-batch (torchvision's multi-GPU default, no SyncBN).

    Gradients and the loss are averaged over devices (equal to the global-batch mean); running
    statistics are averaged too, where DDP would take rank 0's.
    """

    def local(params, batch_stats, rest, images, targets):
        (loss, (logits, stats, new_rest)), grads = grad_fn(
            params, batch_stats, rest, images, targets
        )
        loss, grads, stats = jax.lax.pmean((loss, grads, stats), DATA_AXIS)
        return (loss, (logits, stats, new_rest)), grads

    replicated, split = P(), P(DATA_AXIS)
    return jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(replicated, replicated, replicated, split, split),
        out_specs=((replicated, (split, replicated, replicated)), replicated),
        check_vma=False,
    )


def make_train_step(setup: Setup) -> Callable:
    config, mesh = setup.config, setup.mesh
    num_classes = config.model.num_classes
    dtype = jnp.dtype(config.model.dtype)
    # A linear probe runs the frozen backbone in eval mode: BatchNorm uses (and keeps) its
    # running statistics and dropout is off, so the head trains on the features it is evaluated on.
    probe = setup.trainable is not None
    graph = setup.model_def.eval if probe else setup.model_def.train
    grad_fn = _forward_loss(graph, config.model.aux_loss_weight)
    if config.mesh.bn_mode == "per_device":
        grad_fn = _per_device_bn(grad_fn, mesh)
    elif config.mesh.bn_mode != "global":
        raise ValueError(f"mesh.bn_mode={config.mesh.bn_mode!r}: expected 'global' or 'per_device'")
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
        (loss, (logits, batch_stats, rest)), grads = grad_fn(
            state.params, state.batch_stats, state.rest, images, targets
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
            "train_top1": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
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


def make_eval_step(setup: Setup) -> Callable:
    """Per-example outputs (loss, top-5 classes), replicated so every process can read them."""
    config = setup.config
    dtype = jnp.dtype(config.model.dtype)
    k = min(5, config.model.num_classes)

    def step(params, batch_stats, rest, batch):
        model = nnx.merge(setup.model_def.eval, params, batch_stats, rest, copy=True)
        logits = model(normalize(batch["image"], config.input, dtype)).astype(jnp.float32)
        targets = jax.nn.one_hot(batch["label"], config.model.num_classes)
        return {
            "loss": cross_entropy(logits, targets),
            "top5": jax.lax.top_k(logits, k)[1].astype(jnp.int32),
            "label": batch["label"],
            "index": batch["index"],
            "mask": batch["mask"],
        }

    return jax.jit(step, out_shardings=sharding.replicated(setup.mesh))


def eval_weights(state: TrainState) -> tuple[Any, Any]:
    """(params, batch_stats) used for evaluation: the EMA copy when EMA is on."""
    if state.ema is None:
        return state.params, state.batch_stats
    averaged = ema.ema_tree(state.ema)
    return averaged["params"], averaged["batch_stats"]


# ---------------------------------------------------------------------------------------------
# Evaluation over a split (used during training and by imagenot_jax.evaluate).
# ---------------------------------------------------------------------------------------------


def predict_split(
    eval_step: Callable,
    setup: Setup,
    state: TrainState,
    config: ml_collections.ConfigDict,
    split: str,
) -> dict[str, np.ndarray]:
    """Per-example loss, top-5, label and record index over a whole split, each example once."""
    return predict_batches(eval_step, setup, state, input_pipeline.make_eval_dataset(config, split))


def predict_batches(
    eval_step: Callable, setup: Setup, state: TrainState, batches: Any
) -> dict[str, np.ndarray]:
    """The eval step's per-example outputs over padded host batches (`mask` drops the padding)."""
    params, batch_stats = eval_weights(state)
    sharding.check_batch_divisible(
        setup.config.input.eval_batch_size, setup.mesh, "input.eval_batch_size"
    )
    outputs: dict[str, list[np.ndarray]] = {}
    for local in batches:
        result = jax.device_get(
            eval_step(params, batch_stats, state.rest, sharding.global_batch(local, setup.mesh))
        )
        keep = result.pop("mask").astype(bool)
        for name, value in result.items():
            outputs.setdefault(name, []).append(value[keep])
    return {name: np.concatenate(values) for name, values in outputs.items()}


def summarize(predictions: dict[str, np.ndarray]) -> dict[str, float]:
    top5, labels = predictions["top5"], predictions["label"]
    return {
        "top1": float(np.mean(top5[:, 0] == labels)),
        "top5": float(np.mean((top5 == labels[:, None]).any(axis=1))),
        "loss": float(np.mean(predictions["loss"])),
        "n": len(labels),
    }


# ---------------------------------------------------------------------------------------------
# The training loop.
# ---------------------------------------------------------------------------------------------


def num_examples_and_classes(config: ml_collections.ConfigDict) -> tuple[int, int]:
    source = input_pipeline.open_source(
        config.data.name, config.data.train_split, config.data.get("data_dir")
    )
    return len(source), source.dataset_info.features["label"].num_classes


def write_config(config: ml_collections.ConfigDict, workdir: epath.Path) -> None:
    if jax.process_index() == 0:
        (workdir / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains (resuming from the latest checkpoint in `workdir`), evaluates, checkpoints.

    Returns the last validation metrics.
    """
    sharding.initialize_distributed(config.mesh)
    mesh = sharding.make_mesh()
    workdir_path = epath.Path(workdir)
    workdir_path.mkdir(parents=True, exist_ok=True)
    num_train, num_classes = num_examples_and_classes(config)
    with config.unlocked():
        config.model.num_classes = config.model.get("num_classes") or num_classes
        transfer.resolve_config(config)  # model.init: the pretrained run's model kwargs
    write_config(config, workdir_path)

    setup = make_setup(config, mesh, num_train)
    train_step, eval_step = make_train_step(setup), make_eval_step(setup)
    train_iter = iter(input_pipeline.make_train_dataset(config))
    checkpointer = checkpoint.Checkpointer(str(workdir_path), config.checkpoint)
    state = _initial_state(setup, checkpointer, train_iter)
    step = int(state.step)
    writer = MetricWriter(str(workdir_path), setup.total_steps, step)
    preemption = Preemption()
    pending = PendingMetrics()
    last_eval: dict[str, float] = {}
    if step < setup.total_steps:
        logging.info(
            "training %s: %d steps (%d per epoch) on %d devices, from step %d",
            config.model.name, setup.total_steps, setup.steps_per_epoch, mesh.size, step,
        )  # fmt: skip
    else:
        logging.info("%s is already trained to step %d", workdir, step)
    try:
        while step < setup.total_steps:
            batch = next(train_iter)
            state, metrics = train_step(
                state, sharding.global_batch({k: batch[k] for k in ("image", "label")}, mesh)
            )
            step += 1
            pending.add(step, metrics)
            writer.advance(step)
            done = step == setup.total_steps
            epoch_end = step % setup.steps_per_epoch == 0
            if step % config.logging.every_steps == 0 or done:
                writer.write(step, pending.flush(config.input.global_batch_size))
            eval_metrics = None
            if _eval_due(config, step, epoch_end, done):
                flushed = pending.flush(config.input.global_batch_size)  # times training only
                if flushed:
                    writer.write(step, flushed)
                predictions = predict_split(eval_step, setup, state, config, config.data.eval_split)
                eval_metrics = {f"val_{k}": v for k, v in summarize(predictions).items()}
                writer.write(step, eval_metrics)
                last_eval = eval_metrics
            if (
                done
                or preemption.requested
                or epoch_end
                or step % config.checkpoint.every_steps == 0
            ):
                flushed = pending.flush(config.input.global_batch_size)  # checks the loss
                if flushed:
                    writer.write(step, flushed)
                metrics_for_best = {"top1": eval_metrics["val_top1"]} if eval_metrics else None
                checkpointer.save(step, state, train_iter, config, metrics_for_best)
            if preemption.requested:
                logging.warning("preempted: checkpoint saved at step %d", step)
                break
    except NonFiniteLossError as e:
        checkpointer.wait()
        raise NonFiniteLossError(
            f"{e}; stopped. Last good checkpoint: step {checkpointer.latest_step()} in "
            f"{checkpointer.directory}"
        ) from None
    finally:
        preemption.restore()
        checkpointer.wait()
        checkpointer.close()
        writer.close()
        train_iter.close()
    return last_eval


def _eval_due(config: ml_collections.ConfigDict, step: int, epoch_end: bool, done: bool) -> bool:
    every = config.eval.get("every_steps")
    return done or (step % every == 0 if every else epoch_end)


def _initial_state(
    setup: Setup, checkpointer: checkpoint.Checkpointer, train_iter: Any
) -> TrainState:
    latest = checkpointer.latest_step()
    if latest is None:
        if not setup.config.model.get("init"):
            return setup.init()
        # Fine-tuning starts from the pretrained weights; resuming it (below) does not.
        return setup.init(
            transfer.load_pretrained(setup.config, setup.abstract_state, setup.state_shardings)
        )
    logging.info("resuming from step %d in %s", latest, checkpointer.directory)
    abstract = checkpoint.abstract_with_shardings(setup.abstract_state, setup.state_shardings)
    return checkpointer.restore(latest, abstract, train_iter)

"""The trainer: `train_and_evaluate(config, workdir)`.

Sections: model and state, evaluation over a split, the training loop (resume, periodic eval,
checkpoints, preemption, profiling). The loss and the jitted train/eval steps (the hot path: one
`jax.jit` of a pure function over the split NNX state, with explicit shardings and the state
donated) are in steps.py.
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
import optax
from absl import logging
from etils import epath
from flax import nnx

from imagenot_jax import models, transfer
from imagenot_jax.data import input_pipeline
from imagenot_jax.errors import UserError
from imagenot_jax.evaluate import predict
from imagenot_jax.evaluate.metrics import summarize
from imagenot_jax.train import checkpoint, ema, optim, sharding, validate, wandb_writer
from imagenot_jax.train.metric_writer import MetricWriter
from imagenot_jax.train.run_control import NonFiniteLossError, PendingMetrics, Preemption, Profiler
from imagenot_jax.train.steps import accum_steps, make_train_step

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
        remat=config.model.get("remat", False),
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
    # Path prefixes of the params that train (optim.trainable="head": the head); None: all.
    trainable: tuple | None = None


def new_state(
    config: ml_collections.ConfigDict, tx: optax.GradientTransformation, params, batch_stats, rest
) -> TrainState:
    """A step-0 TrainState around these weights: fresh optimizer state, EMA (when the config
    keeps one) starting at the weights, and the dropout/stochastic-depth key. Training, the
    torchvision converter and transfer all start here."""
    use_ema = config.optim.get("ema_decay") is not None
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        rest=rest,
        opt_state=tx.init(params),
        ema=ema.init_ema({"params": params, "batch_stats": batch_stats}) if use_ema else None,
        # Its own stream, apart from the seeds of the parameter init and the input pipeline.
        key=jax.random.key_data(jax.random.key(config.seed + 2)),
    )


def make_setup(
    config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, num_train_examples: int
) -> Setup:
    """Builds the optimizer and the (abstract, sharded) state without allocating it."""
    global_batch = config.input.global_batch_size
    sharding.check_batch_divisible(global_batch, mesh, "input.global_batch_size")
    steps_per_epoch, total_steps = step_counts(config, num_train_examples)
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
        return new_state(config, tx, params, batch_stats, rest)

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
# The training loop.
# ---------------------------------------------------------------------------------------------


def step_counts(config: ml_collections.ConfigDict, num_train_examples: int) -> tuple[int, int]:
    """(steps per epoch, total steps) of a run: schedule.num_steps, else its epochs."""
    global_batch = config.input.global_batch_size
    steps_per_epoch = num_train_examples // global_batch
    if steps_per_epoch < 1:
        raise UserError(
            f"input.global_batch_size={global_batch} exceeds the {num_train_examples} "
            "training examples"
        )
    total = config.schedule.get("num_steps") or config.schedule.epochs * steps_per_epoch
    return steps_per_epoch, int(total)


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
    if config.logging.get("wandb"):
        wandb_writer.import_wandb()  # missing: say so now, not after the setup
    sharding.initialize_distributed(config.mesh)
    mesh = sharding.make_mesh()
    validate.check_train_config(config, mesh.size)  # a bad field: nothing created or written
    workdir_path = epath.Path(workdir)
    num_train, num_classes = num_examples_and_classes(config)
    step_counts(config, num_train)  # batch vs examples: like the above, before the workdir
    workdir_path.mkdir(parents=True, exist_ok=True)
    with config.unlocked():
        config.model.num_classes = config.model.get("num_classes") or num_classes
        transfer.resolve_config(config)  # model.init: the pretrained run's model kwargs
    write_config(config, workdir_path)

    setup = make_setup(config, mesh, num_train)
    train_step, eval_step = make_train_step(setup), predict.make_eval_step(setup)
    train_iter = iter(input_pipeline.make_train_dataset(config))
    checkpointer = checkpoint.Checkpointer(str(workdir_path), config.checkpoint)
    state = _initial_state(setup, checkpointer, train_iter)
    step = int(state.step)
    writer = MetricWriter(
        str(workdir_path),
        setup.total_steps,
        step,
        steps_per_epoch=setup.steps_per_epoch,
        config=config,
    )
    preemption = Preemption()
    pending = PendingMetrics()
    profiler = Profiler(config.logging.get("profile_steps"), str(workdir_path / "profile"))
    last_eval: dict[str, float] = {}
    num_eval_batches = predict.num_batches(config)  # for the progress bar
    if step < setup.total_steps:
        logging.info(
            "training %s: %d steps (%d per epoch) on %d devices, %d micro-batches per step, "
            "from step %d", config.model.name, setup.total_steps, setup.steps_per_epoch,
            mesh.size, accum_steps(config, mesh.size), step,
        )  # fmt: skip
    else:
        logging.info("%s is already trained to step %d", workdir, step)
    try:
        while step < setup.total_steps:
            batch = next(train_iter)
            if step == 0:  # what the model is trained on, as the pipeline delivers it
                writer.write_images(step, batch["image"])
            profiler.before_step(step + 1)
            state, metrics = train_step(
                state, sharding.global_batch({k: batch[k] for k in ("image", "label")}, mesh)
            )
            step += 1
            profiler.after_step(step, state)
            pending.add(step, metrics)
            preempted = preemption.reached(step)  # once a step: the same answer for both ifs
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
                batches = input_pipeline.make_eval_dataset(config)
                predictions = predict.predict(eval_step, setup, state, batches, num_eval_batches)
                eval_metrics = {f"val_{k}": v for k, v in summarize(predictions).items()}
                writer.write(step, eval_metrics)
                last_eval = eval_metrics
            if done or preempted or epoch_end or step % config.checkpoint.every_steps == 0:
                flushed = pending.flush(config.input.global_batch_size)  # checks the loss
                if flushed:
                    writer.write(step, flushed)
                metrics_for_best = {"top1": eval_metrics["val_top1"]} if eval_metrics else None
                checkpointer.save(step, state, train_iter, metrics_for_best)
            if preempted:
                logging.warning("preempted: checkpoint saved at step %d", step)
                break
    except NonFiniteLossError as e:
        checkpointer.wait()
        raise NonFiniteLossError(
            f"{e}; stopped. Last good checkpoint: step {checkpointer.latest_step()} in "
            f"{checkpointer.directory}"
        ) from None
    finally:
        profiler.stop(state)
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
    step = checkpointer.latest_intact_step()
    logging.info("resuming from step %d in %s", step, checkpointer.directory)
    abstract = checkpoint.abstract_with_shardings(setup.abstract_state, setup.state_shardings)
    # A config that does not fit the checkpoint (another model) fails here, not as damage.
    return checkpointer.restore(step, abstract, train_iter)

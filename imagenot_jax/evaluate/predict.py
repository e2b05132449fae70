"""Predictions over a split: the one eval step and loop, shared by training-time validation
(train/trainer.py) and checkpoint evaluation (evaluation.py), so both score alike."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from imagenot_jax.data import input_pipeline
from imagenot_jax.train import progress, sharding, steps

if TYPE_CHECKING:
    from imagenot_jax.evaluate.views import ClassMap
    from imagenot_jax.train.trainer import Setup


def make_eval_step(
    setup: Setup, class_map: ClassMap | None = None, keep_logits: bool = False
) -> Callable:
    """The jitted eval step: per-example loss, top-5 classes, label, index and mask, replicated
    so every process can read them.

    With a class map the dataset's labels are mapped to the model's classes, and the top-5 and
    loss are taken over the map's classes only; `y_label` (the dataset's own label) and
    `top5_unrestricted` (over all classes) come with them. `keep_logits` adds the logits.
    Labels outside the model's (or the map's) classes come out as -1."""
    config = setup.config
    dtype = jnp.dtype(config.model.dtype)
    num_x = config.model.num_classes
    restricted = class_map is not None
    y_to_x = class_map.y_to_x if restricted else np.arange(num_x, dtype=np.int32)
    classes = class_map.classes if restricted else np.arange(num_x, dtype=np.int32)
    x_to_position = np.full(num_x, -1, np.int32)  # X class -> its column among `classes`
    x_to_position[classes] = np.arange(len(classes))

    def step(params, batch_stats, rest, batch):
        model = nnx.merge(setup.model_def.eval, params, batch_stats, rest, copy=True)
        images = steps.normalize(batch["image"], config.input, dtype)
        logits = model(images).logits.astype(jnp.float32)
        y = batch["label"]
        known = (y >= 0) & (y < len(y_to_x))
        label = jnp.where(known, jnp.asarray(y_to_x)[jnp.clip(y, 0, len(y_to_x) - 1)], -1)
        scored = logits[:, classes] if restricted else logits
        position = jnp.where(label >= 0, jnp.asarray(x_to_position)[jnp.maximum(label, 0)], -1)
        top = jax.lax.top_k(scored, min(5, len(classes)))[1]
        out = {
            "loss": steps.cross_entropy(scored, jax.nn.one_hot(position, len(classes))),
            "top5": (jnp.asarray(classes)[top] if restricted else top).astype(jnp.int32),
            "label": label.astype(jnp.int32),
            "index": batch["index"],
            "mask": batch["mask"],
        }
        if restricted:
            out["y_label"] = y
            out["top5_unrestricted"] = jax.lax.top_k(logits, min(5, num_x))[1].astype(jnp.int32)
        if keep_logits:
            out["logits"] = logits
        return out

    return jax.jit(step, out_shardings=sharding.replicated(setup.mesh))


def num_batches(config: ml_collections.ConfigDict, source: Any = None) -> int:
    """How many batches make_eval_dataset(config, source) yields on this process (the same on
    every process); `source` defaults to the config's eval split."""
    if source is None:
        data = config.data
        source = input_pipeline.open_source(data.name, data.eval_split, data.get("data_dir"))
    shard = input_pipeline.ProcessShard.from_jax()
    batch = input_pipeline.per_process_batch_size(config.input.eval_batch_size, shard)
    return len(input_pipeline.eval_indices(len(source), batch, shard)) // batch


def predict(
    eval_step: Callable,
    setup: Setup,
    state: Any,
    batches: Iterable[dict[str, np.ndarray]],
    total: int | None = None,
    keep_bar: bool = False,
) -> dict[str, np.ndarray]:
    """The eval step's per-example outputs over padded host batches (input_pipeline's
    make_eval_dataset); `mask` drops the padding, so every example counts exactly once.

    On a terminal a progress bar counts the batches (`total`: their number, see num_batches);
    it is erased when done unless `keep_bar` (training-time evaluation leaves no trace)."""
    params, batch_stats = steps.eval_weights(state)
    sharding.check_batch_divisible(
        setup.config.input.eval_batch_size, setup.mesh, "input.eval_batch_size"
    )
    outputs: dict[str, list[np.ndarray]] = {}
    bar = progress.progress_bar(total, unit="batch", desc="eval", leave=keep_bar)
    for local in batches:
        result = jax.device_get(
            eval_step(params, batch_stats, state.rest, sharding.global_batch(local, setup.mesh))
        )
        keep = result.pop("mask").astype(bool)
        for name, value in result.items():
            outputs.setdefault(name, []).append(value[keep])
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    return {name: np.concatenate(values) for name, values in outputs.items()}

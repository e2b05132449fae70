"""Transfer learning: start a run from a pretrained workdir's weights with a new classifier head.

`config.model.init` names a training workdir (`DIR` for its latest checkpoint, `DIR:STEP` for
another). At step 0 the trainer copies every parameter and BatchNorm statistic of that checkpoint
into the new model, except the classifier head, which keeps its fresh initialisation (torchvision-
style fine-tuning: the new dataset has its own classes). A resumed run restores its own checkpoint
and never reads the pretrained one again.

The head is what the model declares in the registry (`models.model_info(name).head`: `fc`,
`classifier.1`, `heads.head`, Inception's `fc` and `AuxLogits.fc`): every variable under those
modules. Any other shape difference between the checkpoint and the model is an error naming the
parameter.

`config.optim.trainable`: "all" fine-tunes everything; "head" is a linear probe: every non-head
parameter gets zero updates, no weight decay and no optimizer state, the backbone runs in eval mode
(BatchNorm normalises with its running statistics, which stay fixed; dropout is off), and the
backbone's gradients are never used, so XLA drops their computation.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from imagenot_jax import models
from imagenot_jax.cli import absolute_path
from imagenot_jax.errors import MissingInputError, UserError
from imagenot_jax.train import checkpoint

TRAINABLE = ("all", "head")
COLLECTIONS = ("params", "batch_stats")  # the TrainState fields copied from the checkpoint

Path = tuple[str, ...]
Pretrained = dict[str, dict[Path, jax.Array]]  # collection -> variable path -> array


# ---------------------------------------------------------------------------------------------
# The pretrained run: workdir, step, config.
# ---------------------------------------------------------------------------------------------


def parse_init(init: str) -> tuple[str, int | None]:
    """`"DIR"` -> (DIR, None: latest checkpoint); `"DIR:STEP"` -> (DIR, STEP); DIR made absolute."""
    match = re.fullmatch(r"(.+):(\d+)", init)
    workdir, step = (match.group(1), int(match.group(2))) if match else (init, None)
    return absolute_path(workdir), step  # orbax wants absolute paths (gs:// ones already are)


def pretrained_config(init: str) -> ml_collections.ConfigDict:
    """The run config (config.json) of the workdir `model.init` names."""
    workdir, _ = parse_init(init)
    path = epath.Path(workdir) / "config.json"
    if not path.exists():
        raise MissingInputError(
            f"model.init={init}: {path} not found; expected a training workdir (DIR or DIR:STEP)"
        )
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def resolve_config(config: ml_collections.ConfigDict) -> None:
    """Checks `config.model` against the pretrained run and takes its model kwargs (in place).

    The pretrained run's kwargs are the base (so a smoke-sized model keeps its architecture); the
    config's own kwargs override them (e.g. a dropout rate). No-op without `model.init`.
    """
    init = config.model.get("init")
    if not init:
        return
    pretrained = pretrained_config(init).model
    if pretrained.name != config.model.name:
        raise UserError(
            f"model.init={init} holds a {pretrained.name!r} model but config.model.name is "
            f"{config.model.name!r}"
        )
    kwargs = {**pretrained.get("kwargs", {}).to_dict(), **config.model.kwargs.to_dict()}
    config.model.kwargs = ml_collections.ConfigDict(kwargs)


def _state_dir(init: str) -> epath.Path:
    """`<workdir>/checkpoints/<step>/state` of the checkpoint `model.init` names."""
    workdir, step = parse_init(init)
    ckpt = checkpoint.Checkpointer(workdir, checkpoint.default_checkpoint_config(), read_only=True)
    try:
        steps = ckpt.all_steps()
        if not steps:
            raise MissingInputError(f"model.init={init}: no checkpoint in {ckpt.directory}")
        if step is None:
            step = max(steps)
        elif step not in steps:
            raise UserError(
                f"model.init={init}: no checkpoint at step {step}; it has {sorted(steps)}"
            )
        return ckpt.state_directory(step)
    finally:
        ckpt.close()


# ---------------------------------------------------------------------------------------------
# Variable paths and the head.
# ---------------------------------------------------------------------------------------------


def _path(keypath: tuple) -> Path:
    """A pytree key path as strings, without the trailing `value` of Variables / saved trees."""
    names = []
    for key in keypath:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                names.append(str(getattr(key, attr)))
                break
        else:
            names.append(str(key))
    if names and names[-1] == "value":
        names.pop()
    return tuple(names)


def _flat(tree: Any) -> dict[Path, Any]:
    return {_path(kp): leaf for kp, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def head_prefixes(config: ml_collections.ConfigDict) -> tuple[Path, ...]:
    """Variable-path prefixes of the config's model's classifier head (its registry entry)."""
    return models.model_info(config.model.name).head_paths


def in_head(path: Path, head: tuple[Path, ...]) -> bool:
    """Whether the variable at `path` belongs to one of the `head` modules."""
    return any(path[: len(prefix)] == prefix for prefix in head)


# ---------------------------------------------------------------------------------------------
# Loading (step 0 of a run with model.init).
# ---------------------------------------------------------------------------------------------


def _saved_weights(tree: Mapping[str, Any]) -> tuple[Mapping[str, Any], tuple[str, ...]]:
    """The saved subtree holding {params, batch_stats}: the EMA copy when the run kept one (what
    `imagenot_jax.evaluate` scores by default), else the raw weights; and its key prefix."""
    ema_tree = tree.get("ema")
    if isinstance(ema_tree, Mapping) and isinstance(ema_tree.get("average"), Mapping):
        return ema_tree["average"], ("ema", "average")
    return tree, ()


def _nest(flat: Mapping[Path, Any]) -> dict:
    nested: dict = {}
    for path, leaf in flat.items():
        node = nested
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1]] = leaf
    return nested


def _check_same_variables(init: str, collection: str, saved: set, target: set) -> None:
    for what, paths in (
        ("missing from", target - saved),
        ("not in this model but in", saved - target),
    ):
        if paths:
            name = "/".join(sorted(paths)[0])
            raise UserError(
                f"model.init={init}: {collection} {name} is {what} the pretrained checkpoint"
                f"{f' (and {len(paths) - 1} more)' if len(paths) > 1 else ''}"
            )


def load_pretrained(
    config: ml_collections.ConfigDict, abstract_state: Any, shardings: Any
) -> Pretrained:
    """The non-head params and batch stats of the `model.init` checkpoint, on device.

    Returns collection -> path -> array, each placed with the sharding its variable has in the
    new state (so each process reads only its shards). Only those arrays are read: the
    pretrained run's optimizer state and head are not.
    """
    init = config.model.init
    state_dir = _state_dir(init)
    handler = ocp.PyTreeCheckpointHandler()
    try:
        saved, prefix = _saved_weights(handler.metadata(state_dir).tree)
    finally:
        handler.close()
    head = head_prefixes(config)
    item: dict[Path, jax.ShapeDtypeStruct] = {}
    for collection in COLLECTIONS:
        saved_flat = _flat(saved.get(collection) or {})
        target = _flat(getattr(abstract_state, collection))
        target_sharding = _flat(getattr(shardings, collection))
        _check_same_variables(init, collection, set(saved_flat), set(target))
        for path, leaf in target.items():
            if in_head(path, head):
                continue
            shape = tuple(saved_flat[path].shape)
            if shape != tuple(leaf.shape):
                raise UserError(
                    f"model.init={init}: {collection} {'/'.join(path)} has shape {shape} in the "
                    f"pretrained checkpoint but {tuple(leaf.shape)} in this model"
                )
            item[(*prefix, collection, *path, "value")] = jax.ShapeDtypeStruct(
                shape, saved_flat[path].dtype, sharding=target_sharding[path]
            )
    nested = _nest(item)
    with ocp.PyTreeCheckpointer() as checkpointer:
        restored = checkpointer.restore(
            state_dir,
            args=ocp.args.PyTreeRestore(
                item=nested,
                restore_args=ocp.checkpoint_utils.construct_restore_args(nested),
                partial_restore=True,
            ),
        )
    flat = _flat(restored)
    weights: Pretrained = {c: {} for c in COLLECTIONS}
    for path, array in flat.items():
        collection, rest = path[len(prefix)], path[len(prefix) + 1 :]
        weights[collection][rest] = array
    logging.info(
        "model.init: %d params and %d batch stats from %s%s; fresh head: %s",
        len(weights["params"]), len(weights["batch_stats"]), state_dir,
        " (EMA weights)" if prefix else "",
        ", ".join("/".join(p) for p in head),
    )  # fmt: skip
    return weights


def merge_pretrained(fresh: Any, pretrained: Mapping[Path, jax.Array]) -> Any:
    """`fresh` (an nnx.State) with every variable found in `pretrained` replaced (traceable)."""

    def pick(keypath: tuple, leaf: jax.Array) -> jax.Array:
        value = pretrained.get(_path(keypath))
        return leaf if value is None else jnp.asarray(value, leaf.dtype)

    return jax.tree_util.tree_map_with_path(pick, fresh)


# ---------------------------------------------------------------------------------------------
# Freezing (optim.trainable="head").
# ---------------------------------------------------------------------------------------------


def trainable_paths(config: ml_collections.ConfigDict) -> tuple[Path, ...] | None:
    """Path prefixes of the params that train: None for all (`optim.trainable="all"`), the
    head's for a linear probe ("head"). Paths, not a mask tree: they match any tree of the params
    (abstract, real, gradients, optimizer-masked) without depending on its pytree structure."""
    trainable = config.optim.get("trainable", "all")
    if trainable not in TRAINABLE:
        raise UserError(f"optim.trainable={trainable!r}: expected one of {list(TRAINABLE)}")
    if trainable == "all":
        return None
    return head_prefixes(config)


def frozen_mask(params: Any, trainable: tuple[Path, ...] | None) -> Any:
    """A tree like `params` (an nnx.State or plain dict): True for every frozen leaf."""
    return jax.tree_util.tree_map_with_path(
        lambda kp, _: trainable is not None and not in_head(_path(kp), trainable), params
    )


def freeze(
    tx: optax.GradientTransformation, trainable: tuple[Path, ...] | None
) -> optax.GradientTransformation:
    """`tx` for the trainable leaves; zero updates, no weight decay and no state for the rest."""
    if trainable is None:
        return tx

    def labels(params: Any) -> Any:
        return jax.tree.map(lambda f: "frozen" if f else "train", frozen_mask(params, trainable))

    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


def zero_frozen(grads: Any, trainable: tuple[Path, ...] | None) -> Any:
    """Zeroes the frozen leaves' gradients at trace time, so XLA never computes them."""
    if trainable is None:
        return grads
    return jax.tree_util.tree_map_with_path(
        lambda kp, g: g if in_head(_path(kp), trainable) else jnp.zeros_like(g), grads
    )

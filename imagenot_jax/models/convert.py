"""torchvision weights -> our models, and a CLI that writes them as an evaluable checkpoint.

    python -m imagenot_jax.models.convert --model resnet152 --torch_weights resnet152.pth \
        --out /tmp/tv_resnet152 [--config configs/resnet152.py:dataset=imagenet]
    python -m imagenot_jax.evaluate --workdir /tmp/tv_resnet152 --dataset imagenot/256

`--out` becomes a workdir like a training run's (config.json + checkpoints/0), so
`imagenot_jax.evaluate` scores ImageNet-trained torchvision weights on ImageNot or LAIONet the
same way as our own runs. The config gives the eval transform (resize/crop, mean/std) and the
dataset; without one, torchvision's defaults are used (resize 256, crop 224, ImageNet mean/std).
The .pth file is read with torch (the `curation` extra), on CPU, with `weights_only=True`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags
from etils import epath
from flax import nnx
from ml_collections import config_flags

from imagenot_jax.errors import ExistingOutputError, MissingInputError, UserError
from imagenot_jax.models.registry import get_model
from imagenot_jax.models.torch_weights import load_torchvision


def from_torchvision(name: str, state_dict: Mapping[str, Any], **kwargs: Any) -> nnx.Module:
    """Our model `name` holding a torchvision state_dict's weights (eval mode).

    The model is traced abstractly and filled by the loader, never randomly initialised: a
    real init of the big models costs more than the conversion. `num_classes` defaults to
    1000 (the ImageNet heads); the loader fails loudly on any name or shape mismatch.
    """
    kwargs.setdefault("num_classes", 1000)
    abstract = nnx.eval_shape(lambda: get_model(name, rngs=nnx.Rngs(0), **kwargs))
    graphdef, state = nnx.split(abstract)
    seeds = iter(range(1 << 30))

    def placeholder(leaf: jax.ShapeDtypeStruct) -> Any:
        # numpy zeros, replaced by the loader, except the keys of dropout/stochastic-depth
        # streams (not in a state_dict), which get distinct real keys.
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            return jax.random.key(next(seeds))
        return np.zeros(leaf.shape, leaf.dtype)

    model = nnx.merge(graphdef, jax.tree.map(placeholder, state))
    load_torchvision(model, state_dict)
    # numpy leaves the loader did not replace (RNG counters) become jax arrays like the rest.
    nnx.update(model, jax.tree.map(jnp.asarray, nnx.state(model)))
    model.eval()
    return model


def read_torch_state_dict(path: str) -> dict[str, Any]:
    """A .pth state_dict (or a checkpoint dict holding one under "model"/"state_dict")."""
    try:
        import torch
    except ImportError:
        raise ImportError("reading .pth files needs torch: pip install -e '.[curation]'") from None
    if not epath.Path(path).exists():
        raise MissingInputError(f"{path}: no such torch weights file")
    with epath.Path(path).open("rb") as f:
        try:
            loaded = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises several types for a bad file
            detail = next(iter(str(err).strip().splitlines()), "")  # torch's run for pages
            raise UserError(
                f"{path}: not a torch state_dict ({type(err).__name__}: {detail})"
            ) from None
    for key in ("model", "state_dict"):  # training checkpoints of torchvision's references
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
            break
    if not isinstance(loaded, dict) or not loaded:
        raise UserError(
            f"{path}: expected a state_dict (name -> tensor), got {type(loaded).__name__}"
        )
    # DDP / torchvision-reference EMA wrappers prefix every key.
    for prefix in ("module.",):
        if all(k.startswith(prefix) for k in loaded if k != "n_averaged"):
            loaded = {k[len(prefix) :]: v for k, v in loaded.items() if k != "n_averaged"}
    return loaded


def write_checkpoint(model: nnx.Module, config: ml_collections.ConfigDict, out: str) -> epath.Path:
    """Writes `model` as step 0 of a workdir `out` that imagenot_jax.evaluate reads."""
    # Imported here: the trainer pulls in grain/orbax, which the converter API does not need.
    from imagenot_jax.train import checkpoint, sharding, trainer

    workdir = epath.Path(out)
    if not workdir.is_absolute():  # orbax wants absolute paths (gs:// ones already are)
        workdir = epath.Path(os.path.abspath(out))
    if checkpoint.checkpoints_directory(workdir).exists():
        raise ExistingOutputError(
            f"{checkpoint.checkpoints_directory(workdir)}: already exists; choose a new --out"
        )
    mesh = sharding.make_mesh()
    setup = trainer.make_setup(config, mesh, num_train_examples=config.input.global_batch_size)
    _, params, batch_stats, rest = trainer.split_model(model)
    state = trainer.new_state(config, setup.tx, params, batch_stats, rest)
    if jax.tree.structure(state) != jax.tree.structure(setup.abstract_state):
        raise UserError(
            f"config.model ({config.model.name}, kwargs {config.model.kwargs.to_dict()}) does "
            "not build the converted model's structure"
        )
    state = jax.device_put(state, setup.state_shardings)
    workdir.mkdir(parents=True, exist_ok=True)
    trainer.write_config(config, workdir)
    checkpointer = checkpoint.Checkpointer(str(workdir), config.checkpoint)
    checkpointer.save(0, state, None)
    checkpointer.wait()
    checkpointer.close()
    return workdir


def conversion_config(
    model: str, num_classes: int, config: ml_collections.ConfigDict | None
) -> ml_collections.ConfigDict:
    """The run config written beside the weights: the given one, or the base config."""
    if config is None:
        from imagenot_jax.defaults import base_config

        config = base_config()
    config = ml_collections.ConfigDict(json.loads(config.to_json_best_effort()))
    config.model.name = model
    config.model.num_classes = num_classes
    config.model.dtype = "float32"
    config.optim.ema_decay = None  # the converted weights are the weights to evaluate
    return config


# --- command line ---------------------------------------------------------------------------


def define_flags() -> None:
    """Flags of the command line (only when run as a program, as in imagenot_jax.evaluate)."""
    flags.DEFINE_string("model", None, "Registered model name (torchvision's), e.g. resnet152.")
    flags.DEFINE_string("torch_weights", None, "torchvision state_dict file (.pth).")
    flags.DEFINE_string("out", None, "Output workdir (config.json + checkpoints/0).")
    flags.DEFINE_integer("num_classes", 1000, "Classes of the weights' head.")
    config_flags.DEFINE_config_file(
        "config",
        None,
        "Run config for the eval transform and dataset (optional).",
        lock_config=True,
    )
    flags.mark_flags_as_required(["model", "torch_weights", "out"])


def main(argv: list[str]) -> None:
    from imagenot_jax.cli import run_command

    options = flags.FLAGS

    def run() -> None:
        config = conversion_config(options.model, options.num_classes, options.config)
        state_dict = read_torch_state_dict(options.torch_weights)
        model = from_torchvision(
            options.model, state_dict, num_classes=options.num_classes, **config.model.kwargs
        )
        workdir = write_checkpoint(model, config, options.out)
        print(f"wrote {options.model} ({options.torch_weights}) to {workdir}")
        print(f"evaluate: python -m imagenot_jax.evaluate --workdir {workdir}")

    run_command(argv, run)


if __name__ == "__main__":
    define_flags()
    app.run(main)

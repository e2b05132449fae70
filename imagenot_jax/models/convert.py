"""torchvision weights -> our models, and a CLI that writes them as an evaluable checkpoint.

    python -m imagenot_jax.models.convert --weights ResNet152_Weights.IMAGENET1K_V1 --out W
    python -m imagenot_jax.models.convert --all_study_models --out DIR   # DIR/<model>, all nine
    python -m imagenot_jax.models.convert --model resnet152 --torch_weights resnet152.pth \
        --out W [--config configs/resnet152.py:dataset=imagenet]
    python -m imagenot_jax.evaluate --workdir W --dataset imagenet2012 --split validation

`--out` becomes a workdir like a training run's (config.json + checkpoints/0), so
`imagenot_jax.evaluate` scores ImageNet-trained torchvision weights on ImageNet, ImageNetV2, ReaL
or LAIONet (`--class_map wnid`) the same way as our own runs.

`--weights` names torchvision's published weights (`<Enum>.<member>` or `<Enum>.DEFAULT`, see
torchvision_weights.py): the file comes from torch hub's cache ($TORCH_HOME), downloaded there
when missing; the workdir gets the weights' own eval transform (resize, crop, mean/std), the
ImageNet dataset and, under `published_weights`, what torchvision published (ImageNet accuracy,
URL, interpolation). `--all_study_models` does this for the study's nine architectures with
the weights of the reference table (imagenot_jax/rank/reference.py: IMAGENET1K_V1).

`--torch_weights` reads a local .pth file instead (with torch, the `curation` extra, on CPU,
`weights_only=True`); `--config` then gives the eval transform and dataset (default: torchvision's
resize 256, crop 224, ImageNet mean/std, on the default dataset).
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
from imagenot_jax.models import torchvision_weights
from imagenot_jax.models.registry import get_model
from imagenot_jax.models.torch_weights import load_torchvision
from imagenot_jax.models.torchvision_weights import PublishedWeights


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
        raise UserError(
            "reading .pth files needs torch: pip install -e '.[curation]' (`make test` installs it)"
        ) from None
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


def convert_file(
    model: str,
    path: str,
    config: ml_collections.ConfigDict,
    out: str | epath.Path,
) -> epath.Path:
    """The .pth file `path` as our `model` (config.model: classes, kwargs), written to `out`."""
    state_dict = read_torch_state_dict(path)
    converted = from_torchvision(
        model, state_dict, num_classes=config.model.num_classes, **config.model.kwargs
    )
    del state_dict  # the big models' tensors: twice the memory until written
    return write_checkpoint(converted, config, str(out))


def published_config(
    weights: PublishedWeights, config: ml_collections.ConfigDict | None = None
) -> ml_collections.ConfigDict:
    """The run config of converted published weights: `config` (default: the base config on
    ImageNet) with the weights' own eval transform, and what torchvision published about them
    under `published_weights`."""
    if config is None:
        from imagenot_jax.defaults import base_config, set_dataset

        config = base_config()
        set_dataset(config, "imagenet")
    config = conversion_config(weights.model, weights.num_classes, config)
    # The published accuracy was measured with this transform; torchvision's mean/std are on
    # the 0-1 scale, ours on the 0-255 one of the decoded pixels.
    config.input.eval_resize = weights.eval_resize
    config.input.eval_crop = weights.eval_crop
    config.input.mean = tuple(255 * m for m in weights.mean)
    config.input.std = tuple(255 * s for s in weights.std)
    config.published_weights = weights.describe()
    return config


def _published_line(weights: PublishedWeights) -> str:
    imagenet = weights.metrics.get("ImageNet-1K", {})
    line = (
        f"{weights.name} ({weights.model}): published ImageNet-1K top-1 "
        f"{imagenet.get('acc@1', '?')}%, top-5 {imagenet.get('acc@5', '?')}%; eval resize "
        f"{weights.eval_resize}, crop {weights.eval_crop}"
    )
    if weights.interpolation != "bilinear":  # our eval resize is (antialiased) bilinear
        line += f" (torchvision resizes {weights.interpolation}, we bilinear)"
    return line


def convert_published(
    name: str, out: str, config: ml_collections.ConfigDict | None = None
) -> epath.Path:
    """torchvision's published weights `name` (`<Enum>.<member>`), fetched through torch hub's
    cache, written as a workdir `out`."""
    weights = torchvision_weights.resolve(name)
    path = torchvision_weights.fetch(weights)
    workdir = convert_file(weights.model, path, published_config(weights, config), out)
    print(f"wrote {_published_line(weights)} to {workdir}")
    return workdir


def study_weights() -> list[PublishedWeights]:
    """The torchvision weights of the study's nine architectures that the reference table
    (imagenot_jax/rank/reference.py) lists, in its order."""
    from imagenot_jax.rank.reference import PAPER_MODELS, TORCHVISION_IMAGENET1K

    return [
        torchvision_weights.resolve(
            torchvision_weights.study_weights_name(model, TORCHVISION_IMAGENET1K[model].weights)
        )
        for model in PAPER_MODELS
    ]


def convert_study_models(out: str) -> dict[str, epath.Path]:
    """The nine study models' published weights, each to `out/<model>`; nothing is written
    unless every file is at hand (one error lists every missing one)."""
    from imagenot_jax.train.checkpoint import checkpoints_directory

    published = study_weights()
    outs = {w.model: epath.Path(out) / w.model for w in published}
    existing = [str(p) for p in outs.values() if checkpoints_directory(p).exists()]
    if existing:
        raise ExistingOutputError(f"{', '.join(existing)}: already converted; choose a new --out")
    paths = torchvision_weights.fetch_all(published)
    workdirs = {}
    for weights, path in zip(published, paths, strict=True):
        workdirs[weights.model] = convert_file(
            weights.model, path, published_config(weights), outs[weights.model]
        )
        print(f"wrote {_published_line(weights)} to {workdirs[weights.model]}", flush=True)
    print(f"converted {len(workdirs)} study models to {out}: {', '.join(workdirs)}")
    return workdirs


# --- command line ---------------------------------------------------------------------------


def define_flags() -> None:
    """Flags of the command line (only when run as a program, as in imagenot_jax.evaluate)."""
    from imagenot_jax.cli import define_path_flag

    flags.DEFINE_string(
        "weights",
        None,
        "torchvision's published weights, <Enum>.<member> (e.g. ResNet152_Weights.IMAGENET1K_V1 "
        "or ResNet152_Weights.DEFAULT), read from torch hub's cache ($TORCH_HOME), downloaded "
        "there when missing.",
    )
    flags.DEFINE_boolean(
        "all_study_models",
        False,
        "Convert the published weights of the study's nine architectures (the reference "
        "table's, IMAGENET1K_V1) to --out/<model>.",
    )
    flags.DEFINE_string("model", None, "Registered model name (torchvision's), e.g. resnet152.")
    define_path_flag("torch_weights", None, "torchvision state_dict file (.pth); needs --model.")
    define_path_flag("out", None, "Output workdir (config.json + checkpoints/0).")
    flags.DEFINE_integer(
        "num_classes", None, "Classes of the weights' head (default: 1000, or the weights')."
    )
    config_flags.DEFINE_config_file(
        "config",
        None,
        "Run config for the eval transform and dataset (optional; with --weights, the weights' "
        "own eval transform replaces the config's).",
        lock_config=True,
    )
    flags.mark_flags_as_required(["out"])


def _check_options(options: flags.FlagValues) -> None:
    """One weights source, and only the flags that go with it."""
    sources = ["--torch_weights"] * bool(options.torch_weights)
    sources += ["--weights"] * bool(options.weights)
    sources += ["--all_study_models"] * options.all_study_models
    if len(sources) != 1:
        raise UserError(
            f"give exactly one of --weights NAME, --all_study_models or --model M "
            f"--torch_weights PATH (got {', '.join(sources) or 'none'})"
        )
    if options.torch_weights and not options.model:
        raise UserError("--torch_weights needs --model (the registered model it holds)")
    if options.all_study_models and (options.model or options.config or options.num_classes):
        raise UserError("--all_study_models takes no --model, --config or --num_classes")


def main(argv: list[str]) -> None:
    from imagenot_jax.cli import run_command

    options = flags.FLAGS

    def run() -> None:
        _check_options(options)
        if options.all_study_models:
            convert_study_models(options.out)
            print(f"evaluate each: python -m imagenot_jax.evaluate --workdir {options.out}/MODEL")
            return
        if options.weights:
            weights = torchvision_weights.resolve(options.weights)
            for flag, ours in (("model", weights.model), ("num_classes", weights.num_classes)):
                if options[flag].value not in (None, ours):
                    raise UserError(f"--{flag}={options[flag].value}: {weights.name} has {ours}")
            workdir = convert_published(weights.name, options.out, options.config)
        else:
            num_classes = options.num_classes or 1000
            config = conversion_config(options.model, num_classes, options.config)
            workdir = convert_file(options.model, options.torch_weights, config, options.out)
            print(f"wrote {options.model} ({options.torch_weights}) to {workdir}")
        print(f"evaluate: python -m imagenot_jax.evaluate --workdir {workdir}")

    run_command(argv, run)


if __name__ == "__main__":
    from imagenot_jax import config_files

    define_flags()
    app.run(main, flags_parser=config_files.flags_parser("config"))

"""Transfer learning: fine-tune a pretrained training workdir on another dataset.

Command:  python -m imagenot_jax.main \
              --config configs/transfer.py:init=WORKDIR,dataset=cifar10 --workdir W
Argument: comma-separated items (WORKDIR may not contain a comma):
          init=WORKDIR[:STEP]  the pretrained run (latest checkpoint, or STEP), required
          dataset=NAME         a dataset with a train split from imagenot_jax/data/datasets.py:
                               cifar10 (TFDS `cifar10`, 32 px) is the default; fashion_mnist is
                               the offline `fashion_mnist_local/all` (28 px)
          probe                linear probe: only the new head trains (optim.trainable="head")
          size=N               train and eval resolution (default: the pretrained eval crop)
          smoke                a CPU-sized run (batch 8, 2 steps, 64 eval images, fp32)
Model:    name, kwargs, compute dtype, input mean/std and channels come from WORKDIR/config.json;
          every pretrained parameter and BatchNorm statistic is copied (the EMA weights if the run
          kept them) except the classifier head, freshly initialised for the new classes.
Recipe:   torchvision-style fine-tuning, our documented defaults (not tuned, not from a paper):
          - images upscaled to the pretrained model's eval crop (224 for the recipes; the
            resolution its features were learned at), train: RandomResizedCrop(scale 0.5-1) +
            flip, eval: the whole image resized (keep 32 px with `size=32`);
          - SGD momentum 0.9, batch 256, cosine to 0 (smooth, per step), no warmup;
          - full fine-tuning: lr 0.01 per 256 images, weight decay 1e-4 on every parameter,
            10 epochs;
          - probe: lr 0.1 per 256, weight decay 1e-4 on the head only (frozen parameters get
            neither updates nor decay), 30 epochs; the backbone runs in eval mode, i.e.
            BatchNorm uses its pretrained running statistics, which stay fixed, and dropout is off;
          - no label smoothing, mixup/cutmix, auto-augment or EMA.
Expected: not measured yet (needs the pretrained ImageNot / ImageNet runs).
"""

import dataclasses

import ml_collections

from imagenot_jax import defaults, recipes, transfer
from imagenot_jax.data import datasets
from imagenot_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class TransferArgs:
    init: str
    dataset: str = "cifar10"
    probe: bool = False
    size: int | None = None
    smoke: bool = False


def parse_arg(arg: str | None) -> TransferArgs:
    """`"init=W,dataset=cifar10,probe"` -> TransferArgs; bad items raise a one-line ValueError."""
    values: dict = {}
    for item in filter(None, (part.strip() for part in (arg or "").split(","))):
        key, _, value = item.partition("=")
        if item in ("probe", "smoke"):
            values[item] = True
        elif key == "init" and value:
            values["init"] = value
        elif key == "dataset" and value in datasets.list_datasets(trainable=True):
            values["dataset"] = value
        elif key == "size" and value.isdigit() and int(value) > 0:
            values["size"] = int(value)
        else:
            raise UserError(
                f"config argument {item!r}: expected 'init=WORKDIR[:STEP]' and optionally "
                f"'dataset=<{'|'.join(datasets.list_datasets(trainable=True))}>', 'probe', "
                "'size=N', 'smoke', comma-separated"
            )
    if "init" not in values:
        raise UserError(
            "configs/transfer.py needs 'init=WORKDIR' (the pretrained training workdir), "
            "e.g. configs/transfer.py:init=/runs/resnet50,dataset=cifar10"
        )
    return TransferArgs(**values)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_arg(arg)
    pretrained = transfer.pretrained_config(args.init)
    config = defaults.base_config()

    # data (its mean/std are replaced below by the pretrained run's)
    defaults.set_dataset(config, args.dataset)

    # model: the pretrained architecture; num_classes from the new dataset
    config.model.name = pretrained.model.name
    config.model.kwargs = ml_collections.ConfigDict(pretrained.model.get("kwargs", {}).to_dict())
    config.model.dtype = pretrained.model.get("dtype", "float32")
    config.model.init = args.init

    # input: the normalisation the backbone was trained with, at its eval resolution
    size = args.size or pretrained.input.eval_crop
    recipes.set_sizes(config, train_crop=size, eval_resize=size, eval_crop=size)
    config.input.rrc_scale = (0.5, 1.0)
    config.input.mean = tuple(pretrained.input.mean)
    config.input.std = tuple(pretrained.input.std)
    config.input.channels = pretrained.input.get("channels", 3)
    config.input.global_batch_size = 256
    config.input.eval_batch_size = 256

    # optim
    config.optim.name = "sgd"
    config.optim.momentum = 0.9
    config.optim.lr = 0.1 if args.probe else 0.01  # per 256 images
    config.optim.lr_reference_batch = 256
    config.optim.weight_decay = 1e-4
    config.optim.trainable = "head" if args.probe else "all"

    # schedule
    config.schedule.name = "cosine"
    config.schedule.epochs = 30 if args.probe else 10
    config.schedule.per_epoch = False
    config.schedule.warmup_epochs = 0

    # logging
    config.logging.every_steps = 50

    recipes.shrink_for_smoke(
        config, recipes.RecipeArgs(dataset=args.dataset, smoke=args.smoke), image_size=size
    )
    return config

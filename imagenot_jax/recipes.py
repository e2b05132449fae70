"""What the recipe configs (`configs/<model>.py`) share: the config argument, datasets, smoke runs.

A recipe config is called with an argument string of comma-separated items:

    configs/resnet152.py                       ImageNot (the default dataset), full recipe
    configs/resnet152.py:dataset=imagenet      ImageNet-1k (TFDS imagenet2012), full recipe
    configs/resnet152.py:smoke                 a CPU-sized run on the embedded Fashion-MNIST
    configs/resnet152.py:dataset=imagenot,smoke  the same shrunken run on ImageNot

`smoke` keeps the recipe (optimizer, schedule, augmentation, EMA, ...) and shrinks what the
recipe sizes: model width/depth where the family takes arguments for it, resolution, batch,
steps and the eval split, so every recipe trains and evaluates end to end in seconds on a CPU.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections

from imagenot_jax import defaults
from imagenot_jax.data import datasets
from imagenot_jax.errors import UserError

# The embedded default (Debian's dataset-fashion-mnist, built by `make demo`): smoke runs.
SMOKE_DATASET = "fashion_mnist"
SMOKE_EVAL_EXAMPLES = 64  # eval on a slice of the eval split: enough to exercise the eval path


@dataclasses.dataclass(frozen=True)
class RecipeArgs:
    dataset: str = defaults.DEFAULT_DATASET
    smoke: bool = False


def parse_arg(arg: str | None) -> RecipeArgs:
    """`"dataset=imagenet,smoke"` -> RecipeArgs; unknown items raise a one-line ValueError."""
    dataset, smoke = None, False
    for item in filter(None, (part.strip() for part in (arg or "").split(","))):
        key, _, value = item.partition("=")
        if item == "smoke":
            smoke = True
        elif key == "dataset" and value in datasets.list_datasets(trainable=True):
            dataset = value
        else:
            raise UserError(
                f"config argument {item!r}: expected "
                f"'dataset=<{'|'.join(datasets.list_datasets(trainable=True))}>' "
                "and/or 'smoke', comma-separated"
            )
    if dataset is None:
        dataset = SMOKE_DATASET if smoke else defaults.DEFAULT_DATASET
    return RecipeArgs(dataset=dataset, smoke=smoke)


def recipe_config(model: str, arg: str | None) -> tuple[ml_collections.ConfigDict, RecipeArgs]:
    """The base config for `model` on the dataset the argument names (bf16 compute)."""
    args = parse_arg(arg)
    config = defaults.base_config()
    defaults.set_dataset(config, args.dataset)
    # torchvision's recipes normalise with ImageNet's statistics whatever the data (smoke runs
    # on Fashion-MNIST included), so the study compares architectures on equal inputs.
    config.input.mean, config.input.std = datasets.IMAGENET_MEAN, datasets.IMAGENET_STD
    config.model.name = model
    config.model.dtype = "bfloat16"  # torchvision's --amp; params and norm stats stay fp32
    return config, args


def set_sizes(
    config: ml_collections.ConfigDict, *, train_crop: int, eval_resize: int, eval_crop: int
) -> None:
    """torchvision's --train-crop-size / --val-resize-size / --val-crop-size."""
    config.input.image_size = train_crop
    config.input.eval_resize = eval_resize
    config.input.eval_crop = eval_crop


def shrink_for_smoke(
    config: ml_collections.ConfigDict,
    args: RecipeArgs,
    *,
    image_size: int,
    model_kwargs: dict[str, Any] | None = None,
) -> None:
    """Shrinks a recipe to a CPU-sized run (see the module docstring); no-op unless `smoke`."""
    if not args.smoke:
        return
    for key, value in (model_kwargs or {}).items():
        config.model.kwargs[key] = value
    config.model.dtype = "float32"  # XLA:CPU runs bf16 convolutions far slower than fp32
    set_sizes(config, train_crop=image_size, eval_resize=image_size, eval_crop=image_size)
    config.data.eval_split = f"{config.data.eval_split}[:{SMOKE_EVAL_EXAMPLES}]"
    config.input.global_batch_size = 8
    config.input.eval_batch_size = 16
    config.input.num_workers = 0
    config.mesh.bn_group_size = None  # BN over each device's share of the 8-image batch
    config.schedule.num_steps = 2
    config.checkpoint.every_steps = 1000  # and at the end of training
    config.logging.every_steps = 1


def reference_batchnorm(config: ml_collections.ConfigDict, *, per_gpu_batch: int) -> None:
    """BatchNorm statistics over `per_gpu_batch` images, as in the reference run (per-GPU
    statistics, no SyncBN), whatever our mesh: per-device ghost BatchNorm groups of that size.
    (Smoke runs use each device's whole share of their small batch instead.)"""
    config.mesh.bn_mode = "per_device"
    config.mesh.bn_group_size = per_gpu_batch


def torchvision_default_recipe(config: ml_collections.ConfigDict, *, lr: float) -> None:
    """`references/classification/train.py` with its defaults (8 GPUs x 32 images): SGD momentum
    0.9, `lr` per 256 images, weight decay 1e-4 on every parameter, StepLR(30, 0.1), 90 epochs,
    RandomResizedCrop 224 + flip, eval resize 256 / crop 224, no smoothing, mixing or EMA."""
    set_sizes(config, train_crop=224, eval_resize=256, eval_crop=224)
    config.input.global_batch_size = 256
    config.optim.name = "sgd"
    config.optim.lr = lr
    config.optim.lr_reference_batch = 256
    config.optim.momentum = 0.9
    config.optim.weight_decay = 1e-4
    config.schedule.name = "step"
    config.schedule.step_size = 30
    config.schedule.gamma = 0.1
    config.schedule.epochs = 90


def torchvision_resnet_config(model: str, arg: str | None) -> ml_collections.ConfigDict:
    """torchvision's ResNet recipe, the same at every depth (`train.py --model resnet50` /
    `resnet152`): its defaults at lr 0.1 per 256 images, BatchNorm over each GPU's 32 images.
    Smoke runs shrink the net to one narrow block per stage."""
    config, args = recipe_config(model, arg)
    torchvision_default_recipe(config, lr=0.1)
    reference_batchnorm(config, per_gpu_batch=32)
    shrink_for_smoke(
        config,
        args,
        image_size=32,
        model_kwargs={"widths": (8, 16, 32, 64), "depths": (1, 1, 1, 1)},
    )
    return config


def modern_recipe(
    config: ml_collections.ConfigDict,
    *,
    auto_augment: str,
    random_erase: float,
    label_smoothing: float = 0.1,
) -> None:
    """What torchvision's newer recipes (EfficientNetV2, ViT, ConvNeXt) share: an auto-augment
    policy, random erasing, label smoothing, mixup 0.2 / cutmix 1.0, EMA (--model-ema: decay
    0.99998 per image-step, every 32 steps), cosine annealing after linear warmup."""
    config.input.auto_augment = auto_augment
    config.input.random_erase = random_erase
    config.input.mixup_alpha = 0.2
    config.input.cutmix_alpha = 1.0
    config.optim.label_smoothing = label_smoothing
    config.optim.ema_decay = 0.99998
    config.optim.ema_steps = 32
    config.schedule.name = "cosine"
    config.schedule.warmup_method = "linear"


def fashion_mnist_input(config: ml_collections.ConfigDict, *, image_size: int = 28) -> None:
    """The embedded Fashion-MNIST's input: 28 px grayscale replicated to 3 channels, its own
    mean/std, flips only (centred 28 px objects: random crops cost more accuracy than they add
    in a few epochs), resized to `image_size` for nets that need larger inputs."""
    fashion = datasets.get(SMOKE_DATASET)
    config.input.image_size = image_size
    config.input.rrc_scale = (1.0, 1.0)
    config.input.rrc_ratio = (1.0, 1.0)
    config.input.eval_resize = image_size
    config.input.eval_crop = image_size
    config.input.mean = fashion.mean
    config.input.std = fashion.std

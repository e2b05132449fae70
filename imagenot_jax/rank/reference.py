"""Built-in reference result sets for `imagenot_jax.rank`: published accuracies of pretrained
weights, so a set of our own runs can be ranked against them without evaluating anything.

`torchvision-imagenet1k`: torchvision's IMAGENET1K_V1 weights of every model in our zoo, their
ImageNet-1k validation top-1/top-5 (%) as published in torchvision's weight metadata, parameter
count, GFLOPs and eval transform (resize, then centre crop), plus the year of the paper that
introduced each architecture (the x axis of the study's Figure 1). The project keeps this typed
copy rather than the CSV it was taken from (../shared/data/torchvision_imagenet1k.csv), and
tests/test_rank.py checks the two agree.
"""

from __future__ import annotations

from typing import NamedTuple


class ReferenceModel(NamedTuple):
    """One published weights entry."""

    model: str
    weights: str
    acc1: float  # top-1 accuracy, percent
    acc5: float  # top-5 accuracy, percent
    num_params: int
    gflops: float
    eval_crop: int  # the weights' eval transform: resize to eval_resize, centre crop eval_crop
    eval_resize: int
    year: int  # of the architecture's paper


# Architecture family -> year of its paper (AlexNet NeurIPS 2012, VGG arXiv 2014, Inception-v3
# and ResNet arXiv Dec 2015, DenseNet arXiv 2016, MobileNetV3 2019, ViT 2020, EfficientNetV2 2021,
# ConvNeXt 2022). Matched on the model name's prefix.
FAMILY_YEARS: dict[str, int] = {
    "alexnet": 2012,
    "vgg": 2014,
    "inception_v3": 2015,
    "resnet": 2015,
    "densenet": 2016,
    "mobilenet_v3": 2019,
    "vit": 2020,
    "efficientnet_v2": 2021,
    "convnext": 2022,
}

# The nine architectures the ImageNot study trains (one per family).
PAPER_MODELS: tuple[str, ...] = (
    "alexnet",
    "vgg19",
    "inception_v3",
    "resnet152",
    "densenet161",
    "mobilenet_v3_large",
    "efficientnet_v2_l",
    "vit_b_16",
    "convnext_large",
)


def year_of(model: str) -> int | None:
    """Paper year of an architecture of our zoo by name prefix (`resnet152`, `vgg19_bn`, also
    scaled-down variants such as `resnet_mini`); None outside the nine families."""
    return next((y for family, y in FAMILY_YEARS.items() if model.startswith(family)), None)


def _row(
    model: str, acc1: float, acc5: float, num_params: int, gflops: float, crop: int, resize: int
) -> ReferenceModel:
    year = year_of(model)
    if year is None:
        raise ValueError(f"no paper year for {model}; add its family to FAMILY_YEARS")
    weights = "IMAGENET1K_V1"
    return ReferenceModel(model, weights, acc1, acc5, num_params, gflops, crop, resize, year)


# fmt: off
TORCHVISION_IMAGENET1K: dict[str, ReferenceModel] = {r.model: r for r in (
    #    model                 acc1    acc5    num_params  gflops  crop resize
    _row("alexnet",            56.522, 79.066,  61100840,  0.714, 224, 256),
    _row("vgg11",              69.02,  88.628, 132863336,  7.609, 224, 256),
    _row("vgg11_bn",           70.37,  89.81,  132868840,  7.609, 224, 256),
    _row("vgg13",              69.928, 89.246, 133047848, 11.308, 224, 256),
    _row("vgg13_bn",           71.586, 90.374, 133053736, 11.308, 224, 256),
    _row("vgg16",              71.592, 90.382, 138357544, 15.47,  224, 256),
    _row("vgg16_bn",           73.36,  91.516, 138365992, 15.47,  224, 256),
    _row("vgg19",              72.376, 90.876, 143667240, 19.632, 224, 256),
    _row("vgg19_bn",           74.218, 91.842, 143678248, 19.632, 224, 256),
    _row("inception_v3",       77.294, 93.45,   27161264,  5.713, 299, 342),
    _row("resnet18",           69.758, 89.078,  11689512,  1.814, 224, 256),
    _row("resnet34",           73.314, 91.42,   21797672,  3.664, 224, 256),
    _row("resnet50",           76.13,  92.862,  25557032,  4.089, 224, 256),
    _row("resnet101",          77.374, 93.546,  44549160,  7.801, 224, 256),
    _row("resnet152",          78.312, 94.046,  60192808, 11.514, 224, 256),
    _row("densenet121",        74.434, 91.972,   7978856,  2.834, 224, 256),
    _row("densenet161",        77.138, 93.56,   28681000,  7.728, 224, 256),
    _row("densenet169",        75.6,   92.806,  14149480,  3.36,  224, 256),
    _row("densenet201",        76.896, 93.37,   20013928,  4.291, 224, 256),
    _row("mobilenet_v3_small", 67.668, 87.402,   2542856,  0.057, 224, 256),
    _row("mobilenet_v3_large", 74.042, 91.34,    5483032,  0.217, 224, 256),
    _row("efficientnet_v2_s",  84.228, 96.878,  21458488,  8.366, 384, 384),
    _row("efficientnet_v2_m",  85.112, 97.156,  54139356, 24.582, 480, 480),
    _row("efficientnet_v2_l",  85.808, 97.788, 118515272, 56.08,  480, 480),
    _row("vit_b_16",           81.072, 95.318,  86567656, 17.564, 224, 256),
    _row("vit_b_32",           75.912, 92.466,  88224232,  4.409, 224, 256),
    _row("vit_l_16",           79.662, 94.638, 304326632, 61.555, 224, 242),
    _row("convnext_tiny",      82.52,  96.146,  28589128,  4.456, 224, 236),
    _row("convnext_small",     83.616, 96.65,   50223688,  8.684, 224, 230),
    _row("convnext_base",      84.062, 96.87,   88591464, 15.355, 224, 232),
    _row("convnext_large",     84.414, 96.976, 197767336, 34.361, 224, 232),
)}
# fmt: on

# Built-in result sets by name: (table, dataset label, number of evaluation images).
IMAGENET_VAL_SIZE = 50_000
REFERENCE_SETS: dict[str, tuple[dict[str, ReferenceModel], str, int]] = {
    "torchvision-imagenet1k": (TORCHVISION_IMAGENET1K, "ImageNet-1k val", IMAGENET_VAL_SIZE),
}

"""The ImageNot study: the nine paper architectures, each with its torchvision reference recipe
(configs/<model>.py, the whole run config), trained on ImageNet-1k (side A) and on ImageNot
(side B); the rankings compared with AlexNet as the base (relative improvements X_i / X_alexnet);
then every ImageNot-pretrained model fine-tuned on CIFAR-10 (configs/transfer.py's recipe) and
that ranking compared with the ImageNot one.

Commands:
  python -m imagenot_jax.suite --suite configs/suites/imagenot_study.py --workdir W --list
  python -m imagenot_jax.suite --suite configs/suites/imagenot_study.py --workdir W
      (on every machine / SLURM task / TPU slice at once: docs/suite.md, scripts/launch/)
  python -m imagenot_jax.suite --suite configs/suites/imagenot_study.py:published --workdir W
      side A is torchvision's published IMAGENET1K_V1 accuracies (the built-in table
      `torchvision-imagenet1k`): nothing trains on ImageNet (9 + 9 runs instead of 27)
  --suite configs/suites/imagenot_study.py:notransfer   no CIFAR-10 stage (`published,notransfer`)
  python -m imagenot_jax.suite ... --rank_only          the reports from whatever is finished
Data:     TFDS `imagenot/256` (curated: README, Curating ImageNot), `imagenet2012` (the user's
          copy) and `cifar10`, prepared in --data_dir; nothing downloads.
Output:   W/imagenet/<model>, W/imagenot/<model>, W/cifar10/<model> (one training workdir each);
          W/report/ (ImageNet vs ImageNot) and W/report_cifar10/ (ImageNot vs CIFAR-10 transfer).

Compute per run, from the deviceless H200 compiles of benchmarks/target_compile.json
(BENCHMARKS.md, "Target hardware without the hardware"; no step time has been measured on a GPU
yet, so the hours are an estimate): hours = GFLOP per image per train step x images x epochs /
(989 TFLOP/s bf16 peak x 40% assumed MFU), with ImageNot ~1.0M training images (~1,000 per class,
curation/configs/imagenot.py) and ImageNet 1.281M. CIFAR-10 transfer: 50k images x 10 epochs at
the pretrained eval crop (GFLOP scaled by (eval/train crop)^2). Memory: the train step at the
recipe's global batch (micro-batches x accumulation as in the table) on one H200 (141 GB).

  model               GFLOP/img  GiB/H200  epochs  H200-h ImageNot  ImageNet  CIFAR-10
  alexnet                   3.8       1.4      90             0.2       0.3     <0.01
  vgg19                   113.7      19.2      90             7.2       9.2      0.04
  inception_v3             33.1      70.8     100             2.3       3.0      0.01
  resnet152                66.5      26.0      90             4.2       5.4      0.02
  densenet161              45.8      19.2      90             2.9       3.7      0.02
  mobilenet_v3_large        1.4      17.3     600             0.6       0.8     <0.01
  efficientnet_v2_l       216.9     107.1     600            91.3     117.0      0.12
  vit_b_16                106.0     107.1     300            22.3      28.6      0.04
  convnext_large          126.6     107.1     600            53.3      68.3      0.07
  total                                                       184       236       0.3

So ~420 H200-hours with side A trained, ~185 with `published`. AlexNet and MobileNetV3 will be
input-bound well below 40% MFU (their hours are a floor); every recipe fits one H200 and one
TPU v5e-8 / v5p-16 slice (the table), so one run per machine or slice is the unit of work.
"""

import importlib

import ml_collections

from imagenot_jax.errors import UserError
from imagenot_jax.rank import reference

MODELS = reference.PAPER_MODELS  # the nine architectures, one per family
PUBLISHED_TABLE = "torchvision-imagenet1k"
_ARGS = ("published", "notransfer")


def parse_arg(arg: str | None) -> set[str]:
    """`"published,notransfer"` -> its items; anything else is a one-line error."""
    items = {part.strip() for part in (arg or "").split(",") if part.strip()}
    unknown = sorted(items - set(_ARGS))
    if unknown:
        raise UserError(
            f"configs/suites/imagenot_study.py argument {unknown[0]!r}: expected any of "
            f"{', '.join(_ARGS)}, comma-separated"
        )
    return items


def recipe(model: str) -> ml_collections.ConfigDict:
    """The model's whole run config from configs/<model>.py (data filled in per side)."""
    return importlib.import_module(f"imagenot_jax.configs.{model}").get_config("dataset=imagenot")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_arg(arg)
    suite = ml_collections.ConfigDict()
    suite.a = ml_collections.ConfigDict({"label": "imagenet", "data": "imagenet", "table": ""})
    if "published" in args:
        suite.a.table = PUBLISHED_TABLE  # torchvision's ImageNet-1k val top-1 stands in for A
    suite.b = ml_collections.ConfigDict({"label": "imagenot", "data": "imagenot", "table": ""})
    suite.base = "alexnet"
    suite.bootstrap = 1000
    suite.distributed = False  # True on multi-host slices (mesh.distributed for every run)
    suite.runs = ml_collections.ConfigDict({model: recipe(model) for model in MODELS})
    if "notransfer" not in args:
        # configs/transfer.py: full fine-tuning, 10 epochs, at the pretrained eval crop.
        suite.transfer = ml_collections.ConfigDict(
            {"label": "cifar10", "data": "cifar10", "of": "b", "arg": ""}
        )
    return suite

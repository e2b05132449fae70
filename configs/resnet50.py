"""ResNet-50, torchvision's reference recipe (IMAGENET1K_V1 weights).

Command:  python -m imagenot_jax.main --config configs/resnet50.py:dataset=imagenot --workdir W
          (`:dataset=imagenet` for ImageNet-1k, `:smoke` for a CPU-sized run on Fashion-MNIST)
Recipe:   https://github.com/pytorch/vision/tree/main/references/classification#resnet
          `train.py --model resnet50`: torchvision's defaults (SGD lr 0.1 per 256 images, weight
          decay 1e-4, StepLR(30, 0.1), 90 epochs); recipes.torchvision_resnet_config, as resnet152.
Hardware: 8 GPUs in torchvision's run; any mesh here (the lr scales with the global batch).
BN:       per-GPU statistics over 32 images (8 x 32, no SyncBN): mesh.bn_group_size=32 on any
          mesh (ghost BatchNorm), not statistics over the whole global or per-device batch.
Expected: ImageNet top-1 76.13% (torchvision's published weights); ImageNot: not measured yet.
"""

import ml_collections

from imagenot_jax import recipes


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return recipes.torchvision_resnet_config("resnet50", arg)

"""AlexNet, torchvision's reference recipe (IMAGENET1K_V1 weights).

Command:  python -m imagenot_jax.main --config configs/alexnet.py:dataset=imagenot --workdir W
          (`:dataset=imagenet` for ImageNet-1k, `:smoke` for a CPU-sized run on Fashion-MNIST)
Recipe:   https://github.com/pytorch/vision/tree/main/references/classification#alexnet-and-vgg
          `train.py --model alexnet --lr 1e-2`: torchvision's defaults (SGD, weight decay 1e-4,
          StepLR(30, 0.1), 90 epochs) at lr 0.01 per 256 images (the BN-free nets diverge at 0.1).
Hardware: 8 GPUs in torchvision's run; any mesh here (the lr scales with the global batch).
Expected: ImageNet top-1 56.522% (torchvision's published weights); ImageNot: not measured yet.
"""

import ml_collections

from imagenot_jax import recipes


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config, args = recipes.recipe_config("alexnet", arg)
    recipes.torchvision_default_recipe(config, lr=0.01)
    smoke_model = {"width_mult": 0.25, "hidden_features": 256}
    recipes.shrink_for_smoke(config, args, image_size=63, model_kwargs=smoke_model)
    return config

"""DenseNet-161, torchvision's reference recipe (IMAGENET1K_V1 weights).

Command:  python -m imagenot_jax.main --config configs/densenet161.py:dataset=imagenot --workdir W
          (`:dataset=imagenet` for ImageNet-1k, `:smoke` for a CPU-sized run on Fashion-MNIST)
Recipe:   https://github.com/pytorch/vision/pull/116 (weights ported from the authors' Torch
          training, https://github.com/liuzhuang13/DenseNet, which used fb.resnet.torch's recipe)
          DenseNet paper, sec. 4.2: SGD Nesterov momentum 0.9, lr 0.1 at batch 256, divided by 10
          at epochs 30 and 60, weight decay 1e-4, 90 epochs; torchvision's augmentation/sizes.
Hardware: 8 GPUs in torchvision's run; any mesh here (the lr scales with the global batch).
BN:       per-GPU statistics over 32 images (8 x 32, no SyncBN): mesh.bn_group_size=32 on any
          mesh (ghost BatchNorm), not statistics over the whole global or per-device batch.
Expected: ImageNet top-1 77.138% (torchvision's published weights); ImageNot: not measured yet.
"""

import ml_collections

from imagenot_jax import recipes


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config, args = recipes.recipe_config("densenet161", arg)
    recipes.torchvision_default_recipe(config, lr=0.1)
    config.optim.nesterov = True
    config.schedule.name = "multistep"
    config.schedule.milestones = (30, 60)
    recipes.reference_batchnorm(config, per_gpu_batch=32)
    recipes.shrink_for_smoke(
        config,
        args,
        image_size=32,
        model_kwargs={"growth_rate": 8, "block_config": (1, 1, 2, 1), "num_init_features": 16},
    )
    return config

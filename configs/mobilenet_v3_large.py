"""MobileNetV3-Large, torchvision's reference recipe (IMAGENET1K_V1 weights).

Command:  python -m imagenot_jax.main --config configs/mobilenet_v3_large.py:dataset=imagenot \
              --workdir W  (`:dataset=imagenet` for ImageNet-1k, `:smoke` for a CPU-sized run)
Recipe:   https://github.com/pytorch/vision/tree/main/references/classification#mobilenetv3-large--small
          `train.py --model mobilenet_v3_large --epochs 600 --opt rmsprop --batch-size 128
          --lr 0.064 --wd 0.00001 --lr-step-size 2 --lr-gamma 0.973 --auto-augment imagenet
          --random-erase 0.2` on 8 GPUs: RMSprop (alpha 0.9, eps 0.0316, momentum 0.9), lr 0.064
          per 1,024 images, StepLR(2, 0.973), AutoAugment (ImageNet policy), random erasing 0.2.
          Not reproduced: the average of the last 3 improving checkpoints behind the published
          weights (a post-hoc step).
Hardware: 8 GPUs in torchvision's run; any mesh here (the lr scales with the global batch).
BN:       per-GPU statistics over 128 images (8 x 128, no SyncBN): mesh.bn_group_size=128 on
          any mesh (ghost BatchNorm), not statistics over the whole global or per-device batch.
Expected: ImageNet top-1 74.042% (torchvision's published weights); ImageNot: not measured yet.
"""

import ml_collections

from imagenot_jax import recipes


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config, args = recipes.recipe_config("mobilenet_v3_large", arg)
    recipes.set_sizes(config, train_crop=224, eval_resize=256, eval_crop=224)
    config.input.global_batch_size = 1024
    config.input.auto_augment = "imagenet"
    config.input.random_erase = 0.2
    config.optim.name = "rmsprop"
    config.optim.lr = 0.064
    config.optim.lr_reference_batch = 1024
    config.optim.momentum = 0.9
    config.optim.rmsprop_alpha = 0.9
    config.optim.eps = 0.0316
    config.optim.weight_decay = 1e-5
    config.schedule.name = "step"
    config.schedule.step_size = 2
    config.schedule.gamma = 0.973
    config.schedule.epochs = 600
    recipes.reference_batchnorm(config, per_gpu_batch=128)
    recipes.shrink_for_smoke(config, args, image_size=32, model_kwargs={"width_mult": 0.25})
    return config

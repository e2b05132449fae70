"""EfficientNetV2-L with torchvision's EfficientNetV2 recipe at the L sizes.

Command:  python -m imagenot_jax.main --config configs/efficientnet_v2_l.py:dataset=imagenot \
              --workdir W  (`:dataset=imagenet` for ImageNet-1k, `:smoke` for a CPU-sized run)
Recipe:   https://github.com/pytorch/vision/tree/main/references/classification#efficientnet-v2
          `train.py --batch-size 128 --lr 0.5 --lr-scheduler cosineannealinglr
          --lr-warmup-epochs 5 --lr-warmup-method linear --auto-augment ta_wide --epochs 600
          --random-erase 0.1 --label-smoothing 0.1 --mixup-alpha 0.2 --cutmix-alpha 1.0
          --weight-decay 0.00002 --norm-weight-decay 0.0 --model-ema --ra-sampler --ra-reps 4`
          on 8 GPUs (lr 0.5 per 1,024 images). torchvision trained S and M with it; its L weights
          are ported from the paper's, so the L sizes are the paper's: train crop 384, eval
          resize/crop 480. Not reproduced: the repeated-augmentation sampler (--ra-sampler).
Hardware: 8 GPUs in torchvision's run; any mesh here (the lr scales with the global batch).
BN:       per-GPU statistics over 128 images (8 x 128, no SyncBN): mesh.bn_group_size=128 on
          any mesh (ghost BatchNorm), not statistics over the whole global or per-device batch.
Expected: ImageNet top-1 85.808% (the ported weights); ImageNot: not measured yet.
"""

import ml_collections

from imagenot_jax import recipes


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config, args = recipes.recipe_config("efficientnet_v2_l", arg)
    recipes.set_sizes(config, train_crop=384, eval_resize=480, eval_crop=480)
    config.input.global_batch_size = 1024
    recipes.modern_recipe(config, auto_augment="ta_wide", random_erase=0.1)
    config.optim.name = "sgd"
    config.optim.lr = 0.5
    config.optim.lr_reference_batch = 1024
    config.optim.momentum = 0.9
    config.optim.weight_decay = 2e-5
    config.optim.norm_weight_decay = 0.0
    config.schedule.epochs = 600
    config.schedule.warmup_epochs = 5
    recipes.reference_batchnorm(config, per_gpu_batch=128)
    smoke_model = {"width_mult": 0.25, "depth_mult": 0.25}
    recipes.shrink_for_smoke(config, args, image_size=32, model_kwargs=smoke_model)
    return config

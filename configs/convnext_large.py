"""ConvNeXt-Large, torchvision's reference recipe (IMAGENET1K_V1 weights).

Command:  python -m imagenot_jax.main --config configs/convnext_large.py:dataset=imagenot \
              --workdir W  (`:dataset=imagenet` for ImageNet-1k, `:smoke` for a CPU-sized run)
Recipe:   https://github.com/pytorch/vision/tree/main/references/classification#convnext
          `train.py --batch-size 128 --opt adamw --lr 1e-3 --lr-scheduler cosineannealinglr
          --lr-warmup-epochs 5 --lr-warmup-method linear --auto-augment ta_wide --epochs 600
          --random-erase 0.1 --label-smoothing 0.1 --mixup-alpha 0.2 --cutmix-alpha 1.0
          --weight-decay 0.05 --norm-weight-decay 0.0 --train-crop-size 176 --model-ema
          --val-resize-size 232 --ra-sampler --ra-reps 4` on 8 GPUs (lr 1e-3 per 1,024 images);
          eval crop 224 (the weights' transforms). Not reproduced: --ra-sampler.
Hardware: 8 GPUs in torchvision's run; any mesh here (the lr scales with the global batch).
Expected: ImageNet top-1 84.414% (torchvision's published weights); ImageNot: not measured yet.
"""

import ml_collections

from imagenot_jax import recipes


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config, args = recipes.recipe_config("convnext_large", arg)
    recipes.set_sizes(config, train_crop=176, eval_resize=232, eval_crop=224)
    config.input.global_batch_size = 1024
    recipes.modern_recipe(config, auto_augment="ta_wide", random_erase=0.1)
    config.optim.name = "adamw"
    config.optim.lr = 1e-3
    config.optim.lr_reference_batch = 1024
    config.optim.weight_decay = 0.05
    config.optim.norm_weight_decay = 0.0
    config.schedule.epochs = 600
    config.schedule.warmup_epochs = 5
    smoke_model = {"widths": (8, 16, 32, 64), "depths": (1, 1, 2, 1)}
    recipes.shrink_for_smoke(config, args, image_size=32, model_kwargs=smoke_model)
    return config

"""ViT-B/16, torchvision's reference recipe (IMAGENET1K_V1 weights).

Command:  python -m imagenot_jax.main --config configs/vit_b_16.py:dataset=imagenot --workdir W
          (`:dataset=imagenet` for ImageNet-1k, `:smoke` for a CPU-sized run on Fashion-MNIST)
Recipe:   https://github.com/pytorch/vision/tree/main/references/classification#vit_b_16
          `train.py --model vit_b_16 --epochs 300 --batch-size 512 --opt adamw --lr 0.003
          --wd 0.3 --lr-scheduler cosineannealinglr --lr-warmup-method linear
          --lr-warmup-epochs 30 --lr-warmup-decay 0.033 --amp --label-smoothing 0.11
          --mixup-alpha 0.2 --auto-augment ra --clip-grad-norm 1 --ra-sampler --cutmix-alpha 1.0
          --model-ema`; the published weights used 64 GPUs x 64 images: lr 0.003 per 4,096 images.
          Weight decay on every parameter (torchvision's default for this recipe).
          Not reproduced: --ra-sampler.
Hardware: 64 GPUs in torchvision's run; any mesh here (the lr scales with the global batch).
Expected: ImageNet top-1 81.072% (torchvision's published weights); ImageNot: not measured yet.
"""

import ml_collections

from imagenot_jax import recipes


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config, args = recipes.recipe_config("vit_b_16", arg)
    recipes.set_sizes(config, train_crop=224, eval_resize=256, eval_crop=224)
    config.input.global_batch_size = 4096
    recipes.modern_recipe(config, auto_augment="ra", random_erase=0.0, label_smoothing=0.11)
    config.optim.name = "adamw"
    config.optim.lr = 0.003
    config.optim.lr_reference_batch = 4096
    config.optim.weight_decay = 0.3
    config.optim.grad_clip_norm = 1.0
    config.schedule.epochs = 300
    config.schedule.warmup_epochs = 30
    config.schedule.warmup_decay = 0.033
    # The position embedding is sized for the input: image_size must equal the crops.
    config.model.kwargs.image_size = 224
    smoke_model = {"image_size": 32, "num_layers": 2, "num_heads": 2, "hidden_dim": 32}
    recipes.shrink_for_smoke(
        config, args, image_size=32, model_kwargs={**smoke_model, "mlp_dim": 64}
    )
    return config

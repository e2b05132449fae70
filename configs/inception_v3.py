"""Inception-v3 with the Inception-v3 paper's recipe (torchvision's weights are ported from it).

Command:  python -m imagenot_jax.main --config configs/inception_v3.py:dataset=imagenot \
              --workdir W  (`:dataset=imagenet` for ImageNet-1k, `:smoke` for a CPU-sized run)
Recipe:   torchvision has no training recipe for it: "The weights of the Inception V3 model are
          ported from the original paper rather than trained from scratch"
          (https://github.com/pytorch/vision/tree/main/references/classification#inception-v3),
          which also gives its sizes: train crop 299, eval resize 342 / crop 299. The optimisation
          is the paper's (Szegedy et al. 2016, arXiv:1512.00567, sec. 8): RMSProp decay 0.9 and
          eps 1.0, lr 0.045 decayed by 0.94 every two epochs, gradient clipping at 2.0, label
          smoothing 0.1, 100 epochs; 50 replicas x 32 images (lr 0.045 per 1,600 images here);
          the auxiliary classifier's loss weighted 0.4 and weight decay 4e-5, as in TF-slim's
          inception_v3 (the paper states neither).
Hardware: 50 GPUs (asynchronous) in the paper; any mesh here.
BN:       per-replica statistics over 32 images (50 x 32): mesh.bn_group_size=32 on any mesh
          (ghost BatchNorm), not statistics over the whole global or per-device batch.
Expected: ImageNet top-1 77.294% (the ported weights); ImageNot: not measured yet.
"""

import ml_collections

from imagenot_jax import recipes


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config, args = recipes.recipe_config("inception_v3", arg)
    recipes.set_sizes(config, train_crop=299, eval_resize=342, eval_crop=299)
    config.input.global_batch_size = 1600
    config.model.aux_loss_weight = 0.4
    config.optim.name = "rmsprop"
    config.optim.lr = 0.045
    config.optim.lr_reference_batch = 1600
    config.optim.momentum = 0.0
    config.optim.rmsprop_alpha = 0.9
    config.optim.eps = 1.0
    config.optim.weight_decay = 4e-5
    config.optim.grad_clip_norm = 2.0
    config.optim.label_smoothing = 0.1
    config.schedule.name = "step"
    config.schedule.step_size = 2
    config.schedule.gamma = 0.94
    config.schedule.epochs = 100
    recipes.reference_batchnorm(config, per_gpu_batch=32)
    # The auxiliary head needs >= 299 px in training; smoke trains without it at the smallest
    # size the net takes (the aux-loss path is tested separately).
    recipes.shrink_for_smoke(config, args, image_size=75, model_kwargs={"aux_logits": False})
    return config

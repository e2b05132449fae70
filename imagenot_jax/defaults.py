"""The base config every run config starts from (sections in the documented order).

Run configs (`configs/<name>.py`) call `base_config()` and override what their recipe says.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from imagenot_jax.data import datasets, input_pipeline
from imagenot_jax.train import checkpoint, optim, sharding

DEFAULT_DATASET = "imagenot"  # the study's dataset (imagenot_jax/data/datasets.py)


def base_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    pipeline = input_pipeline.default_config()

    # data
    config.data = pipeline.data

    # input (host pipeline, then normalization and mixing on device)
    config.input = pipeline.input
    set_dataset(config, DEFAULT_DATASET)  # data.name and splits, input.mean/std
    config.input.mixup_alpha = 0.0  # torchvision --mixup-alpha (0: off)
    config.input.cutmix_alpha = 0.0  # torchvision --cutmix-alpha (0: off)

    # model
    config.model = ml_collections.ConfigDict()
    config.model.name = "resnet50"  # imagenot_jax.models.list_models()
    config.model.dtype = "float32"  # compute dtype; params and norm statistics stay fp32
    config.model.num_classes = config_dict.placeholder(int)  # None: from the dataset
    config.model.kwargs = ml_collections.ConfigDict()
    # Recompute each block's activations in the backward pass (jax.checkpoint per residual /
    # dense / inception / transformer block): less activation memory for about one more forward
    # pass of compute; same function and parameters. See models/torch_nn.remat_block.
    config.model.remat = False
    # Weight of an auxiliary head's loss (Inception-v3 in train mode; 0.4 as in its paper and
    # torchvision's port); ignored by models without one.
    config.model.aux_loss_weight = 0.4
    # Transfer learning (imagenot_jax/transfer.py): a pretrained training workdir ("DIR", its
    # latest checkpoint, or "DIR:STEP") whose weights, all but the classifier head, start the run.
    config.model.init = config_dict.placeholder(str)

    # optim (+ loss and EMA, which torchvision's recipes set beside the optimizer)
    config.optim = optim.default_optim_config()
    config.optim.label_smoothing = 0.0
    config.optim.ema_decay = config_dict.placeholder(float)  # torchvision --model-ema-decay
    config.optim.ema_steps = 32  # torchvision --model-ema-steps
    # "all": every parameter trains; "head": linear probe (the rest frozen, backbone in eval mode)
    config.optim.trainable = "all"

    # schedule
    config.schedule = optim.default_schedule_config()
    config.schedule.num_steps = config_dict.placeholder(int)  # None: epochs * steps per epoch

    # mesh
    config.mesh = sharding.default_mesh_config()

    # eval
    config.eval = ml_collections.ConfigDict()
    config.eval.every_steps = config_dict.placeholder(int)  # None: at the end of every epoch

    # checkpoint
    config.checkpoint = checkpoint.default_checkpoint_config()

    # logging
    config.logging = ml_collections.ConfigDict()
    config.logging.every_steps = 100
    # (first, last) steps (1-based, as logged) to trace with jax.profiler into WORKDIR/profile
    # (TensorBoard profile plugin / Perfetto); None: no trace.
    config.logging.profile_steps = config_dict.placeholder(tuple)
    # Weights & Biases (needs `pip install wandb`): the scalars TensorBoard gets, from process 0,
    # with the config as the run config. The run id is kept in WORKDIR/wandb_run_id, so resuming
    # a workdir continues its W&B run.
    config.logging.wandb = False
    config.logging.wandb_project = "imagenot_jax"
    config.logging.wandb_entity = config_dict.placeholder(str)  # None: your default entity
    config.logging.wandb_name = config_dict.placeholder(str)  # None: the workdir's name
    # "online", "offline" or "disabled"; None: wandb's default (WANDB_MODE, login state)
    config.logging.wandb_mode = config_dict.placeholder(str)
    return config


def set_dataset(config: ml_collections.ConfigDict, name: str) -> datasets.DatasetSpec:
    """Points `config` at the registered dataset `name`: its TFDS name, train and eval splits, and
    its normalisation (input.mean/std)."""
    spec = datasets.get(name)
    config.data.name = spec.tfds_name
    config.data.train_split = spec.train_split or spec.eval_split
    config.data.eval_split = spec.eval_split
    config.input.mean = spec.mean
    config.input.std = spec.std
    return spec

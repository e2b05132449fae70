"""Demo: a small ResNet trained from scratch on Fashion-MNIST (real images, no network).

Command:  python -m imagenot_jax.main --config configs/demo.py --workdir /tmp/demo
          (`make demo` builds the data, trains, evaluates the final checkpoint, prints results)
Hardware: any CPU; sized for 2 cores.
Expected: 4 minutes of training on 2 cores (1,150 images/s), test top-1 90.8% (95% CI
          90.3-91.4); published small-CNN baselines on Fashion-MNIST reach 91-93%.
Recipe:   ResNet (CIFAR-style stem, one BasicBlock per stage, widths 8/16/32) with SGD +
          Nesterov momentum, one epoch of linear warmup then cosine, horizontal flips; 4 epochs.
"""

import ml_collections

from imagenot_jax import defaults, recipes


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    config = defaults.base_config()

    # data: the embedded Fashion-MNIST (fashion_mnist_local/all: train / test)
    defaults.set_dataset(config, "fashion_mnist")

    # input: 28x28 grayscale replicated to 3 channels, kept at native resolution, flips only.
    recipes.fashion_mnist_input(config, image_size=28)
    config.input.global_batch_size = 128
    config.input.eval_batch_size = 500
    config.input.num_workers = 1

    # model
    config.model.name = "resnet_mini"
    # Narrow but at full resolution (CIFAR-style 3x3 stem, stages at 28/14/7 px): XLA's CPU
    # convolutions make width the expensive dimension on 2 cores.
    config.model.kwargs.widths = (8, 16, 32)  # channels of the three stages

    # optim
    config.optim.name = "sgd"
    config.optim.lr = 0.4  # per 256 images (0.2 at batch 128)
    config.optim.nesterov = True
    config.optim.weight_decay = 5e-5

    # schedule
    config.schedule.name = "cosine"
    config.schedule.epochs = 4
    config.schedule.per_epoch = False  # smooth within epochs: there are only a few
    config.schedule.warmup_epochs = 1

    # checkpoint
    config.checkpoint.every_steps = 500
    config.checkpoint.keep = 2

    # logging
    config.logging.every_steps = 100
    return config

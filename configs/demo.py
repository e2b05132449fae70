"""Demo: Fashion-MNIST (real images, no network) streamed through the training input pipeline.

Command:  python -m imagenot_jax.demo --config configs/demo.py
Hardware: any CPU. Expected: the dataset builds once (~15 s on 2 cores), then one epoch of
          60,000 training images and one pass over the 10,000 test images stream in ~1 minute.
"""

import ml_collections

from imagenot_jax import input_pipeline


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    config = input_pipeline.default_config()

    # data
    config.data.name = "fashion_mnist_local/all"
    config.data.eval_split = "test"

    # input: 28x28 grayscale kept at native resolution, replicated to 3 channels.
    config.input.global_batch_size = 256
    config.input.eval_batch_size = 500
    config.input.image_size = 28
    config.input.rrc_scale = (0.35, 1.0)  # milder than ImageNet's 0.08: objects fill the frame
    config.input.eval_resize = 28
    config.input.eval_crop = 28
    config.input.num_workers = 2
    return config

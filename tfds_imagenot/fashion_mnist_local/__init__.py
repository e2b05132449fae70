"""Fashion-MNIST read from local files (Debian's `dataset-fashion-mnist` or a manual dir)."""

from tfds_imagenot.fashion_mnist_local.fashion_mnist_local_dataset_builder import Builder

__all__ = ["Builder"]

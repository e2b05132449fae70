"""TFDS builder test on dummy_data/ (20 train / 10 test images, labels cycling 0..9)."""

import tensorflow_datasets as tfds

from tfds_imagenot.fashion_mnist_local import fashion_mnist_local_dataset_builder


class FashionMnistLocalAllTest(tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = fashion_mnist_local_dataset_builder.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = ["all"]
    SPLITS = {"train": 20, "test": 10}
    SKIP_CHECKSUMS = True


class FashionMnistLocalHalvesTest(tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = fashion_mnist_local_dataset_builder.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = ["first5", "last5"]
    SPLITS = {"train": 10, "test": 5}
    SKIP_CHECKSUMS = True


if __name__ == "__main__":
    tfds.testing.test_main()

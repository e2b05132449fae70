"""TFDS's standard builder test over dummy_data/ (regenerate: python -m ...imagenot.testing)."""

import tensorflow_datasets as tfds

from . import imagenot_dataset_builder, testing


class ImageNotTest(tfds.testing.DatasetBuilderTestCase):
    """Builds both configs from dummy_data; one train image is missing and one is corrupt."""

    DATASET_CLASS = imagenot_dataset_builder.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = ["256", "full"]
    SPLITS = dict(testing.DUMMY_SPLITS)


if __name__ == "__main__":
    tfds.testing.test_main()

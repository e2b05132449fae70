"""LAIONet TFDS dataset (`tfds build tfds_imagenot/laionet --manual_dir=DIR`)."""

from .laionet_dataset_builder import Builder

__all__ = ["Builder"]

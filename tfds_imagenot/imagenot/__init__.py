"""ImageNot TFDS dataset (`tfds build tfds_imagenot/imagenot --manual_dir=DIR`)."""

from .imagenot_dataset_builder import Builder, ImageNotConfig
from .manifest import ManifestError

__all__ = ["Builder", "ImageNotConfig", "ManifestError"]

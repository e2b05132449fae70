"""Data: the dataset registry, the grain input pipeline, image ops and augmentation."""

"""LAIONet (Shirali & Hardt, 2023): LAION images of ImageNet-1k's own classes, every image in
`test`, curated by `curation/configs/laionet.py` and packaged exactly like ImageNot (same manual
dir layout, features and configs; see tfds_imagenot/imagenot)."""

from tfds_imagenot.imagenot import imagenot_dataset_builder


class Builder(imagenot_dataset_builder.Builder):
    """DatasetBuilder for LAIONet (manual dir: a LAIONet curation workdir)."""

    name = "laionet"

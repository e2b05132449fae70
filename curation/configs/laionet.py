"""LAIONet: ImageNet-1k's own classes searched in LAION by caption (Shirali & Hardt, "What makes
ImageNet look unlike LAION", arXiv 2306.15769), built with the same stages as ImageNot.

Command:  python -m curation.run --config curation/configs/laionet.py --workdir W \
              --config.laion.paths='laion2B-en/*.parquet' [--ray_address auto]
Recipe:   candidates are exactly the ImageNet-1k synsets (WNIDs from tensorflow-datasets'
          imagenet2012 labels); a caption must name lemmas of exactly one of them; the caption's
          CLIP ViT-B/32 text embedding must have cosine >= 0.82 with that of "lemma: gloss"
          (the paper's threshold); classes are not ranked or spread apart. All images go to the
          `test` split (LAIONet is an evaluation set for ImageNet models), at most 1,000 per class,
          the most similar first.
Hardware: as imagenot.py; text_score uses CLIP's text tower (GPU recommended).
Expected: 992 of the 1,000 ImageNet classes keep an unambiguous lemma (both "crane"s, cardigan,
          harp, maillot, missile and partridge share all their lemmas with another class).
          Intra-class image similarity (diagnostics, with clip_score.enabled or
          diagnostics.embeddings=images) comes out far below ImageNet's in the paper.
"""

import ml_collections

from curation.configs import base
from curation.errors import CurationError


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = base.base_config()
    config.laion.paths = "laion/*.parquet"

    # classes: ImageNet-1k itself; short lemmas are real class names here ("ox").
    config.wordnet.classes = "imagenet"
    config.wordnet.exclude_imagenet = False
    config.wordnet.max_hops = 0
    config.wordnet.spread_hops = 0
    config.wordnet.min_lemma_chars = 2

    # text score: CLIP text-text similarity, as in the paper.
    config.text_score.encoder = "clip"
    config.text_score.clip_model = "ViT-B-32"
    config.text_score.clip_pretrained = "openai"

    # select: a threshold instead of a ranking; every class that has an image is kept.
    config.select.min_text_score = 0.82
    config.select.rank_by = "count"
    config.select.min_images = 1
    config.select.train, config.select.validation, config.select.test = 0, 0, 1000

    if arg == "smoke":
        base.apply_smoke(config)
        config.text_score.clip_model, config.text_score.clip_pretrained = "tiny-random", ""
        config.select.min_text_score = None  # random text towers do not reach 0.82
        config.select.min_images = 1
        config.select.train, config.select.validation, config.select.test = 0, 0, 5
    elif arg:
        raise CurationError(f"unknown config argument {arg!r}; expected 'smoke' or nothing")
    return config

"""ImageNot: 1,000 WordNet noun classes disjoint from ImageNet-1k, ~1,000 LAION images each,
chosen by how well a caption matches its class's definition according to a text-only model.

Command:  python -m curation.run --config curation/configs/imagenot.py --workdir W \
              --config.laion.paths='relaion2B-en/*.parquet' [--ray_address auto]
          then: tfds build tfds_imagenot/imagenot --manual_dir=W --file_format=array_record
          `:smoke` swaps in tiny random models and 4 small classes (tests, a first try).
Recipe:   Salaudeen & Hardt, "ImageNot" (arXiv 2404.02112), section 3: WordNet 3.0 nouns minus
          ImageNet-1k and its direct hypernyms/hyponyms; captions matched to lemmas; similarity of
          caption and "lemma: gloss" from a sentence-level RoBERTa; the classes whose best
          captions match best; ~1,000 images per class. Where the paper leaves a choice open
          (ambiguous lemmas, NSFW and size filters, class ranking statistic, split sizes) the
          defaults are ours and documented at the field, in each stage's `defaults()`.
Hardware: match is CPU-only: 4-9 us per caption per core (benchmarks/BENCHMARKS.md), so the
          2.3B captions of LAION-2B-en take 3-6 core-hours, minutes on a Ray cluster;
          text_score runs RoBERTa-large on GPU (set text_score.dtype=bfloat16 there).
Expected: the wordnet stage keeps 60,270 of 82,115 noun synsets as candidates; of the released
          ImageNot class list (pass it as wordnet.reference_classes for the report) all 1,000
          pass the ImageNet rules and 803 keep an unambiguous lemma (see classes/report.md).
"""

import ml_collections

from curation.configs import base
from curation.errors import CurationError


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = base.base_config()
    # Every stage's defaults are the ImageNot choices; only the data location differs per run.
    config.laion.paths = "laion/*.parquet"
    # Links die (30-40% of LAION's): each class also gets 60% more images in rank order, from
    # which the TFDS builder fills the splits of the images that did not download.
    config.select.margin = 0.6
    if arg == "smoke":
        base.apply_smoke(config)
    elif arg:
        raise CurationError(f"unknown config argument {arg!r}; expected 'smoke' or nothing")
    return config

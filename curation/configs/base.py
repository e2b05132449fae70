"""The full curation config, composed from each stage's own `defaults()` section.

Config files start from `base_config()` and override what differs (imagenot.py, laionet.py), so
a field is defined, documented and defaulted in one place: the stage that reads it.
"""

from __future__ import annotations

import ml_collections

from curation import (
    clip_score,
    diagnostics,
    download,
    engine,
    laion,
    match,
    select,
    text_score,
    wordnet,
)

# The order `curation.run` runs them in; `clip_score` runs only when clip_score.enabled.
STAGES = ("wordnet", "match", "text_score", "clip_score", "select", "download", "diagnostics")


def base_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0  # ties between equal scores and split assignment (select), bootstraps
    config.stages = ",".join(STAGES)  # which stages `curation.run` runs, in STAGES order
    config.laion = laion.defaults()
    config.engine = engine.defaults()
    config.wordnet = wordnet.defaults()
    config.match = match.defaults()
    config.text_score = text_score.defaults()
    config.clip_score = clip_score.defaults()
    config.select = select.defaults()
    config.download = download.defaults()
    config.diagnostics = diagnostics.defaults()
    return config


def apply_smoke(config: ml_collections.ConfigDict) -> None:
    """`:smoke`: tiny random models (no weights to download) and small classes, for tests and a
    first run on a laptop; the dataset it makes is meaningless."""
    config.text_score.model = "tiny-random:roberta"
    config.text_score.batch_size = 16
    config.clip_score.model = "tiny-random"
    config.clip_score.pretrained = ""
    config.clip_score.batch_size = 16
    config.select.num_classes = 4
    config.select.min_images = 3  # with 1 validation + 1 test image, at least 1 train image
    config.select.train, config.select.validation, config.select.test = 3, 1, 1
    config.download.processes, config.download.threads, config.download.retries = 1, 4, 0
    config.diagnostics.min_images_per_class = 2

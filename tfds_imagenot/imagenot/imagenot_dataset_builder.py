"""ImageNot: 1,000 non-ImageNet WordNet classes of LAION images (Salaudeen & Hardt, 2024).

Built from a manual dir holding the curated manifest, the class list and the img2dataset tar
shards (see MANUAL_DOWNLOAD_INSTRUCTIONS). Two configs differ only in stored image size: `256`
(shorter side at most 256 px, what training reads) and `full` (as downloaded).
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from . import images, pipeline

_HOMEPAGE = "https://arxiv.org/abs/2404.02112"


@dataclasses.dataclass(eq=False)
class ImageNotConfig(tfds.core.BuilderConfig):
    """Stored-image policy; the logic reads these fields, never the config name."""

    max_short_side: int | None = None  # None: keep the downloaded size
    jpeg_quality: int = 90  # used only when an image has to be (re-)encoded

    @property
    def policy(self) -> images.ImagePolicy:
        return images.ImagePolicy(self.max_short_side, self.jpeg_quality)


class Builder(tfds.core.GeneratorBasedBuilder):
    """DatasetBuilder for ImageNot (manual dir: manifest + classes.tsv + webdataset shards)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        ImageNotConfig(
            name="256",
            description="Shorter side resized to 256 px when larger (BICUBIC, JPEG q90).",
            max_short_side=256,
        ),
        ImageNotConfig(
            name="full",
            description="Images at their downloaded size (non-JPEG/non-RGB re-encoded, q90).",
            max_short_side=None,
        ),
    ]
    DEFAULT_BUILDER_CONFIG_NAME = "256"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Pass --manual_dir=DIR where DIR holds the curated ImageNot manifest and the images that
    img2dataset downloaded for it:

      DIR/manifest.parquet  (or DIR/manifest/*.parquet, read in sorted order)
          one row per image; columns key (str, unique), wnid (str), label (int),
          split (train|validation|test|reserve), url (str), caption (str), text_score (float),
          clip_score (float), optionally rank (int, in its class); extra columns are ignored.
      DIR/classes.tsv
          tab-separated with a header line: label, wnid, name, gloss; labels 0..C-1 once each.
      DIR/images/**/*.tar
          webdataset shards as img2dataset writes them: {own key}.jpg (or .jpeg/.png/.webp)
          beside .json / .txt, and beside each tar img2dataset's NNNNN.parquet, whose
          manifest_key column maps its own keys to manifest keys (without it, member names are
          the manifest keys).

    Rows without an image are replaced by the class's best-ranked `reserve` rows that have one
    (test, validation, then train; info.metadata['fill'] reports classes that fell short); rows
    still without an image, or whose image cannot be decoded, are skipped and counted in the
    dataset metadata (info.metadata['skipped']).
    """

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                    # Names (the wnids in label order) are set from classes.tsv at build time.
                    "label": tfds.features.ClassLabel(),
                    "wnid": tfds.features.Text(),
                    "key": tfds.features.Text(),
                    "caption": tfds.features.Text(),
                    "text_score": tfds.features.Scalar(np.float32),
                    "clip_score": tfds.features.Scalar(np.float32),
                }
            ),
            supervised_keys=("image", "label"),
            homepage=_HOMEPAGE,
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        threads = pipeline.build_threads()
        plan = pipeline.make_plan(pathlib.Path(str(dl_manager.manual_dir)), threads)
        self.info.features["label"].names = list(plan.classes.wnids)
        metadata = self.info.metadata
        metadata["config"] = {
            "max_short_side": self.builder_config.max_short_side,
            "jpeg_quality": self.builder_config.jpeg_quality,
        }
        metadata["class_names"] = list(plan.classes.names)
        metadata["bad_shards"] = list(plan.index.bad_shards)
        metadata["fill"] = plan.fill.report(list(plan.classes.wnids))
        metadata["kept"] = {}
        metadata["skipped"] = {}
        metadata["duplicate_image"] = {}
        return {split.name: self._generate_examples(plan, split, threads) for split in plan.splits}

    def _generate_examples(
        self, plan: pipeline.BuildPlan, split: pipeline.SplitPlan, threads: int
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """Yields (manifest key, example); skip counts land in info.metadata when done."""
        stats = pipeline.SplitStats()
        yield from pipeline.generate_examples(
            plan, split, self.builder_config.policy, stats, threads=threads
        )
        metadata = self.info.metadata
        metadata["kept"][split.name] = stats.kept
        metadata["skipped"][split.name] = dict(stats.skipped)
        metadata["duplicate_image"][split.name] = stats.duplicate_image
        summary = f"{self.name}/{self.builder_config.name} {stats.summary(split.name)}"
        logging.info(summary)
        print(summary)

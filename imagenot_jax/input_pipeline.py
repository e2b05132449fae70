"""Grain input pipelines over TFDS ArrayRecord data sources.

Train: a seeded global shuffle per epoch over the whole split, repeated forever; each JAX process
takes every `process_count`-th element of that one global stream (so shards are disjoint and each
epoch is partitioned across processes), then decode + RandomResizedCrop + flip (+ optional
auto-augment policy and RandomErasing, see augment.py), batched with drop_remainder. Eval: each
process reads a strided subset, padded with masked examples so that all processes yield the same
number of batches and every example is seen exactly once.

Outputs are uint8 HWC images: normalization happens on the accelerator. Both pipelines are grain
`IterDataset`s whose iterators support `get_state()`/`set_state()` for exact resumption.
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import os
from typing import Any

import grain
import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from absl import flags

from imagenot_jax import augment, image_ops

Example = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class ProcessShard:
    """Which slice of the global stream this host feeds (jax.process_index / process_count)."""

    index: int = 0
    count: int = 1

    @classmethod
    def from_jax(cls) -> ProcessShard:
        import jax  # Imported here so the data side stays usable without initialising JAX.

        return cls(jax.process_index(), jax.process_count())


class DatasetMissingError(FileNotFoundError):
    """The named TFDS dataset has not been prepared in the data dir."""


def default_data_dir() -> str:
    """TFDS's own default: $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
    return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def open_source(name: str, split: str, data_dir: str | None) -> Any:
    """A random-access TFDS data source whose `image` feature stays encoded bytes."""
    data_dir = data_dir or default_data_dir()
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        builder = None
    if builder is None or not builder.is_prepared():
        raise DatasetMissingError(
            f"dataset {name!r} is not prepared in data_dir {data_dir}; "
            "build it with `tfds build ... --file_format=array_record` (see README)"
        )
    try:  # a split name or a TFDS slice of one ("test[:64]", "train[:10%]")
        builder.info.splits[split]
    except (KeyError, ValueError, AssertionError):
        raise ValueError(
            f"dataset {name!r} has no split {split!r}; it has {list(builder.info.splits)}"
        ) from None
    if builder.info.file_format != tfds.core.FileFormat.ARRAY_RECORD:
        raise ValueError(
            f"dataset {name!r} in {builder.data_dir} is stored as "
            f"{builder.info.file_format.value}; random access needs ArrayRecord: rebuild with "
            "--file_format=array_record"
        )
    return builder.as_data_source(split=split, decoders={"image": tfds.decode.SkipDecoding()})


def default_config() -> ml_collections.ConfigDict:
    """The `data` and `input` config sections with ImageNet-style defaults (torchvision sizes)."""
    config = ml_collections.ConfigDict()
    config.data = ml_collections.ConfigDict()
    config.data.name = "imagenot/256"  # TFDS name[/config][:version]
    # None: $TFDS_DATA_DIR, else ~/tensorflow_datasets
    config.data.data_dir = ml_collections.config_dict.placeholder(str)
    config.data.train_split = "train"
    config.data.eval_split = "validation"

    config.input = ml_collections.ConfigDict()
    config.input.seed = 0
    config.input.global_batch_size = 256  # images per step over all processes
    config.input.eval_batch_size = 256
    config.input.image_size = 224  # RandomResizedCrop output (px)
    config.input.rrc_scale = (0.08, 1.0)  # fraction of the image area
    config.input.rrc_ratio = (3 / 4, 4 / 3)  # aspect ratio w/h
    config.input.hflip = True
    # torchvision reference `--auto-augment`: None, "ra" (RandAugment), "ta_wide"
    # (TrivialAugmentWide) or "imagenet" (AutoAugment), applied after the flip.
    config.input.auto_augment = ml_collections.config_dict.placeholder(str)
    config.input.ra_magnitude = 9  # --ra-magnitude: RandAugment's bin of 31
    # The preset passes its --interpolation (default bilinear) to the policy: "nearest" | "bilinear"
    config.input.auto_augment_interpolation = "bilinear"
    # --random-erase: RandomErasing probability (0: off), filled with round(input.mean).
    config.input.random_erase = 0.0
    config.input.eval_resize = 256  # shorter side (px) before the center crop
    config.input.eval_crop = 224
    # Decode large JPEGs at a reduced DCT scale when the crop will be shrunk anyway: several times
    # faster on full-size images, a few grey levels off torchvision's pixels. Off for fidelity.
    config.input.dct_downscale = False
    config.input.channels = 3  # 3: grayscale sources are replicated; 1: keep one channel
    config.input.num_workers = 0  # grain worker processes per host; 0 = in the main process
    config.input.read_threads = 2  # threads per worker, each building whole batches
    # Batches buffered per worker; host memory ~ prefetch * workers * batch bytes
    # (2 * 16 * 38 MB for 256 images of 224 px), so keep it small.
    config.input.prefetch = 2
    return config


# ---------------------------------------------------------------------------------------------
# Per-example transforms (pure functions of the record and, for train, a grain-seeded RNG).
# ---------------------------------------------------------------------------------------------


def _train_example(
    source: Any,
    cfg: ml_collections.ConfigDict,
    train_augment: augment.TrainAugment | None,
    index: int,
    rng,
) -> Example:
    record = source[index]
    image = image_ops.decode_random_resized_crop(
        record["image"],
        cfg.image_size,
        tuple(cfg.rrc_scale),
        tuple(cfg.rrc_ratio),
        cfg.channels,
        rng,
        cfg.dct_downscale,
    )
    if cfg.hflip and rng.random() < 0.5:
        image = image_ops.hflip(image)
    if train_augment is not None:  # auto-augment policy, then RandomErasing
        image = train_augment(image, rng)
    return {
        "image": image,
        "label": np.int32(record["label"]),
        "index": np.int64(index),
    }


def _eval_example(source: Any, cfg: ml_collections.ConfigDict, index: int) -> Example:
    if index < 0:  # Padding: same shapes, mask False, never counted.
        return {
            "image": np.zeros((cfg.eval_crop, cfg.eval_crop, cfg.channels), np.uint8),
            "label": np.int32(0),
            "index": np.int64(-1),
            "key": b"",
            "mask": np.bool_(False),
        }
    record = source[int(index)]
    image = image_ops.decode_resize_center_crop(
        record["image"], cfg.eval_resize, cfg.eval_crop, cfg.channels, cfg.dct_downscale
    )
    return {
        "image": image,
        "label": np.int32(record["label"]),
        "index": np.int64(index),
        "key": bytes(record.get("key", b"")),
        "mask": np.bool_(True),
    }


# ---------------------------------------------------------------------------------------------
# Pipelines.
# ---------------------------------------------------------------------------------------------


def per_process_batch_size(global_batch_size: int, shard: ProcessShard) -> int:
    if global_batch_size % shard.count:
        raise ValueError(
            f"input.global_batch_size={global_batch_size} is not divisible by the "
            f"{shard.count} JAX processes"
        )
    return global_batch_size // shard.count


def eval_indices(num_examples: int, batch_size: int, shard: ProcessShard) -> np.ndarray:
    """This process's record indices, padded with -1 to the batch count shared by all processes."""
    mine = np.arange(shard.index, num_examples, shard.count, dtype=np.int64)
    per_process = -(-num_examples // shard.count)
    padded = -(-per_process // batch_size) * batch_size
    return np.concatenate([mine, np.full(padded - len(mine), -1, np.int64)])


def _finish(ds: grain.MapDataset, cfg: ml_collections.ConfigDict) -> grain.IterDataset:
    it = ds.to_iter_dataset(
        grain.ReadOptions(num_threads=cfg.read_threads, prefetch_buffer_size=cfg.prefetch)
    )
    if cfg.num_workers > 0:
        # Grain's worker start-up reads absl flags; outside an absl app (tests, notebooks) they
        # are unparsed and reading them raises, so accept the defaults.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=cfg.num_workers))
        atexit.register(_drain_shared_memory_unlinks)  # registering twice is a no-op
    return it


def _drain_shared_memory_unlinks() -> None:
    """Waits for grain's pending shared-memory unlinks at interpreter exit.

    grain unlinks the shared memory of consumed worker batches on a background thread pool; at
    exit its pending jobs are dropped and multiprocessing's resource tracker removes the segments
    itself, warning about "leaked shared_memory objects". Draining the pool first avoids both.
    Private grain names: if they change this is a no-op and only the warning comes back.
    """
    try:
        from grain._src.python.ipc.shared_memory_array import SharedMemoryArray

        pool = SharedMemoryArray._del_thread_pool
        if pool is not None:
            SharedMemoryArray._disable_async_del()  # later __del__s unlink synchronously
            pool.close()
            pool.join()
    except (ImportError, AttributeError):
        pass


def make_train_dataset(
    config: ml_collections.ConfigDict, shard: ProcessShard | None = None
) -> grain.IterDataset:
    """Infinite stream of training batches {image uint8 BHWC, label int32, index int64}."""
    shard = shard or ProcessShard.from_jax()
    cfg = config.input
    train_augment = augment.train_augment(cfg)  # validates its keys before any data is opened
    source = open_source(config.data.name, config.data.train_split, config.data.get("data_dir"))
    batch = per_process_batch_size(cfg.global_batch_size, shard)
    ds = (
        grain.MapDataset.range(len(source))
        .seed(cfg.seed)
        .shuffle()
        .repeat(None)  # reseeds the shuffle each epoch
        .random_map(functools.partial(_train_example, source, cfg, train_augment))
    )
    # Slicing after the (lazy) transforms keeps each element's augmentation a function of its
    # position in the global stream, whatever the number of processes.
    ds = ds[shard.index :: shard.count].batch(batch, drop_remainder=True)
    return _finish(ds, cfg)


def make_eval_dataset(
    config: ml_collections.ConfigDict, split: str | None = None, shard: ProcessShard | None = None
) -> grain.IterDataset:
    """One pass of eval batches {image, label, index, key, mask}; padding has mask False."""
    shard = shard or ProcessShard.from_jax()
    cfg = config.input
    source = open_source(
        config.data.name, split or config.data.eval_split, config.data.get("data_dir")
    )
    batch = per_process_batch_size(cfg.eval_batch_size, shard)
    ds = grain.MapDataset.source(eval_indices(len(source), batch, shard))
    ds = ds.map(functools.partial(_eval_example, source, cfg)).batch(batch, drop_remainder=True)
    return _finish(ds, cfg)


def num_eval_batches(config: ml_collections.ConfigDict, split: str | None = None) -> int:
    """Number of eval batches every process yields (identical across processes)."""
    source = open_source(
        config.data.name, split or config.data.eval_split, config.data.get("data_dir")
    )
    shard = ProcessShard(0, ProcessShard.from_jax().count)
    batch = per_process_batch_size(config.input.eval_batch_size, shard)
    return len(eval_indices(len(source), batch, shard)) // batch

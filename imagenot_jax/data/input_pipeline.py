"""Grain input pipelines over TFDS ArrayRecord data sources.

Train: a seeded global shuffle per epoch over the whole split, repeated forever; each JAX process
takes every `process_count`-th element of that one global stream (so shards are disjoint and each
epoch is partitioned across processes), then decode + RandomResizedCrop + flip (+ optional
auto-augment policy and RandomErasing, see augment.py), batched with drop_remainder; the records of
a batch are read with one batched ArrayRecord read and parsed for just the fields used. Eval: each
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
from collections.abc import Sequence
from typing import Any, NamedTuple

import grain
import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from absl import flags
from tensorflow_datasets.proto import tf_example_pb2

from imagenot_jax.data import augment, corrupt, data_dirs, datasets, image_ops
from imagenot_jax.data.corrupt import CorruptRecordError
from imagenot_jax.errors import MissingInputError, UserError

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


class DatasetMissingError(MissingInputError):
    """The named TFDS dataset has not been prepared in the data dir."""


def open_source(name: str, split: str, data_dir: str | None) -> Any:
    """A random-access TFDS data source whose `image` feature stays encoded bytes."""
    data_dir = data_dirs.resolve_data_dir(data_dir)
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        builder = None
    if builder is None or not builder.is_prepared():
        raise DatasetMissingError(
            f"dataset {name!r} is not prepared in data_dir {data_dir}; "
            f"{datasets.preparation_hint(name)}"
        )
    try:  # a split name or a TFDS slice of one ("test[:64]", "train[:10%]")
        builder.info.splits[split]
    except (KeyError, ValueError, AssertionError):
        raise UserError(
            f"dataset {name!r} has no split {split!r}; it has {list(builder.info.splits)}"
        ) from None
    if builder.info.file_format != tfds.core.FileFormat.ARRAY_RECORD:
        raise UserError(
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
    # None: $TFDS_DATA_DIR, else the checkout's .data/tensorflow_datasets when it exists, else
    # ~/tensorflow_datasets (data_dirs.default_data_dir_and_origin)
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
    # grain worker processes per JAX process: -1 = one per core this process may use, less one
    # for the trainer (resolve_num_workers); 0 = decode and augment in the main process.
    config.input.num_workers = -1
    config.input.read_threads = 2  # threads per worker, each building whole batches
    # Batches buffered per worker; host memory ~ (prefetch + 1) * workers * batch bytes
    # (3 * 15 * 38 MB for 256 images of 224 px), so keep it small.
    config.input.prefetch = 2
    # A record that cannot be read or decoded: False = stop with an error naming the shard and
    # record; True = skip it with a counted warning (train: a good image of the same batch
    # takes its place; eval: it is left out of the counts, like padding).
    config.input.skip_corrupt_records = False
    return config


# ---------------------------------------------------------------------------------------------
# Records: batched ArrayRecord reads, parsed for the three fields the pipelines use.
# ---------------------------------------------------------------------------------------------


class Record(NamedTuple):
    image: bytes  # encoded (JPEG/PNG) bytes, never decoded by TFDS
    label: int
    key: bytes  # b"" where the dataset has no `key` feature


_FAST_FIELDS = {"image": "O", "label": "i", "key": "O"}  # numpy kinds: bytes, integer


class RecordReader:
    """Reads `Record`s for a batch of indices with one ArrayRecord `__getitems__` call.

    TFDS's own deserialization (`deserialize_example_np`) converts every feature of the example
    to numpy (captions, scores, ...) and costs about as much per record as a fifth of the JPEG
    decode; parsing the tf.train.Example proto and taking only image/label/key is ~20x cheaper.
    Datasets whose fields are not plain scalars of those types fall back to TFDS's path.
    """

    def __init__(self, source: Any) -> None:
        self.source = source
        self.fast = _fast_parse_applies(source.dataset_info.features.get_serialized_info())

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """One record as the dict a TFDS data source gives (image, label, key)."""
        return self.read([index])[0]._asdict()

    def read(self, indices: Sequence[int]) -> list[Record]:
        indices = [int(i) for i in indices]
        try:
            return self._read(indices)
        except RuntimeError as error:
            if "Riegeli" not in str(error):  # array_record's reader: checksums, truncation
                raise
            for index in indices:  # the batched read does not say which record failed
                try:
                    self._read([index])
                except RuntimeError as one:
                    raise CorruptRecordError.at(self.where(index), str(one)) from None
            raise

    def where(self, index: int) -> str:
        """'record R of shard PATH' for the split's `index`-th record."""
        instructions = getattr(self.source.data_source, "_read_instructions", None)
        for instruction in instructions or ():  # array_record's split into shard files
            if index < instruction.num_records:
                return f"record {instruction.start + index} of shard {instruction.filename}"
            index -= instruction.num_records
        return f"record {index} of {self.source}"

    def _read(self, indices: list[int]) -> list[Record]:
        if not self.fast:
            return [
                Record(r["image"], int(r["label"]), bytes(r.get("key", b"")))
                for r in self.source.__getitems__(indices)
            ]
        return [_parse(raw) for raw in self.source.data_source.__getitems__(indices)]


def _fast_parse_applies(info: dict[str, Any]) -> bool:
    """image and label present (key optional), each stored as a scalar of the expected type."""
    if not {"image", "label"} <= info.keys():
        return False
    return all(
        info[name].shape == () and np.dtype(info[name].np_dtype).kind == kind
        for name, kind in _FAST_FIELDS.items()
        if name in info
    )


def _parse(serialized: bytes) -> Record:
    feature = tf_example_pb2.Example.FromString(serialized).features.feature
    key = feature["key"].bytes_list.value[0] if "key" in feature else b""
    return Record(feature["image"].bytes_list.value[0], feature["label"].int64_list.value[0], key)


# ---------------------------------------------------------------------------------------------
# Transforms (pure functions of the record and, for train, a grain-seeded RNG).
# ---------------------------------------------------------------------------------------------

RngState = dict[str, Any]  # np.random.Philox's bit_generator.state


def _capture_rng(index: int, rng: np.random.Generator) -> tuple[int, RngState]:
    """grain's per-element generator for this stream position, saved for the batched transform.

    grain's `random_map` hands out a Philox generator keyed by (seed, position) and reuses it
    after the call returns; saving its state (~10 us) lets `_train_batch` replay exactly the
    draws it would have given, so the stream is the same as transforming element by element.
    """
    return int(index), rng.bit_generator.state


def _train_image(
    data: bytes,
    cfg: ml_collections.ConfigDict,
    train_augment: augment.TrainAugment | None,
    rng: np.random.Generator,
) -> np.ndarray:
    image = image_ops.decode_random_resized_crop(
        data,
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
    return image


def _train_batch(
    reader: RecordReader,
    cfg: ml_collections.ConfigDict,
    train_augment: augment.TrainAugment | None,
    draws: Sequence[tuple[int, RngState]],
) -> Example:
    """One batch: one batched read, then each image from its own replayed generator."""
    indices = [index for index, _ in draws]
    size = cfg.image_size
    images = np.empty((len(draws), size, size, cfg.channels), np.uint8)
    labels = np.empty(len(draws), np.int32)
    rng = np.random.Generator(np.random.Philox())
    skipping = cfg.get("skip_corrupt_records", False)
    records = corrupt.read_skipping(reader.read, indices) if skipping else reader.read(indices)
    good = []
    for i, ((_, state), record) in enumerate(zip(draws, records, strict=True)):
        rng.bit_generator.state = state
        try:
            if record is not None:
                images[i] = _train_image(record.image, cfg, train_augment, rng)
                labels[i] = record.label
                good.append(i)
        except OSError as error:  # PIL: bytes that are not a whole image
            bad = CorruptRecordError.at(reader.where(indices[i]), f"image: {error}")
            if not skipping:
                raise bad from None
            corrupt.skip(bad)
    batch = {"image": images, "label": labels, "index": np.asarray(indices, np.int64)}
    return corrupt.fill_skipped(batch, good, reader.where)


def _eval_image(source: Any, cfg: ml_collections.ConfigDict, index: int, data: bytes):
    try:
        return image_ops.decode_resize_center_crop(
            data, cfg.eval_resize, cfg.eval_crop, cfg.channels, cfg.dct_downscale
        )
    except OSError as error:  # PIL: bytes that are not a whole image
        where = source.where(index) if isinstance(source, RecordReader) else f"record {index}"
        raise CorruptRecordError.at(where, f"image: {error}") from None


def _eval_example(source: Any, cfg: ml_collections.ConfigDict, index: int) -> Example:
    """`source[i]` is a dict with image, label and optionally key: a RecordReader, a TFDS data
    source, or a wrapper of one (the evaluation's relabeled views)."""
    if index < 0:  # Padding: same shapes, mask False, never counted.
        return {
            "image": np.zeros((cfg.eval_crop, cfg.eval_crop, cfg.channels), np.uint8),
            "label": np.int32(0),
            "index": np.int64(-1),
            "key": b"",
            "mask": np.bool_(False),
        }
    try:
        record = source[int(index)]
        image = _eval_image(source, cfg, index, record["image"])
    except CorruptRecordError as error:
        if not cfg.get("skip_corrupt_records", False):
            raise
        corrupt.skip(error)
        return _eval_example(source, cfg, -1)  # left out of the counts, like padding
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
        raise UserError(
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


def resolve_num_workers(num_workers: int) -> int:
    """`input.num_workers`, with -1 (auto) resolved to the cores this process may use, less one.

    Decode and augmentation are CPU-bound and one worker keeps one core busy; the one core left
    runs the trainer itself (Python step loop, host-to-device copies, checkpoint writes), which
    would otherwise be starved by the workers and stall the accelerator. Cores are counted from
    the CPU affinity, so a launcher that pins several processes per host (SLURM --cpus-per-task,
    taskset) gives each its share; unpinned processes sharing a host should set a number. On a
    one-core machine auto is 0: a worker process would only add IPC to the same core.
    """
    if num_workers >= 0:
        return num_workers
    if num_workers != -1:
        raise UserError(f"input.num_workers must be >= 0 or -1 (auto); got {num_workers}")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max((cores or 1) - 1, 0)


def _finish(ds: grain.MapDataset, cfg: ml_collections.ConfigDict) -> grain.IterDataset:
    it = ds.to_iter_dataset(
        grain.ReadOptions(num_threads=cfg.read_threads, prefetch_buffer_size=cfg.prefetch)
    )
    num_workers = resolve_num_workers(cfg.num_workers)
    if num_workers > 0:
        # Grain's worker start-up reads absl flags; outside an absl app (tests, notebooks) they
        # are unparsed and reading them raises, so accept the defaults.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
        atexit.register(_drain_shared_memory_unlinks)  # registering twice is a no-op
    return it


class _ResumableBatches(grain.IterDataset):
    """Yields batches[0], batches[1], ... with an iterator state that is just the next index."""

    def __init__(self, batches: grain.MapDataset, cfg: ml_collections.ConfigDict) -> None:
        super().__init__()
        self._batches, self._cfg = batches, cfg

    def __iter__(self) -> BatchIterator:
        return BatchIterator(self._batches, self._cfg)


class BatchIterator(grain.DatasetIterator):
    """A grain iterator over a MapDataset of batches whose state is {"next_index": n}.

    grain's multiprocess state lists one state per worker, so it restores only into the same
    number of workers; with `num_workers=-1` that number follows the host's cores, and a run
    resumed on another machine (or another CPU allotment) would fail to restore. Every batch is
    a pure function of its index, so the index alone is a complete state: a restored iterator
    restarts grain at `batches[n:]` with whatever number of workers this host has. The state is
    also what grain's in-process iterator saved before, so those checkpoints still restore.
    """

    def __init__(self, batches: grain.MapDataset, cfg: ml_collections.ConfigDict) -> None:
        super().__init__()
        self._batches, self._cfg = batches, cfg
        self._next_index = 0
        self._inner: grain.DatasetIterator | None = None

    def _iterator(self) -> grain.DatasetIterator:
        if self._inner is None:  # built lazily: set_state right after iter() starts no workers
            self._inner = iter(_finish(self._batches[self._next_index :], self._cfg))
        return self._inner

    def __next__(self) -> Example:
        batch = next(self._iterator())
        self._next_index += 1
        return batch

    def get_state(self) -> dict[str, Any]:
        return {"next_index": self._next_index}

    def set_state(self, state: dict[str, Any]) -> None:
        self.close()
        if "next_index" in state:
            self._next_index = int(state["next_index"])
        else:  # grain's multiprocess state (checkpoints from before): batches per worker
            self._next_index = sum(int(w["next_index"]) for w in state["iterators_in_use_states"])

    def start_prefetch(self) -> None:
        self._iterator().start_prefetch()

    def close(self) -> None:
        if self._inner is not None:
            self._inner.close()
            self._inner = None


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
        .random_map(_capture_rng)
    )
    # Slicing after the random_map keeps each element's augmentation a function of its position
    # in the global stream, whatever the number of processes.
    ds = ds[shard.index :: shard.count].batch(batch, drop_remainder=True, batch_fn=list)
    ds = ds.map(functools.partial(_train_batch, RecordReader(source), cfg, train_augment))
    return _ResumableBatches(ds, cfg)


def make_eval_dataset(
    config: ml_collections.ConfigDict, source: Any = None, shard: ProcessShard | None = None
) -> grain.IterDataset:
    """One pass of eval batches {image, label, index, key, mask}; padding has mask False.

    `source`: any random-access source of {image, label[, key]} records (a RecordReader, a TFDS
    data source or a relabeling view of one); default: the config's eval split."""
    shard = shard or ProcessShard.from_jax()
    cfg = config.input
    if source is None:
        data = config.data
        source = RecordReader(open_source(data.name, data.eval_split, data.get("data_dir")))
    batch = per_process_batch_size(cfg.eval_batch_size, shard)
    ds = grain.MapDataset.source(eval_indices(len(source), batch, shard))
    ds = ds.map(functools.partial(_eval_example, source, cfg))
    ds = ds.batch(batch, drop_remainder=True)
    return _finish(ds, cfg)

"""Grain input pipeline: determinism, per-process sharding, resumption, crops and shapes."""

from __future__ import annotations

import os

import grain
import numpy as np
import pytest

from imagenot_jax.data import augment, input_pipeline
from imagenot_jax.data.input_pipeline import ProcessShard
from tests.helpers import PIPELINE_TEST, PIPELINE_TRAIN, assert_same_batches, pipeline_config, take

# --- determinism and epochs ------------------------------------------------------------------


def test_same_seed_same_batches_different_seed_differs(pipeline_data_dir):
    a = take(
        input_pipeline.make_train_dataset(pipeline_config(pipeline_data_dir), ProcessShard()), 4
    )
    b = take(
        input_pipeline.make_train_dataset(pipeline_config(pipeline_data_dir), ProcessShard()), 4
    )
    assert_same_batches(a, b)
    c = take(
        input_pipeline.make_train_dataset(
            pipeline_config(pipeline_data_dir, seed=1), ProcessShard()
        ),
        4,
    )
    assert not all(np.array_equal(x["index"], y["index"]) for x, y in zip(a, c, strict=True))
    assert not all(np.array_equal(x["image"], y["image"]) for x, y in zip(a, c, strict=True))


def test_each_epoch_is_a_new_permutation_of_the_split(pipeline_data_dir):
    batches = take(
        input_pipeline.make_train_dataset(pipeline_config(pipeline_data_dir), ProcessShard()), 12
    )
    order = np.concatenate([b["index"] for b in batches])
    first, second = order[:PIPELINE_TRAIN], order[PIPELINE_TRAIN:]
    assert sorted(first) == list(range(PIPELINE_TRAIN)) == sorted(second)
    assert not np.array_equal(first, second)
    assert not np.array_equal(first, np.arange(PIPELINE_TRAIN))


# --- multi-process sharding ------------------------------------------------------------------


def test_train_shards_of_two_processes_are_disjoint_and_cover_each_epoch(pipeline_data_dir):
    config = pipeline_config(pipeline_data_dir, global_batch_size=10)  # 5 per process
    per_process = [
        np.concatenate(
            [b["index"] for b in take(input_pipeline.make_train_dataset(config, shard), 6)]
        )
        for shard in (ProcessShard(0, 2), ProcessShard(1, 2))
    ]
    assert all(len(indices) == PIPELINE_TRAIN // 2 for indices in per_process)
    assert not set(per_process[0]) & set(per_process[1])
    assert set(per_process[0]) | set(per_process[1]) == set(range(PIPELINE_TRAIN))


def test_eval_covers_every_example_once_across_processes(pipeline_data_dir):
    config = pipeline_config(
        pipeline_data_dir, eval_batch_size=8
    )  # 4 per process; 25 examples -> padding
    keys, batch_counts = [], []
    for shard in (ProcessShard(0, 2), ProcessShard(1, 2)):
        batches = list(input_pipeline.make_eval_dataset(config, shard=shard))
        batch_counts.append(len(batches))
        for batch in batches:
            assert batch["image"].shape == (4, 24, 24, 3)
            keys.extend(batch["key"][batch["mask"]].tolist())
            assert (batch["index"][~batch["mask"]] == -1).all()
    assert batch_counts[0] == batch_counts[1] == 4  # ceil(ceil(25 / 2) / 4)
    expected = {f"test_{i:05d}".encode() for i in range(PIPELINE_TEST)}
    assert len(keys) == PIPELINE_TEST and set(keys) == expected


def test_eval_indices_pad_to_a_common_batch_count():
    for n, batch, count in [(25, 4, 2), (7, 3, 3), (1, 5, 4), (100, 10, 1)]:
        shards = [
            input_pipeline.eval_indices(n, batch, ProcessShard(i, count)) for i in range(count)
        ]
        assert len({len(s) for s in shards}) == 1 and len(shards[0]) % batch == 0
        real = np.concatenate([s[s >= 0] for s in shards])
        assert sorted(real) == list(range(n))


def test_global_batch_must_divide_over_processes(pipeline_data_dir):
    with pytest.raises(ValueError, match="global_batch_size=10 is not divisible by the 3"):
        input_pipeline.make_train_dataset(pipeline_config(pipeline_data_dir), ProcessShard(0, 3))


# --- resumption --------------------------------------------------------------------------------


@pytest.mark.parametrize("num_workers", [0, 2])
def test_restored_iterator_yields_the_same_following_batches(pipeline_data_dir, num_workers):
    config = pipeline_config(pipeline_data_dir, num_workers=num_workers)
    iterator = iter(input_pipeline.make_train_dataset(config, ProcessShard()))
    _ = [next(iterator) for _ in range(3)]
    state = iterator.get_state()
    expected = [next(iterator) for _ in range(8)]  # crosses an epoch boundary (6 per epoch)
    iterator.close()

    restored = iter(input_pipeline.make_train_dataset(config, ProcessShard()))
    restored.set_state(state)
    assert_same_batches([next(restored) for _ in range(8)], expected)
    restored.close()


def test_workers_do_not_change_the_stream(pipeline_data_dir):
    single = take(
        input_pipeline.make_train_dataset(pipeline_config(pipeline_data_dir), ProcessShard()), 4
    )
    iterator = iter(
        input_pipeline.make_train_dataset(
            pipeline_config(pipeline_data_dir, num_workers=2), ProcessShard()
        )
    )
    multi = [next(iterator) for _ in range(4)]
    iterator.close()
    assert_same_batches(single, multi)


# --- shapes, dtypes, values ------------------------------------------------------------------


def test_grayscale_is_replicated_or_kept_as_configured(pipeline_data_dir):
    rgb = take(
        input_pipeline.make_train_dataset(pipeline_config(pipeline_data_dir), ProcessShard()), 1
    )[0]
    assert rgb["image"].shape == (10, 24, 24, 3) and rgb["image"].dtype == np.uint8
    assert rgb["label"].dtype == np.int32 and set(rgb["label"]) <= set(range(10))
    np.testing.assert_array_equal(rgb["image"][..., 0], rgb["image"][..., 2])
    gray = take(
        input_pipeline.make_train_dataset(
            pipeline_config(pipeline_data_dir, channels=1), ProcessShard()
        ),
        1,
    )[0]
    assert gray["image"][0].shape == (24, 24, 1)
    evaluated = next(
        iter(
            input_pipeline.make_eval_dataset(
                pipeline_config(pipeline_data_dir, channels=1), shard=ProcessShard()
            )
        )
    )
    assert evaluated["image"].shape == (8, 24, 24, 1)


def test_photo_train_and_eval_shapes_and_value_ranges(pipeline_data_dir):
    config = pipeline_config(
        pipeline_data_dir, name="imagenot/full", global_batch_size=4, eval_batch_size=2,
        image_size=64, eval_resize=73, eval_crop=64,
    )  # fmt: skip
    train = take(input_pipeline.make_train_dataset(config, ProcessShard()), 3)
    for batch in train:
        assert batch["image"].shape == (4, 64, 64, 3) and batch["image"].dtype == np.uint8
        assert batch["image"].std() > 10  # real content, not padding
    evaluated = list(input_pipeline.make_eval_dataset(config, shard=ProcessShard()))
    assert len(evaluated) == 1 and evaluated[0]["mask"].all()
    assert evaluated[0]["image"].shape == (2, 64, 64, 3)
    assert 20 < evaluated[0]["image"].mean() < 235


def test_missing_dataset_is_a_clear_error(tmp_path):
    config = pipeline_config(tmp_path, name="fashion_mnist_local/first5")
    with pytest.raises(input_pipeline.DatasetMissingError, match="not prepared in data_dir"):
        input_pipeline.make_train_dataset(config, ProcessShard())


# --- worker count, batched reads -------------------------------------------------------------


def test_auto_workers_follow_the_cpu_affinity_and_explicit_counts_win():
    assert input_pipeline.default_config().input.num_workers == -1
    cores = len(os.sched_getaffinity(0))
    assert input_pipeline.resolve_num_workers(-1) == max(cores - 1, 0)
    assert input_pipeline.resolve_num_workers(0) == 0
    assert input_pipeline.resolve_num_workers(3) == 3
    with pytest.raises(ValueError, match="-1 \\(auto\\); got -2"):
        input_pipeline.resolve_num_workers(-2)
    allowed = os.sched_getaffinity(0)
    try:  # one core: workers would only add IPC on it, so auto runs in-process
        os.sched_setaffinity(0, {min(allowed)})
        assert input_pipeline.resolve_num_workers(-1) == 0
    finally:
        os.sched_setaffinity(0, allowed)


def test_state_restores_into_any_number_of_workers(pipeline_data_dir):
    """The state is a batch index, so a run resumed on a host with other cores (auto) goes on."""
    config = pipeline_config(pipeline_data_dir, num_workers=2)
    iterator = iter(input_pipeline.make_train_dataset(config, ProcessShard()))
    _ = [next(iterator) for _ in range(5)]
    state = iterator.get_state()
    expected = [next(iterator) for _ in range(4)]
    iterator.close()
    assert state == {"next_index": 5}
    for workers in (0, 1, -1):
        config = pipeline_config(pipeline_data_dir, num_workers=workers)
        restored = iter(input_pipeline.make_train_dataset(config, ProcessShard()))
        restored.set_state(state)
        assert_same_batches([next(restored) for _ in range(4)], expected)
        restored.close()


def test_grain_multiprocess_states_of_earlier_checkpoints_still_restore(pipeline_data_dir):
    """Before, two workers saved grain's per-worker state: batches 0, 2 and 1 were consumed."""
    legacy = {
        "next_index_in_cycle": 1,
        "next_index_in_datasets": 2,
        "iterators_in_use_indices": [0, 1],
        "iterators_in_use_states": [{"next_index": 2}, {"next_index": 1}],
        "exhausted": [0, 0],
        "future_states": {},
    }
    config = pipeline_config(pipeline_data_dir)
    expected = take(input_pipeline.make_train_dataset(config, ProcessShard()), 5)[3:]
    restored = iter(input_pipeline.make_train_dataset(config, ProcessShard()))
    restored.set_state(legacy)
    assert_same_batches([next(restored) for _ in range(2)], expected)


@pytest.mark.parametrize("name", ["fashion_mnist_local/all", "imagenot/full"])
def test_batched_record_reads_match_tfds_deserialization(pipeline_data_dir, name):
    source = input_pipeline.open_source(name, "train", str(pipeline_data_dir))
    reader = input_pipeline.RecordReader(source)
    assert reader.fast  # the proto parse, not TFDS's per-feature numpy conversion
    indices = list(np.random.default_rng(0).permutation(len(source))[:7])
    fast = reader.read(indices)
    reader.fast = False
    assert reader.read(indices) == fast
    for index, record in zip(indices, fast, strict=True):
        expected = source[int(index)]
        assert record.image == expected["image"] and record.label == expected["label"]
        assert record.key == expected["key"] and record.image[:2] in (b"\x89P", b"\xff\xd8")


def test_batched_transform_replays_grain_per_element_random_map(pipeline_data_dir):
    """Reading and augmenting a batch at a time gives what grain's per-element map gives."""
    config = pipeline_config(
        pipeline_data_dir, name="imagenot/full", global_batch_size=4, image_size=40
    )
    config.input.update(auto_augment="ta_wide", random_erase=0.5, mean=(120.0, 110.0, 100.0))
    cfg = config.input
    source = input_pipeline.open_source("imagenot/full", "train", str(pipeline_data_dir))
    train_augment = augment.train_augment(cfg)

    def one(index, rng):
        image = input_pipeline._train_image(source[int(index)]["image"], cfg, train_augment, rng)
        return {"image": image, "label": np.int32(source[int(index)]["label"]), "index": index}

    per_element = (
        grain.MapDataset.range(len(source)).seed(cfg.seed).shuffle().repeat(None).random_map(one)
    )
    expected = [per_element[i] for i in range(12)]
    batches = take(input_pipeline.make_train_dataset(config, ProcessShard()), 3)
    got_images = np.concatenate([b["image"] for b in batches])
    np.testing.assert_array_equal(got_images, np.stack([e["image"] for e in expected]))
    np.testing.assert_array_equal(
        np.concatenate([b["index"] for b in batches]), [e["index"] for e in expected]
    )
    np.testing.assert_array_equal(
        np.concatenate([b["label"] for b in batches]), [e["label"] for e in expected]
    )

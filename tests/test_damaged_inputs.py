"""Damaged checkpoints: resume falls back past them, evaluate names them in one line, and
evaluate reads only the weights (not the optimizer state)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorstore as ts

from imagenot_jax.data import input_pipeline
from imagenot_jax.errors import UserError
from imagenot_jax.evaluate import evaluation
from imagenot_jax.train import checkpoint, sharding, trainer
from tests.helpers import REPO, checkpoint_steps, cli_overrides, run_main, tiny_config

STEPS = {"schedule.num_steps": 6, "optim.ema_decay": 0.9, "optim.ema_steps": 1}  # saves 3, 6


@pytest.fixture(scope="module")
def trained(tmp_path_factory, fake_fashion_mnist):
    workdir = tmp_path_factory.mktemp("trained") / "run"
    result = run_main(workdir, fake_fashion_mnist, **STEPS)
    assert result.returncode == 0, result.stderr[-3000:]
    assert checkpoint_steps(workdir) == [3, 6]
    return workdir


def _copy(trained, tmp_path):
    shutil.copytree(trained, tmp_path / "run")
    return tmp_path / "run"


def _truncate_arrays(workdir, step: int) -> None:
    """Cut every array data file of `step` short, as a full disk would."""
    for file in (workdir / "checkpoints" / str(step) / "state" / "d").iterdir():
        os.truncate(file, file.stat().st_size // 2)


def _stderr_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def test_resume_falls_back_past_a_truncated_checkpoint(trained, tmp_path, fake_fashion_mnist):
    workdir = _copy(trained, tmp_path)
    _truncate_arrays(workdir, 6)
    result = run_main(workdir, fake_fashion_mnist, **STEPS)
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [line for line in _stderr_lines(result) if "is damaged" in line]
    assert len(warnings) == 1 and "checkpoint step 6 is damaged" in warnings[0]
    assert "/checkpoints/6/state/d/" in warnings[0]
    assert "resuming from step 3" in result.stderr
    assert "Event loop is closed" not in result.stderr
    assert (workdir / "checkpoints" / "6.damaged").is_dir()  # kept aside, for inspection
    assert checkpoint_steps(workdir) == [3, 6]  # step 6 redone


def test_resume_without_an_intact_checkpoint_is_a_user_error(trained, tmp_path):
    workdir = _copy(trained, tmp_path)
    _truncate_arrays(workdir, 6)
    (workdir / "checkpoints" / "3" / "state" / "_METADATA").write_text("{garbled")
    config = evaluation.load_run_config(str(workdir))
    checkpointer = checkpoint.Checkpointer(str(workdir), config.checkpoint)
    with pytest.raises(UserError, match=r"no intact checkpoint in .*checkpoints: .*step 6.*step 3"):
        checkpointer.latest_intact_step()
    checkpointer.close()


def test_a_checkpoint_of_another_model_is_not_taken_for_damage(trained, tmp_path):
    """Damage is told apart by reading the raw files, whatever the config: a checkpoint that
    reads back but does not fit the model fails in orbax's restore, not as a fallback."""
    workdir = _copy(trained, tmp_path)
    config = evaluation.load_run_config(str(workdir))
    config.model.kwargs.widths = (8, 8, 8)
    checkpointer = checkpoint.Checkpointer(str(workdir), config.checkpoint)
    assert checkpointer.latest_intact_step() == 6
    setup = trainer.make_setup(config, sharding.make_mesh(), num_train_examples=16)
    abstract = checkpoint.abstract_with_shardings(setup.abstract_state, setup.state_shardings)
    with pytest.raises(ValueError) as raised:
        checkpointer.restore(6, abstract)
    assert not isinstance(raised.value, UserError)
    checkpointer.close()


@pytest.mark.parametrize("damage", ["truncated", "garbled_metadata"])
def test_evaluate_of_a_damaged_checkpoint_is_one_line_exit_2(trained, tmp_path, damage):
    workdir = _copy(trained, tmp_path)
    if damage == "truncated":
        _truncate_arrays(workdir, 6)
    else:
        (workdir / "checkpoints" / "6" / "state" / "_METADATA").write_bytes(b"\x00garbage")
    command = [sys.executable, "-m", "imagenot_jax.evaluate", f"--workdir={workdir}"]
    result = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 2, result.stderr[-3000:]
    last = _stderr_lines(result)[-1]
    assert last.startswith("error: checkpoint step 6 is damaged: ")
    assert ("/checkpoints/6/state/d/" if damage == "truncated" else "_METADATA") in last
    assert last.endswith("the latest intact one is step 3 (--step=3)")
    assert "Event loop is closed" not in result.stderr


def _delete_optimizer_arrays(workdir, step: int) -> None:
    """Remove the optimizer state's arrays from the checkpoint's OCDBT database."""
    base = f"file://{workdir}/checkpoints/{step}/state/"
    store = ts.KvStore.open({"driver": "ocdbt", "base": base}).result()
    keys = [key for key in store.list().result() if key.startswith(b"opt_state.")]
    assert keys
    for key in keys:
        store.delete_range(ts.KvStore.KeyRange(key, key + b"\x00")).result()


def test_evaluate_does_not_read_the_optimizer_state(trained, tmp_path):
    full, _ = evaluation.evaluate_checkpoint(str(trained))
    workdir = _copy(trained, tmp_path)
    _delete_optimizer_arrays(workdir, 6)
    partial, _ = evaluation.evaluate_checkpoint(str(workdir))
    assert partial["ema"] and partial["step"] == 6
    for metric in ("top1", "top5", "loss", "n"):
        assert partial[metric] == full[metric]
    config = evaluation.load_run_config(str(workdir))
    setup = trainer.make_setup(config, sharding.make_mesh(), num_train_examples=16)
    abstract = checkpoint.abstract_with_shardings(setup.abstract_state, setup.state_shardings)
    checkpointer = checkpoint.Checkpointer(str(workdir), config.checkpoint, read_only=True)
    with pytest.raises(ValueError):  # the arrays really are gone: a full restore fails
        checkpointer.restore(6, abstract)
    checkpointer.close()


# --- corrupt ArrayRecord shards ------------------------------------------------------------

SHARD = "fashion_mnist_local/all/1.0.0/fashion_mnist_local-{}.array_record-00000-of-00001"


@pytest.fixture(scope="module")
def corrupt_data(tmp_path_factory, fake_fashion_mnist):
    """The fake Fashion-MNIST with its train shard cut in half (the index at its end is gone:
    every read fails) and 200 bytes of its test shard's records overwritten."""
    root = tmp_path_factory.mktemp("corrupt") / "data"
    shutil.copytree(fake_fashion_mnist, root)
    train = root / SHARD.format("train")
    os.truncate(train, train.stat().st_size // 2)
    test = root / SHARD.format("test")
    data = bytearray(test.read_bytes())
    data[2000:2200] = b"\xab" * 200  # inside the first chunk of records
    test.write_bytes(bytes(data))
    return root


def _run(command: list[str]) -> subprocess.CompletedProcess:
    # A hang (a grain worker's error not reaching the parent) fails the test by the timeout.
    return subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=240, check=False
    )


@pytest.mark.parametrize("workers", [0, 2])
def test_training_on_a_truncated_shard_is_one_line_exit_2(tmp_path, corrupt_data, workers):
    command = [
        sys.executable, "-m", "imagenot_jax.main", "--config", "configs/demo.py",
        f"--workdir={tmp_path / 'run'}",
        *cli_overrides(corrupt_data, **{"schedule.num_steps": 3, "input.num_workers": workers}),
    ]  # fmt: skip
    result = _run(command)
    assert result.returncode == 2, result.stderr[-3000:]
    last = _stderr_lines(result)[-1]
    assert last.startswith("error: corrupt data: record ")
    assert f"of shard {corrupt_data / SHARD.format('train')}: Corrupted Riegeli" in last


@pytest.mark.parametrize("workers", [0, 2])
def test_evaluate_on_an_overwritten_shard_is_one_line_exit_2(
    trained, tmp_path, corrupt_data, workers
):
    workdir = _copy(trained, tmp_path)
    run_config = json.loads((workdir / "config.json").read_text())
    run_config["input"]["num_workers"] = workers  # evaluate reads the run's input config
    (workdir / "config.json").write_text(json.dumps(run_config))
    command = [
        sys.executable, "-m", "imagenot_jax.evaluate", f"--workdir={workdir}",
        f"--data_dir={corrupt_data}", "--split=test", "--batch_size=8",
    ]  # fmt: skip
    result = _run(command)
    assert result.returncode == 2, result.stderr[-3000:]
    last = _stderr_lines(result)[-1]
    assert last.startswith("error: corrupt data: record ")
    assert f"of shard {corrupt_data / SHARD.format('test')}: Corrupted Riegeli" in last


def _skipping_config(corrupt_data):
    # The test split (records 1 and 2 overwritten) for training too: some records readable.
    overrides = {"data.train_split": "test", "data.eval_split": "test"}
    return tiny_config(corrupt_data, **overrides, **{"input.skip_corrupt_records": True})


def _skip_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipped ")]


def test_skip_corrupt_records_in_training_keeps_full_batches(corrupt_data, caplog):
    config = _skipping_config(corrupt_data)
    batches = input_pipeline.make_train_dataset(config, input_pipeline.ProcessShard())
    iterator = iter(batches)
    indices = np.concatenate([next(iterator)["index"] for _ in range(3)])  # > 2 epochs of 21
    iterator.close()
    assert len(indices) == 48
    assert not {1, 2} & set(indices.tolist())  # the bad records' slots hold good ones
    warnings = _skip_warnings(caplog)
    assert warnings and all("corrupt data: record " in w for w in warnings)
    assert {w.split(" of shard")[0][-8:] for w in warnings} == {"record 1", "record 2"}
    assert "skipped so far in this process" in warnings[-1]


def test_skip_corrupt_records_in_evaluation_leaves_them_out(corrupt_data, caplog):
    config = _skipping_config(corrupt_data)
    batches = list(input_pipeline.make_eval_dataset(config, shard=input_pipeline.ProcessShard()))
    kept = np.concatenate([b["index"][b["mask"]] for b in batches])
    assert sorted(kept.tolist()) == [i for i in range(21) if i not in (1, 2)]
    assert {w.split(" of shard")[0] for w in _skip_warnings(caplog)} == {
        "skipped corrupt data: record 1",
        "skipped corrupt data: record 2",
    }

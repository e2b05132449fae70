"""Training and evaluation logging: plain log lines with epoch and ETA, the config and sample
images in TensorBoard, the evaluation progress bar on a terminal, and W&B (offline) across a
resume. One tiny training run (resnet_mini, 12 steps on the fake Fashion-MNIST) serves the
first three; W&B trains its own two short runs."""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import logging
import os
import re
import struct
import sys
import termios
import threading
import time

import jax
import numpy as np
import pytest
from PIL import Image

from imagenot_jax.errors import UserError
from imagenot_jax.evaluate import evaluation
from imagenot_jax.train import progress, trainer, wandb_writer
from imagenot_jax.train.metric_writer import MetricWriter, hparam_values
from tests.helpers import tiny_config


@contextlib.contextmanager
def absl_lines():
    """Collects what absl logs at INFO (its level is unset until absl parses its flags)."""
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger("absl")
    previous = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, fake_fashion_mnist):
    """(workdir, absl log lines) of a 12-step run, compiled as in the fast_compile fixture."""
    workdir = tmp_path_factory.mktemp("run")
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        with absl_lines() as lines:
            trainer.train_and_evaluate(tiny_config(fake_fashion_mnist), str(workdir))
    finally:
        jax.config.update("jax_disable_most_optimizations", previous)
    return workdir, lines


# --- plain log lines ---------------------------------------------------------------------------


LOG_LINE = re.compile(r"step (\d+)/12 epoch (\d+\.\d\d)/2: (.+), eta (\d+s|\d+m\d\ds|\d+h\d\dm)$")


def parse_log_lines(lines: list[str]) -> list[tuple[int, float, dict[str, str], str]]:
    """(step, epoch, {metric: value}, eta) of each metrics line."""
    matches = [m for m in map(LOG_LINE.match, lines) if m]
    return [
        (int(m[1]), float(m[2]), dict(pair.split(" ") for pair in m[3].split(", ")), m[4])
        for m in matches
    ]


def test_plain_log_lines_give_step_epoch_and_eta(trained):
    parsed = parse_log_lines(trained[1])
    train = [(step, epoch, eta) for step, epoch, values, eta in parsed if "loss" in values]
    assert all({"lr", "images_per_s"} <= values.keys() for _, _, values, _ in parsed[:1])
    # Every logging.every_steps=2, and where a checkpoint (every 3 steps) flushes the metrics.
    assert [step for step, *_ in train] == [2, 3, 4, 6, 8, 9, 10, 12]
    assert all(epoch == pytest.approx(step / 6, abs=0.005) for step, epoch, _ in train)
    assert train[-1][2] == "0s"  # nothing left at the last step
    evals = [(step, epoch) for step, epoch, values, _ in parsed if "val_top1" in values]
    assert evals == [(6, 1.0), (12, 2.0)]  # validation at each epoch's end


def test_step_rate_leaves_out_time_before_the_first_step_and_follows_recent_speed():
    rate = progress.StepRate(total_steps=1000, window=3)
    assert rate.eta_seconds(0) is None
    rate.mark(1, now=100.0)  # after the first (compiling) step
    rate.mark(11, now=110.0)
    assert rate.steps_per_second() == pytest.approx(1.0)
    assert rate.eta_seconds(11) == pytest.approx(989.0)
    rate.mark(11, now=115.0)  # the same step again (an eval line): no new point
    rate.mark(31, now=120.0)
    rate.mark(51, now=130.0)  # the window of 3 points drops the slow start: 2 steps/s now
    assert rate.steps_per_second() == pytest.approx(2.0)
    assert rate.eta_seconds(51) == pytest.approx(474.5)


def test_durations_are_compact():
    assert [progress.format_duration(s) for s in (0.4, 45, 184, 18720, 183600)] == [
        "0s",
        "45s",
        "3m04s",
        "5h12m",
        "2d03h",
    ]


# --- TensorBoard -------------------------------------------------------------------------------


def tensorboard_values(workdir) -> list[tuple[int, object]]:
    """(step, Summary.Value) of every summary in the run's event files."""
    import tensorflow as tf

    found = []
    for path in sorted((workdir / "tensorboard").glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            found += [(event.step, value) for value in event.summary.value]
    return found


def test_tensorboard_has_the_config_and_sample_images_at_step_0(trained):
    from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData

    workdir, _ = trained
    values = {value.tag: (step, value) for step, value in tensorboard_values(workdir)}
    step, start = values["_hparams_/session_start_info"]
    assert step == 0 and start.metadata.plugin_data.plugin_name == "hparams"
    hparams = HParamsPluginData.FromString(start.metadata.plugin_data.content)
    recorded = hparams.session_start_info.hparams
    assert recorded["model.name"].string_value == "resnet_mini"
    assert recorded["input.global_batch_size"].number_value == 16
    assert recorded["model.kwargs.widths"].string_value == "(4, 8, 8)"
    experiment = HParamsPluginData.FromString(
        values["_hparams_/experiment"][1].metadata.plugin_data.content
    )
    assert "val_top1" in {m.name.tag for m in experiment.experiment.metric_infos}

    step, text = values["config/text_summary"]
    written = text.tensor.string_val[0].decode()
    assert step == 0 and '"name": "resnet_mini"' in written

    step, image = values["train/images"]
    grid = np.asarray(Image.open(io.BytesIO(image.image.encoded_image_string)))
    assert step == 0 and grid.shape[2] == 3
    assert grid.shape[0] >= 28 and grid.shape[1] >= 8 * 28  # eight 28x28 images in a row
    assert grid.std() > 10  # random fake pixels, not a blank canvas


def test_a_resumed_run_logs_every_step_once(tmp_path):
    """metrics.jsonl keeps the steps up to the restored one and drops a line torn by a kill;
    later steps are appended; TensorBoard is told to purge the killed run's later events."""
    import tensorflow as tf

    records = [{"step": s, "loss": 1.0 / s} for s in range(1, 11)]
    torn = json.dumps({"step": 11, "loss": 0.1})[:9]  # the kill came mid-write
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + torn)
    writer = MetricWriter(str(tmp_path), total_steps=20, initial_step=6)
    writer.write(7, {"loss": 0.5})
    writer.write(8, {"loss": 0.25})
    writer.close()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4, 5, 6, 7, 8]
    (events,) = (tmp_path / "tensorboard").glob("events.out.tfevents.*")
    starts = [
        e.step
        for e in tf.compat.v1.train.summary_iterator(str(events))
        if e.session_log.status == e.session_log.START
    ]
    assert starts == [7]  # TensorBoard drops earlier events of step >= 7


def test_a_fresh_run_appends_without_purging(tmp_path):
    writer = MetricWriter(str(tmp_path), total_steps=5, initial_step=0)
    for step in (1, 2):
        writer.write(step, {"loss": 1.0})
        assert (tmp_path / "metrics.jsonl").read_text().count("\n") == step
    writer.close()


def test_hparam_values_flatten_the_config_to_dashboard_types():
    config = tiny_config("/nowhere")
    flat = hparam_values(config)
    assert flat["optim.lr"] == config.optim.lr and flat["model.name"] == "resnet_mini"
    assert "model.num_classes" not in flat  # None: the dashboard has no type for it
    assert all(isinstance(v, bool | int | float | str) for v in flat.values())


# --- the evaluation progress bar ---------------------------------------------------------------


@contextlib.contextmanager
def terminal_stderr(monkeypatch):
    """sys.stderr on a pseudo-terminal; yields the list its output is read into (complete once
    the block has ended). A thread reads as it comes: a full pty buffer would block the writer."""
    primary, secondary = os.openpty()
    # 24 rows of 120 columns: a new pty is 0x0, and tqdm draws nothing on a zero-row screen.
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    terminal = os.fdopen(secondary, "w")
    chunks: list[bytes] = []

    def read() -> None:
        # Reading the primary side fails (EIO) once the terminal is closed and drained.
        with contextlib.suppress(OSError):
            while chunk := os.read(primary, 65536):
                chunks.append(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    monkeypatch.setattr(sys, "stderr", terminal)
    try:
        yield chunks
    finally:
        monkeypatch.setattr(sys, "stderr", sys.__stderr__)
        # Closing the terminal while output is in flight loses it: wait for an end mark first.
        terminal.write("<end>")
        terminal.flush()
        deadline = time.monotonic() + 10
        while not b"".join(chunks).endswith(b"<end>") and time.monotonic() < deadline:
            time.sleep(0.01)
        terminal.close()
        reader.join(timeout=10)
        os.close(primary)


def test_evaluation_shows_a_progress_bar_over_its_batches_on_a_terminal(trained, monkeypatch):
    with terminal_stderr(monkeypatch) as chunks:
        result, _ = evaluation.evaluate_checkpoint(str(trained[0]), batch_size=8)
    assert result["n"] == 21
    text = b"".join(chunks).decode(errors="replace")
    # 21 test examples in batches of 8: 3 batches. tqdm redraws at most every 0.1 s, but it
    # draws the start, and the end stays on the screen.
    assert "eval:   0%" in text and "0/3 [" in text and "batch/s" in text
    assert re.search(r"\reval: 100%\|[^\r]*\| 3/3 \[[^\r]*\r\n<end>$", text)


def test_evaluation_draws_no_bar_when_stderr_is_not_a_terminal(trained, capfd):
    workdir, _ = trained
    evaluation.evaluate_checkpoint(str(workdir), batch_size=8)
    assert "/3 [" not in capfd.readouterr().err


# --- Weights & Biases --------------------------------------------------------------------------


def wandb_records(path):
    """The records of a .wandb file (the LevelDB log format W&B writes: 32 KiB blocks of
    chunks, each with a 7-byte header; FULL=1, FIRST=2, MIDDLE=3, LAST=4)."""
    from wandb.proto import wandb_internal_pb2

    block, data = 32768, path.read_bytes()
    assert data[:4] == b":W&B"
    position, chunks = 7, []
    while position + 7 <= len(data):
        left = block - position % block
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if left < 7 or kind == 0:  # a block's zero padding
            position += left
            continue
        chunks.append(data[position + 7 : position + 7 + length])
        position += 7 + length
        if kind in (1, 4):
            yield wandb_internal_pb2.Record.FromString(b"".join(chunks))
            chunks = []


def wandb_history(path) -> list[dict]:
    """The logged rows: {name: value} per history record."""
    rows = [r.history.item for r in wandb_records(path) if r.HasField("history")]
    return [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r} for r in rows]


def test_wandb_logs_scalars_and_a_resumed_run_continues_the_same_run(
    tmp_path, fake_fashion_mnist, monkeypatch, fast_compile
):
    pytest.importorskip("wandb")
    wandb_dir = tmp_path / "wandb_home"
    for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(wandb_dir))
    wandb_dir.mkdir()
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_CODE", "true")
    workdir = tmp_path / "run"
    options = {"logging.wandb": True, "logging.wandb_mode": "offline"}
    trainer.train_and_evaluate(
        tiny_config(fake_fashion_mnist, **options, **{"schedule.num_steps": 3}), str(workdir)
    )
    run_id = (workdir / "wandb_run_id").read_text().strip()
    trainer.train_and_evaluate(  # resumes from the checkpoint at step 3
        tiny_config(fake_fashion_mnist, **options, **{"schedule.num_steps": 5}), str(workdir)
    )
    assert (workdir / "wandb_run_id").read_text().strip() == run_id

    files = sorted(wandb_dir.glob(f"wandb/offline-run-*-{run_id}*/run-{run_id}.wandb"))
    assert len(files) == 2  # one offline directory per start, both of the same run
    for path in files:
        runs = [r.run for r in wandb_records(path) if r.HasField("run")]
        assert runs and all(r.run_id == run_id and r.display_name == "run" for r in runs)
    first, resumed = (wandb_history(path) for path in files)
    assert [h["train_step"] for h in first if "loss" in h] == [2, 3]
    assert [h["train_step"] for h in resumed if "loss" in h] == [4, 5]
    assert {"lr", "images_per_s", "train_top1"} <= first[0].keys()
    assert any("val_top1" in h and h["train_step"] == 3 for h in first)
    configs = [r.config for r in wandb_records(files[0]) if r.HasField("config")]
    keys = {item.key: item.value_json for c in configs for item in c.update}
    assert json.loads(keys["model"])["name"] == "resnet_mini"


def test_wandb_is_off_by_default(trained):
    workdir, _ = trained
    assert not (workdir / "wandb_run_id").exists()


def test_wandb_enabled_without_the_package_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # what `import wandb` meets when absent
    config = tiny_config(tmp_path, **{"logging.wandb": True})
    with pytest.raises(UserError, match="pip install wandb"):  # before any setup
        trainer.train_and_evaluate(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_wandb_mode_must_be_one_wandb_knows(tmp_path):
    pytest.importorskip("wandb")
    config = tiny_config(tmp_path, **{"logging.wandb": True, "logging.wandb_mode": "ofline"})
    with pytest.raises(UserError, match=r"logging\.wandb_mode='ofline'"):
        wandb_writer.maybe_wandb(str(tmp_path), config)


def test_training_on_a_terminal_shows_a_bar_with_the_epoch_instead_of_log_lines(
    tmp_path, fake_fashion_mnist, monkeypatch, fast_compile
):
    config = tiny_config(fake_fashion_mnist, **{"schedule.num_steps": 3})
    with absl_lines() as lines, terminal_stderr(monkeypatch) as chunks:
        trainer.train_and_evaluate(config, str(tmp_path))
    text = b"".join(chunks).decode(errors="replace")
    # 6 steps per epoch: 3 steps are half of one; the bar ends at 3/3 with the last metrics.
    assert re.search(r"\repoch 0\.50/0\.5: 100%\|[^\r]*\| 3/3 \[[^\r]*loss [\d.]+", text)
    assert not parse_log_lines(lines) and not any(line.startswith("step ") for line in lines)

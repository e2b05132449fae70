"""Transfer learning (imagenot_jax/transfer.py, configs/transfer.py): a resnet_mini pretrained on
fake Fashion-MNIST (10 classes) is fine-tuned on its 5-class half and on a fake CIFAR-10 built by
TFDS's own cifar10 builder; the head is the registry's; a linear probe freezes the rest."""

from __future__ import annotations

import importlib.util
import json
import pathlib
from unittest import mock

import jax
import numpy as np
import pytest
from flax import nnx

from imagenot_jax import transfer
from imagenot_jax.evaluate import evaluation
from imagenot_jax.models import convert
from imagenot_jax.train import sharding, trainer
from tests.conftest import REPO
from tests.helpers import saved_state, tiny_config

# End-to-end runs: see the fast_compile fixture.
pytestmark = pytest.mark.usefixtures("fast_compile")


PRETRAIN_STEPS = 3
HEAD = {("fc", "kernel"), ("fc", "bias")}


def _flat(tree) -> dict[tuple[str, ...], np.ndarray]:
    return {
        transfer._path(kp): np.asarray(v) for kp, v in jax.tree_util.tree_leaves_with_path(tree)
    }


@pytest.fixture(scope="module")
def first5(fake_fashion_mnist, tmp_path_factory) -> pathlib.Path:
    """fashion_mnist_local/first5 (labels 0-4) from the same fake IDX files as `all`."""
    import tensorflow_datasets as tfds

    from tfds_imagenot.fashion_mnist_local import Builder

    root = tmp_path_factory.mktemp("first5")
    Builder(config="first5", data_dir=str(root)).download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(manual_dir=str(fake_fashion_mnist / "manual")),
    )
    return root


@pytest.fixture(scope="module")
def pretrained(fake_fashion_mnist, tmp_path_factory) -> pathlib.Path:
    """A resnet_mini workdir (widths 4/8/8, 28 px) trained for a few steps on 10 classes, with
    EMA: the EMA weights are what transfer loads."""
    workdir = tmp_path_factory.mktemp("pretrained")
    config = tiny_config(
        fake_fashion_mnist,
        **{"schedule.num_steps": PRETRAIN_STEPS, "optim.ema_decay": 0.9, "optim.ema_steps": 1},
    )
    trainer.train_and_evaluate(config, str(workdir))
    return workdir


def _pretrained_weights(workdir: pathlib.Path) -> dict:
    average = saved_state(workdir, PRETRAIN_STEPS)["ema"]["average"]
    return {c: _flat(average[c]) for c in transfer.COLLECTIONS}


def _fine_tune_config(data_dir, init, **overrides):
    config = tiny_config(data_dir, **{"data.name": "fashion_mnist_local/first5", **overrides})
    config.model.init = str(init)
    return config


def _train_keeping_step_0(config, workdir: pathlib.Path):
    """train_and_evaluate's result and a host copy of the state it started from (step 0)."""
    start = {}
    initial_state = trainer._initial_state

    def keep(*args):
        state = initial_state(*args)
        start["state"] = jax.device_get(state)  # the train step donates the state
        return state

    with mock.patch.object(trainer, "_initial_state", keep):
        result = trainer.train_and_evaluate(config, str(workdir))
    return result, start["state"]


# --- full fine-tuning ----------------------------------------------------------------------


def test_fine_tune_starts_from_pretrained_weights_with_a_new_head(tmp_path, first5, pretrained):
    overrides = {"schedule.num_steps": 2, "optim.ema_decay": 0.9, "optim.ema_steps": 1}
    config = _fine_tune_config(first5, pretrained, **overrides)
    result, state = _train_keeping_step_0(config, tmp_path)
    before = _pretrained_weights(pretrained)
    for collection in transfer.COLLECTIONS:
        loaded = _flat(getattr(state, collection))
        assert loaded.keys() == before[collection].keys()
        for path, value in loaded.items():
            if collection == "params" and path in HEAD:
                assert value.shape[-1] == 5 and before[collection][path].shape[-1] == 10
            else:
                np.testing.assert_array_equal(value, before[collection][path], err_msg=str(path))
    ema = _flat(state.ema.average["params"])  # the fine-tuning EMA starts from them too
    np.testing.assert_array_equal(ema[("conv1", "kernel")], before["params"][("conv1", "kernel")])

    assert result["val_n"] == 11  # labels 0-4 of the 21 fake test images
    written = json.loads((tmp_path / "config.json").read_text())["model"]
    assert written["num_classes"] == 5 and written["init"] == str(pretrained)
    after = _flat(saved_state(tmp_path, 2)["params"])
    assert after[("fc", "kernel")].shape == (8, 5)
    assert not np.array_equal(after[("conv1", "kernel")], before["params"][("conv1", "kernel")])


def test_head_is_fresh_even_with_the_same_number_of_classes(fake_fashion_mnist, pretrained):
    config = tiny_config(fake_fashion_mnist)
    config.model.init = f"{pretrained}:{PRETRAIN_STEPS}"
    config.model.num_classes = 10
    setup = trainer.make_setup(config, sharding.make_mesh(), num_train_examples=32)
    weights = transfer.load_pretrained(config, setup.abstract_state, setup.state_shardings)
    assert set(weights["params"]) == set(_flat(setup.abstract_state.params)) - HEAD


def _random_model(config) -> nnx.Module:
    """The config's model holding random numpy weights: no initialisation to compile."""
    abstract = nnx.eval_shape(lambda: trainer.build_model(config, config.model.num_classes))
    graphdef, state = nnx.split(abstract)
    rng = np.random.default_rng(0)
    return nnx.merge(
        graphdef, jax.tree.map(lambda x: rng.standard_normal(x.shape).astype(x.dtype), state)
    )


def test_converted_weights_without_ema_load_as_they_are(tmp_path, fake_fashion_mnist):
    """convert.write_checkpoint's workdirs (torchvision weights) have no EMA: the raw params."""
    converted = convert.conversion_config("resnet_mini", 10, tiny_config(fake_fashion_mnist))
    model = _random_model(converted)
    workdir = convert.write_checkpoint(model, converted, str(tmp_path / "tv"))
    config = tiny_config(fake_fashion_mnist)
    config.model.init, config.model.num_classes = str(workdir), 3
    setup = trainer.make_setup(config, sharding.make_mesh(), num_train_examples=32)
    weights = transfer.load_pretrained(config, setup.abstract_state, setup.state_shardings)
    expected = _flat(nnx.state(model, nnx.Param))
    assert set(weights["params"]) == set(expected) - HEAD
    for path, value in weights["params"].items():
        np.testing.assert_array_equal(value, expected[path])


# --- linear probe ----------------------------------------------------------------------------


def test_probe_trains_only_the_head_and_keeps_bn_statistics(tmp_path, first5, pretrained):
    overrides = {"schedule.num_steps": 2, "optim.trainable": "head"}
    config = _fine_tune_config(first5, pretrained, **overrides)
    _, state0 = _train_keeping_step_0(config, tmp_path)
    before = _pretrained_weights(pretrained)

    def check(step: int) -> None:
        saved = saved_state(tmp_path, step)
        for collection in transfer.COLLECTIONS:
            for path, value in _flat(saved[collection]).items():
                if collection == "params" and path in HEAD:
                    fresh = np.asarray(_flat(state0.params)[path])
                    assert value.shape == fresh.shape and not np.array_equal(value, fresh)
                else:  # bitwise: no update, no weight decay, no running-statistics update
                    np.testing.assert_array_equal(value, before[collection][path], str(path))
        momentum = [x for x in jax.tree.leaves(saved["opt_state"]) if np.ndim(x)]
        assert sorted(x.shape for x in momentum) == [(5,), (8, 5)]  # state for the head only

    check(2)
    # Resuming restores the run's own checkpoint; the pretrained one is not read again.
    with mock.patch.object(transfer, "load_pretrained", side_effect=AssertionError("reloaded")):
        trainer.train_and_evaluate(
            _fine_tune_config(first5, pretrained, **overrides | {"schedule.num_steps": 3}),
            str(tmp_path),
        )
    check(3)
    result, _ = evaluation.evaluate_checkpoint(str(tmp_path), batch_size=8)
    assert result["n"] == 11 and result["step"] == 3


# --- CIFAR-10 with configs/transfer.py ----------------------------------------------------------

CIFAR_NAMES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


def _fake_cifar10(root: pathlib.Path) -> pathlib.Path:
    """TFDS's real cifar10 builder (v3.0.2, ArrayRecord) run on fake binary batches: 40 train
    and 64 test images of 32 x 32 x 3, labels cycling 0..9; the download is mocked."""
    import tensorflow_datasets as tfds

    source = root / "download" / "cifar-10-batches-bin"
    source.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def write(name: str, n: int) -> None:
        labels = (np.arange(n) % 10).astype(np.uint8)[:, None]
        images = rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)
        (source / name).write_bytes(np.concatenate([labels, images], axis=1).tobytes())

    for i in range(1, 6):
        write(f"data_batch_{i}.bin", 8)
    write("test_batch.bin", 64)
    (source / "batches.meta.txt").write_text("\n".join(CIFAR_NAMES) + "\n")
    builder = tfds.builder("cifar10", data_dir=str(root / "data"))
    with mock.patch.object(
        tfds.download.DownloadManager,
        "download_and_extract",
        return_value=str(root / "download"),
    ):
        builder.download_and_prepare(file_format="array_record")
    return root / "data"


def test_cifar10_fine_tuning_with_the_transfer_config(tmp_path, pretrained):
    data_dir = _fake_cifar10(tmp_path)
    config = _load_transfer_config(f"init={pretrained},dataset=cifar10,smoke")
    config.data.data_dir = str(data_dir)
    config.schedule.num_steps = 1
    result = trainer.train_and_evaluate(config, str(tmp_path / "cifar"))
    assert result["val_n"] == 64  # smoke: test[:64]
    written = json.loads((tmp_path / "cifar" / "config.json").read_text())
    assert written["data"]["name"] == "cifar10" and written["model"]["num_classes"] == 10
    assert written["model"]["kwargs"]["widths"] == [4, 8, 8]  # the pretrained architecture
    assert written["input"]["image_size"] == 28  # upscaled to the pretrained eval crop
    assert (tmp_path / "cifar" / "checkpoints" / "1").is_dir()


# --- configuration and errors ------------------------------------------------------------------


def _load_transfer_config(arg: str | None):
    spec = importlib.util.spec_from_file_location("configs_transfer", REPO / "configs/transfer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def test_transfer_config_takes_the_pretrained_model_and_picks_the_recipe(pretrained):
    full = _load_transfer_config(f"init={pretrained}")
    probe = _load_transfer_config(
        f"init={pretrained}:{PRETRAIN_STEPS},dataset=fashion_mnist,probe,size=32"
    )
    assert (full.model.name, full.model.init, full.data.name) == (
        "resnet_mini",
        str(pretrained),
        "cifar10",
    )
    assert tuple(full.model.kwargs.widths) == (4, 8, 8) and full.input.eval_crop == 28
    assert (full.optim.trainable, full.optim.lr, full.schedule.epochs) == ("all", 0.01, 10)
    assert (probe.optim.trainable, probe.optim.lr, probe.schedule.epochs) == ("head", 0.1, 30)
    assert probe.data.name == "fashion_mnist_local/all" and probe.input.image_size == 32


@pytest.mark.parametrize(
    "arg, error, match",
    [
        ("dataset=cifar10", ValueError, "needs 'init=WORKDIR'"),
        ("init=/nonexistent/run", FileNotFoundError, r"/nonexistent/run/config\.json not found"),
        ("init=/x,dataset=mnist", ValueError, "'dataset=mnist'"),
    ],
)
def test_bad_transfer_config_arguments_are_one_line_errors(arg, error, match):
    with pytest.raises(error, match=match) as err:
        _load_transfer_config(arg)
    assert "\n" not in str(err.value)


def _setup_and_load(config):
    setup = trainer.make_setup(config, sharding.make_mesh(), num_train_examples=32)
    return transfer.load_pretrained(config, setup.abstract_state, setup.state_shardings)


def test_init_errors_name_what_is_wrong(tmp_path, fake_fashion_mnist, pretrained):
    config = tiny_config(fake_fashion_mnist)
    config.model.num_classes = 5

    config.model.init = str(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match=r"missing/config\.json not found"):
        transfer.resolve_config(config)

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text((pretrained / "config.json").read_text())
    config.model.init = str(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        _setup_and_load(config)

    config.model.init = f"{pretrained}:99"
    with pytest.raises(
        ValueError, match=f"no checkpoint at step 99; it has \\[{PRETRAIN_STEPS}\\]"
    ):
        _setup_and_load(config)

    config.model.init = str(pretrained)
    config.model.name = "resnet18"
    with pytest.raises(
        ValueError, match=r"holds a 'resnet_mini' model but config\.model\.name is 'resnet18'"
    ):
        transfer.resolve_config(config)

    config.model.name = "resnet_mini"
    config.model.kwargs.widths = (4, 8, 16)  # overrides the pretrained kwargs: other shapes
    transfer.resolve_config(config)
    with pytest.raises(
        ValueError,
        match=r"params layer3/0/\S+ has shape \(.*\) in the pretrained checkpoint but \(.*16.*\)",
    ) as err:
        _setup_and_load(config)
    assert "\n" not in str(err.value)

    config.model.kwargs.widths = (4, 8, 8)
    config.optim.trainable = "backbone"
    with pytest.raises(ValueError, match=r"optim\.trainable='backbone': expected one of"):
        _setup_and_load(config)


def test_init_names_a_workdir_and_optionally_a_step():
    assert transfer.parse_init("gs://bucket/run") == ("gs://bucket/run", None)
    assert transfer.parse_init("gs://bucket/run:1200") == ("gs://bucket/run", 1200)
    assert transfer.parse_init("/runs/a:b") == ("/runs/a:b", None)

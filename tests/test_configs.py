"""Recipe configs: every file loads with every argument, builds its model (abstractly, at full
size), and every paper model's `:smoke` config trains and evaluates for real on CPU."""

from __future__ import annotations

import importlib.util

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from imagenot_jax.models import list_models
from imagenot_jax.rank import reference
from imagenot_jax.train import trainer, validate
from tests.conftest import REPO
from tests.helpers import abstract_forward

# End-to-end runs: see the fast_compile fixture.
pytestmark = pytest.mark.usefixtures("fast_compile")


CONFIG_DIR = REPO / "configs"
# The ImageNot study's nine architectures, plus the ResNet-50 anchor.
PAPER_MODELS = list(reference.PAPER_MODELS)
# Recipe configs are the config files named after a registered model (configs/<model>.py); the
# others (demo, transfer) are not recipes. New recipes are picked up without editing this file.
RECIPES = sorted(p.stem for p in CONFIG_DIR.glob("*.py") if p.stem in list_models())


def load_config(name: str, arg: str | None = None):
    """configs/<name>.py's get_config(arg), imported as config_flags does (by path)."""
    path = CONFIG_DIR / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"configs_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config() if arg is None else module.get_config(arg)  # demo: no argument


def test_every_paper_model_has_a_recipe():
    assert set(PAPER_MODELS) | {"resnet50"} <= set(RECIPES)


@pytest.mark.parametrize("name", RECIPES)
def test_config_loads_with_every_argument(name):
    for arg in (None, "dataset=imagenot", "dataset=imagenet", "smoke", "dataset=imagenet,smoke"):
        config = load_config(name, arg)
        assert config.model.name == name in list_models()
        assert list(config) == [
            "checkpoint", "data", "eval", "input", "logging", "mesh", "model", "optim",
            "schedule", "seed",
        ]  # fmt: skip
    assert load_config(name, "dataset=imagenet").data.name == "imagenet2012"
    assert load_config(name).data.name == "imagenot/256"
    assert load_config(name, "smoke").data.name == "fashion_mnist_local/all"
    full, smoke = load_config(name), load_config(name, "smoke")
    assert smoke.input.global_batch_size < full.input.global_batch_size
    assert smoke.input.image_size <= full.input.image_size
    # The recipe itself survives shrinking.
    assert (smoke.optim.name, smoke.optim.lr, smoke.schedule.name) == (
        full.optim.name,
        full.optim.lr,
        full.schedule.name,
    )


def test_bad_config_argument_is_one_line_error():
    with pytest.raises(ValueError, match="dataset=cifar") as err:
        load_config("resnet50", "dataset=cifar")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="smok"):
        load_config("resnet50", "smok")


def _shipped_run_configs():
    """Every run config the checkout ships (transfer's needs a pretrained workdir: see
    test_transfer): the recipes with each argument, the demo, each suite's runs."""
    for name in RECIPES:
        for arg in (None, "dataset=imagenet", "smoke"):
            yield f"{name}:{arg}", load_config(name, arg)
    yield "demo", load_config("demo")
    for suite in sorted(p.stem for p in (CONFIG_DIR / "suites").glob("[!_]*.py")):
        for run, config in load_config(f"suites/{suite}").runs.items():
            yield f"suites/{suite}/{run}", config


def test_every_shipped_config_validates():
    for label, config in _shipped_run_configs():
        for devices in (1, 4):  # a single device and the demo-size multi-device meshes
            try:
                validate.check_train_config(config, devices)
            except ValueError as e:
                raise AssertionError(f"{label} on {devices} devices: {e}") from e


@pytest.mark.parametrize("name", RECIPES)
def test_full_size_model_builds_abstractly(name):
    config = load_config(name)
    config.model.num_classes = 1000
    model = nnx.eval_shape(lambda: trainer.build_model(config, 1000))
    size = config.input.image_size
    out, _ = abstract_forward(model, jax.ShapeDtypeStruct((2, size, size, 3), jnp.bfloat16))
    for logits in (out.logits, out.aux_logits):
        if logits is not None:  # auxiliary logits: Inception-v3 in train mode
            assert logits.shape == (2, 1000)
            assert logits.dtype == jnp.bfloat16
    assert config.input.eval_crop <= config.input.eval_resize


@pytest.mark.parametrize("name", PAPER_MODELS)
def test_smoke_config_trains_and_evaluates(name, fake_fashion_mnist, tmp_path):
    config = load_config(name, "smoke")
    assert config.data.eval_split == "test[:64]"
    config.data.data_dir = str(fake_fashion_mnist)
    config.data.eval_split = "test[:16]"  # the fake split has 21 examples
    config.schedule.num_steps = 1
    metrics = trainer.train_and_evaluate(config, str(tmp_path))
    assert metrics["val_n"] == 16
    assert jnp.isfinite(metrics["val_loss"])
    assert (tmp_path / "checkpoints" / "1").is_dir()

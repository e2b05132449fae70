"""torchvision's published weights by name (`convert --weights`, `--all_study_models`), offline.

The weights file is planted in a temporary torch hub cache ($TORCH_HOME) under the name torch.hub
gives it, holding a seeded random resnet18 (the real file is never downloaded); downloads go
through a proxy at a closed local port, so any attempt fails at once as it does offline.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx

from imagenot_jax.errors import UserError
from imagenot_jax.evaluate.evaluation import load_run_config
from imagenot_jax.models import convert, torchvision_weights
from imagenot_jax.rank.reference import PAPER_MODELS, TORCHVISION_IMAGENET1K
from imagenot_jax.train import checkpoint, sharding, trainer
from tests.conftest import REPO

import model_parity

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

RESNET18_FILE = "resnet18-f37072fd.pth"  # the basename of ResNet18_Weights.IMAGENET1K_V1's URL


def _offline_env(torch_home) -> dict[str, str]:
    """The environment of a converter run with this torch hub cache and no way out: urllib
    sends every download to a proxy at a closed local port (connection refused)."""
    unreachable = "http://127.0.0.1:9"
    env = dict(os.environ, TORCH_HOME=str(torch_home), no_proxy="", NO_PROXY="")
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        env[name] = unreachable
    return env


def _convert(torch_home, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "imagenot_jax.models.convert", *args]
    return subprocess.run(
        command, cwd=REPO, env=_offline_env(torch_home), capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


def _restored(workdir) -> nnx.Module:
    """The model a converted workdir holds, restored as imagenot_jax.evaluate restores it."""
    config = load_run_config(str(workdir))
    setup = trainer.make_setup(config, sharding.make_mesh(), config.input.global_batch_size)
    checkpointer = checkpoint.Checkpointer(str(workdir), config.checkpoint, read_only=True)
    abstract = checkpoint.abstract_with_shardings(setup.abstract_state, setup.state_shardings)
    state = checkpointer.restore(0, abstract)
    checkpointer.close()
    return nnx.merge(setup.model_def.eval, state.params, state.batch_stats, state.rest)


def test_weights_by_name_convert_the_file_in_torch_hubs_cache(tmp_path):
    torch_model = model_parity.torchvision_model("resnet18").eval()
    cache = tmp_path / "torch_home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(torch_model.state_dict(), cache / RESNET18_FILE)
    workdir = tmp_path / "tv_resnet18"
    run = _convert(
        tmp_path / "torch_home", "--weights", "ResNet18_Weights.IMAGENET1K_V1", f"--out={workdir}"
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "published ImageNet-1K top-1 69.758%" in run.stdout

    config = json.loads((workdir / "config.json").read_text())
    published = config["published_weights"]
    assert published["name"] == "ResNet18_Weights.IMAGENET1K_V1"
    assert published["cache_path"] == str(cache / RESNET18_FILE)
    assert published["metrics"]["ImageNet-1K"] == {"acc@1": 69.758, "acc@5": 89.078}
    assert config["model"]["name"] == "resnet18" and config["model"]["num_classes"] == 1000
    assert config["data"]["name"] == "imagenet2012"
    assert (config["input"]["eval_resize"], config["input"]["eval_crop"]) == (256, 224)
    np.testing.assert_allclose(config["input"]["mean"], [123.675, 116.28, 103.53])

    model_parity.assert_same_logits(torch_model, _restored(workdir), 64, batch=2)


def test_offline_without_the_file_is_one_line_naming_it_and_the_local_route(tmp_path):
    run = _convert(
        tmp_path / "empty", "--weights", "ResNet18_Weights.DEFAULT", f"--out={tmp_path / 'wd'}"
    )
    assert run.returncode == 2, run.stderr[-2000:]
    line = run.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ResNet18_Weights.IMAGENET1K_V1: not in torch hub's cache")
    assert f"download.pytorch.org/models/{RESNET18_FILE}" in line
    assert str(tmp_path / "empty" / "hub" / "checkpoints" / RESNET18_FILE) in line
    assert "--model resnet18 --torch_weights PATH" in line
    assert not (tmp_path / "wd").exists()


def test_all_study_models_offline_lists_every_missing_file(tmp_path):
    run = _convert(tmp_path / "empty", "--all_study_models", f"--out={tmp_path / 'out'}")
    assert run.returncode == 2, run.stderr[-2000:]
    line = run.stderr.strip().splitlines()[-1]
    assert line.startswith("error: 9 of 9 weights files are not in torch hub's cache")
    checkpoints = tmp_path / "empty" / "hub" / "checkpoints"
    for weights in convert.study_weights():
        assert f"{weights.name}: {weights.url} -> {checkpoints}/" in line
    # The weights are the reference table's: the same published accuracies.
    assert [w.model for w in convert.study_weights()] == list(PAPER_MODELS)
    for weights in convert.study_weights():
        row = TORCHVISION_IMAGENET1K[weights.model]
        assert weights.name.endswith(f".{row.weights}")
        assert weights.metrics["ImageNet-1K"] == {"acc@1": row.acc1, "acc@5": row.acc5}
    assert not (tmp_path / "out").exists()


def test_cli_refuses_two_sources_and_checks_outputs_before_any_download(tmp_path):
    both = _convert(
        tmp_path, "--weights", "ResNet18_Weights.DEFAULT", "--torch_weights=x.pth", "--out=wd"
    )
    assert both.returncode == 2
    assert "exactly one of --weights" in both.stderr.strip().splitlines()[-1]
    (tmp_path / "out" / "vgg19" / "checkpoints").mkdir(parents=True)
    again = _convert(tmp_path / "empty", "--all_study_models", f"--out={tmp_path / 'out'}")
    assert again.returncode == 2
    assert again.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'out' / 'vgg19'}: already converted; choose a new --out"
    )
    assert "Downloading" not in again.stdout + again.stderr


def test_names_resolve_with_default_and_unknown_ones_list_close_matches(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    default = torchvision_weights.resolve("ResNet152_Weights.DEFAULT")
    assert default.name == "ResNet152_Weights.IMAGENET1K_V2" and default.model == "resnet152"
    assert default.cache_path == str(tmp_path / "hub" / "checkpoints" / "resnet152-f82ba261.pth")
    effnet = torchvision_weights.resolve("EfficientNet_V2_L_Weights.IMAGENET1K_V1")
    assert (effnet.eval_resize, effnet.mean, effnet.interpolation) == (480, (0.5,) * 3, "bicubic")
    with pytest.raises(UserError, match=r"close: ResNet152_Weights\.IMAGENET1K_V2, ResNet152_"):
        torchvision_weights.resolve("ResNet152_Weights.IMAGENET1K_V3")
    with pytest.raises(UserError, match=r"close: ResNet18_Weights\.IMAGENET1K_V1, ResNet18_Wei"):
        torchvision_weights.resolve("resnet18")  # a builder's name: its enum's members
    with pytest.raises(UserError, match=r"torchvision's swin_t, which our zoo does not have"):
        torchvision_weights.resolve("Swin_T_Weights.IMAGENET1K_V1")


def test_published_config_keeps_the_weights_eval_transform(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    effnet = torchvision_weights.resolve("EfficientNet_V2_L_Weights.IMAGENET1K_V1")
    config = convert.published_config(effnet)
    assert (config.input.eval_resize, config.input.eval_crop) == (480, 480)
    assert list(config.input.mean) == list(config.input.std) == [127.5] * 3
    assert config.model.name == "efficientnet_v2_l" and config.optim.ema_decay is None


# --- docs/published_weights.md: its commands use flags that exist --------------------------

DOCS = REPO / "docs" / "published_weights.md"
FLAG_OWNERS = {  # entry point -> the module whose define_flags() defines its flags
    "imagenot_jax.models.convert": "imagenot_jax.models.convert",
    "imagenot_jax.evaluate": "imagenot_jax.evaluate.evaluation",
    "imagenot_jax.rank": "imagenot_jax.rank.ranking",
}
PARSE = """
import importlib, json, sys
from absl import flags
importlib.import_module(sys.argv[1]).define_flags()
for argv in json.loads(sys.argv[2]):
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["prog", *argv])  # unknown flags, bad values, missing required ones: raise
"""


def _doc_commands() -> list[list[str]]:
    """Every shell command of the doc's code blocks, continuation lines joined, split."""
    blocks = DOCS.read_text().split("```bash\n")[1:]
    text = "\n".join(block.split("```", 1)[0] for block in blocks).replace("\\\n", " ")
    return [shlex.split(line) for line in text.splitlines() if line.strip()]


def test_the_docs_commands_parse_and_cover_the_nine_models():
    commands = _doc_commands()
    loop = next(c for c in commands if c[:3] == ["for", "m", "in"])
    assert [m.rstrip(";") for m in loop[3 : loop.index("do")]] == list(PAPER_MODELS)
    by_module: dict[str, list[list[str]]] = {}
    for command in commands:
        start = command.index("python") if "python" in command else None
        if start is not None and command[start + 1] == "-m":
            by_module.setdefault(command[start + 2], []).append(command[start + 3 :])
    assert sorted(by_module) == sorted(FLAG_OWNERS)
    for entry, argvs in by_module.items():
        run = subprocess.run(
            [sys.executable, "-c", PARSE, FLAG_OWNERS[entry], json.dumps(argvs)],
            cwd=REPO, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert run.returncode == 0, f"{entry}: {run.stderr[-1500:]}"


@pytest.mark.parametrize(
    "args",
    [
        ("--weights", "ResNet18_Weights.DEFAULT"),
        ("--model", "resnet18", "--torch_weights", "x.pth"),
    ],
)
def test_without_torch_is_one_line_naming_the_extra(tmp_path, args):
    """`make demo`'s environment has no torch: the converter says which extra to install."""
    # torch and torchvision made unimportable, as where the curation extra is not installed.
    code = (
        "import runpy, sys; sys.modules['torch'] = sys.modules['torchvision'] = None; "
        "runpy.run_module('imagenot_jax.models.convert', run_name='__main__')"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, *args, "--out", str(tmp_path / "out")],
        cwd=REPO, env=_offline_env(tmp_path / "torch_home"), capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr[-3000:]
    (line,) = [x for x in out.stderr.splitlines() if x.startswith("error:")]
    assert "pip install -e '.[curation]'" in line and "Traceback" not in out.stderr

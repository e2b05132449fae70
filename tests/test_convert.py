"""torchvision weights -> our checkpoint -> imagenot_jax.evaluate.evaluation, end to end.

The identity of every converted model's function is proven in test_model_zoo.py; here the
files and commands around it: .pth reading, the CLI's workdir, and an evaluation of converted
weights whose every prediction equals torchvision's on the same images.
"""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import ml_collections
import numpy as np
import pytest

from configs import demo
from imagenot_jax.data import input_pipeline
from imagenot_jax.evaluate import evaluation
from imagenot_jax.models import convert
from tests.conftest import FAKE_FASHION_TEST, REPO

import model_parity

# End-to-end runs: see the fast_compile fixture.
pytestmark = pytest.mark.usefixtures("fast_compile")


torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def resnet18_10_classes():
    return model_parity.torchvision_model("resnet18", num_classes=10).eval()


def test_reads_plain_wrapped_and_ddp_state_dicts(tmp_path, resnet18_10_classes):
    state = resnet18_10_classes.state_dict()
    variants = {
        "plain": state,
        "wrapped": {"model": state, "epoch": 3},  # torchvision references' checkpoints
        "ddp": {f"module.{k}": v for k, v in state.items()},
    }
    for name, content in variants.items():
        torch.save(content, tmp_path / f"{name}.pth")
        loaded = convert.read_torch_state_dict(str(tmp_path / f"{name}.pth"))
        assert sorted(loaded) == sorted(state), name


def test_bad_weight_files_are_one_line_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.pth"):
        convert.read_torch_state_dict(str(tmp_path / "nope.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match=r"junk\.pth: not a torch state_dict") as err:
        convert.read_torch_state_dict(str(tmp_path / "junk.pth"))
    assert "\n" not in str(err.value)


def test_cli_writes_a_workdir_and_refuses_to_overwrite_it(tmp_path, resnet18_10_classes):
    weights = tmp_path / "resnet18.pth"
    torch.save(resnet18_10_classes.state_dict(), weights)
    command = [
        sys.executable, "-m", "imagenot_jax.models.convert", "--model", "resnet18",
        f"--torch_weights={weights}", f"--out={tmp_path / 'wd'}", "--num_classes=10",
        "--config=configs/resnet50.py:dataset=imagenet",
    ]  # fmt: skip
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    config = json.loads((tmp_path / "wd" / "config.json").read_text())
    assert config["model"]["name"] == "resnet18"
    assert config["data"]["name"] == "imagenet2012"
    assert (tmp_path / "wd" / "checkpoints" / "0" / "state").is_dir()
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2
    assert "already exists" in again.stderr.strip().splitlines()[-1]


def _decode_gray(encoded: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(encoded, np.uint8), cv2.IMREAD_GRAYSCALE)


def _eval_images(config, data_dir) -> tuple[list[str], np.ndarray]:
    """The test split as the eval transform sees it (28 px: resize/crop are identities),
    normalised like the trainer does, NCHW for torch."""
    source = input_pipeline.open_source(config.data.name, "test", str(data_dir))
    keys, images = [], []
    for i in range(len(source)):
        example = source[i]
        gray = _decode_gray(bytes(example["image"]))
        rgb = np.repeat(gray[..., None], 3, axis=-1).astype(np.float32)
        images.append((rgb - np.asarray(config.input.mean)) / np.asarray(config.input.std))
        keys.append(bytes(example["key"]).decode())
    return keys, np.stack(images).transpose(0, 3, 1, 2).astype(np.float32)


def test_evaluating_converted_weights_reproduces_torchvision_predictions(
    tmp_path, fake_fashion_mnist, resnet18_10_classes
):
    config = demo.get_config()
    config.model.kwargs = ml_collections.ConfigDict()  # the demo's are resnet_mini's
    config.data.data_dir = str(fake_fashion_mnist)
    config.input.num_workers = 0
    config = convert.conversion_config("resnet18", 10, config)
    model = convert.from_torchvision("resnet18", resnet18_10_classes.state_dict(), num_classes=10)
    workdir = convert.write_checkpoint(model, config, str(tmp_path / "tv_resnet18"))
    result, path = evaluation.evaluate_checkpoint(str(workdir), batch_size=8)
    assert result["n"] == FAKE_FASHION_TEST and result["step"] == 0 and not result["ema"]
    examples = np.load(path.parent / f"{path.stem}.examples.npz")
    keys, images = _eval_images(config, fake_fashion_mnist)
    with torch.no_grad():
        expected = resnet18_10_classes(torch.from_numpy(images)).argmax(-1).numpy()
    ours = dict(zip(examples["key"].tolist(), examples["top5"][:, 0].tolist(), strict=True))
    assert [ours[k] for k in keys] == expected.tolist()

"""Training engine: sharded train+eval, resume exactness, preemption, NaN stop, evaluation, CLI.

Runs on 8 simulated CPU devices (tests/conftest.py). Subprocess tests use the real entry point
`python -m imagenot_jax.main` on a tiny Fashion-MNIST-format dataset.
"""

from __future__ import annotations

import json
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from imagenot_jax.evaluate import evaluation
from imagenot_jax.models import ModelOutput
from imagenot_jax.train import sharding, steps, trainer
from tests.conftest import FAKE_FASHION_TEST as N_TEST
from tests.conftest import FAKE_FASHION_TRAIN as N_TRAIN
from tests.helpers import checkpoint_steps, run_main, saved_state, tiny_config

# End-to-end runs: see the fast_compile fixture.
pytestmark = pytest.mark.usefixtures("fast_compile")


# --- in-process: sharded training and evaluation ---------------------------------------------


@pytest.mark.parametrize(
    "mesh_overrides",
    [
        {"mesh.bn_mode": "global"},
        {"mesh.bn_mode": "per_device"},
        {"mesh.bn_mode": "global", "mesh.fsdp": True, "mesh.fsdp_min_size": 64},
        {  # the recipe features torchvision's configs use, through the jitted step
            "optim.ema_decay": 0.99,
            "optim.ema_steps": 2,
            "optim.label_smoothing": 0.1,
            "input.mixup_alpha": 0.2,
            "input.cutmix_alpha": 1.0,
            "optim.grad_clip_norm": 1.0,
        },
    ],
    ids=["global_bn", "per_device_bn", "fsdp", "ema_mixing_smoothing_clip"],
)
def test_train_and_evaluate_on_8_devices(tmp_path, fake_fashion_mnist, mesh_overrides):
    assert jax.device_count() == 8
    config = tiny_config(fake_fashion_mnist, **mesh_overrides)
    result = trainer.train_and_evaluate(config, str(tmp_path))
    steps = 2 * (N_TRAIN // 16)
    assert result["val_n"] == N_TEST and 0.0 <= result["val_top1"] <= 1.0
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if "loss" in r]
    assert logged[-1]["step"] == steps and all(np.isfinite(r["loss"]) for r in logged)
    assert {"lr", "images_per_s", "train_top1", "grad_norm"} <= logged[-1].keys()
    assert json.loads((tmp_path / "config.json").read_text())["model"]["num_classes"] == 10
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert steps in checkpoint_steps(tmp_path)
    if mesh_overrides.get("mesh.fsdp"):
        setup = trainer.make_setup(config, sharding.make_mesh(), N_TRAIN)
        specs = {s.spec for s in jax.tree.leaves(setup.state_shardings)}
        assert any(sharding.DATA_AXIS in spec for spec in specs)  # some arrays really split


def test_evaluate_counts_every_example_once_and_writes_json(tmp_path, fake_fashion_mnist):
    config = tiny_config(fake_fashion_mnist, **{"schedule.num_steps": 3})
    trainer.train_and_evaluate(config, str(tmp_path))
    result, path = evaluation.evaluate_checkpoint(str(tmp_path), batch_size=8)  # 21 % 8 != 0
    assert path == tmp_path / "eval" / "fashion_mnist_local_all-test-3.json"
    written = json.loads(path.read_text())
    assert written["n"] == N_TEST == result["n"] and written["step"] == 3
    assert written["model"] == "resnet_mini" and written["dataset_version"] == "1.0.0"
    low, high = written["top1_ci95"]
    assert 0.0 <= low <= written["top1"] <= high <= 1.0
    assert len(written["per_class_recall"]) == 10
    examples = np.load(tmp_path / "eval" / "fashion_mnist_local_all-test-3.examples.npz")
    assert sorted(examples["key"]) == [f"test_{i:05d}" for i in range(N_TEST)]
    assert examples["top5"].shape == (N_TEST, 5)
    assert examples["correct"].mean() == pytest.approx(written["top1"])


def test_accuracy_logged_at_the_last_step_equals_evaluate_on_its_checkpoint(
    tmp_path, fake_fashion_mnist
):
    """Training-time validation and `evaluate` share one eval pipeline and step: the same
    checkpoint and split give the same numbers (EMA weights on both sides)."""
    overrides = {"schedule.num_steps": 3, "optim.ema_decay": 0.9, "optim.ema_steps": 1}
    trainer.train_and_evaluate(tiny_config(fake_fashion_mnist, **overrides), str(tmp_path))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if "val_top1" in r][-1]
    assert logged["step"] == 3
    result, _ = evaluation.evaluate_checkpoint(str(tmp_path))
    assert result["ema"] and result["step"] == 3 and result["n"] == logged["val_n"] == N_TEST
    assert result["top1"] == logged["val_top1"] and result["top5"] == logged["val_top5"]
    assert result["loss"] == pytest.approx(logged["val_loss"], rel=1e-6)


def test_clopper_pearson_matches_known_values():
    low, high = evaluation.clopper_pearson(50, 100)
    assert low == pytest.approx(0.3983, abs=1e-4) and high == pytest.approx(0.6017, abs=1e-4)
    assert (
        evaluation.clopper_pearson(0, 10)[0] == 0.0 and evaluation.clopper_pearson(10, 10)[1] == 1.0
    )


# --- subprocess: the entry point, resume, preemption ----------------------------------------


def _logged(workdir) -> list[tuple[int, tuple[str, ...]]]:
    """(step, metric names) of every metrics.jsonl line, in order."""
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], tuple(sorted(r))) for r in map(json.loads, lines)]


def test_sigkill_then_resume_gives_bitwise_identical_parameters(tmp_path, fake_fashion_mnist):
    steps = {"schedule.num_steps": 30, "checkpoint.every_steps": 2}
    straight = run_main(tmp_path / "straight", fake_fashion_mnist, **steps)
    assert straight.returncode == 0, straight.stderr[-3000:]

    interrupted = tmp_path / "interrupted"
    process = run_main(interrupted, fake_fashion_mnist, wait=False, **steps)
    deadline = time.monotonic() + 300
    while not [s for s in checkpoint_steps(interrupted) if s >= 6] and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = max(checkpoint_steps(interrupted))
    assert 6 <= killed_at < 30, "the run finished before it could be killed"
    resumed = run_main(interrupted, fake_fashion_mnist, **steps)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from step {killed_at}" in resumed.stderr

    # metrics.jsonl: the killed run's lines after its checkpoint are dropped on resume and
    # logged again, so every step appears exactly as in the uninterrupted run.
    assert _logged(interrupted) == _logged(tmp_path / "straight")
    a, b = saved_state(tmp_path / "straight", 30), saved_state(interrupted, 30)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def test_sigterm_saves_a_checkpoint_and_exits_0(tmp_path, fake_fashion_mnist):
    process = run_main(
        tmp_path,
        fake_fashion_mnist,
        wait=False,
        **{"schedule.num_steps": 10_000, "checkpoint.every_steps": 10_000},
    )
    deadline = time.monotonic() + 300
    metrics = tmp_path / "metrics.jsonl"
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        assert time.monotonic() < deadline and process.poll() is None, process.stderr.read()[-3000:]
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    saved = checkpoint_steps(tmp_path)
    assert saved and 0 < saved[-1] < 10_000
    assert f"preempted: checkpoint saved at step {saved[-1]}" in stderr


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_checkpoint(
    tmp_path, fake_fashion_mnist
):
    good = run_main(tmp_path, fake_fashion_mnist, **{"schedule.num_steps": 3})
    assert good.returncode == 0, good.stderr[-3000:]
    # Resume with std 0: the normalised images, hence the loss, become NaN at once.
    bad = run_main(
        tmp_path, fake_fashion_mnist, **{"schedule.num_steps": 9, "input.std": (0.0, 0.0, 0.0)}
    )
    assert bad.returncode != 0
    assert "loss is nan at step 4" in bad.stderr
    assert "Last good checkpoint: step 3" in bad.stderr
    assert checkpoint_steps(tmp_path) == [3]


def test_cli_overrides_apply_and_misspelled_keys_fail_clearly(tmp_path, fake_fashion_mnist):
    ok = run_main(
        tmp_path / "ok", fake_fashion_mnist, "--config.optim.lr=0.05", **{"schedule.num_steps": 2}
    )
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert json.loads((tmp_path / "ok" / "config.json").read_text())["optim"]["lr"] == 0.05
    bad = run_main(tmp_path / "bad", fake_fashion_mnist, "--config.optim.lrr=0.05")
    assert bad.returncode != 0
    assert "lrr" in bad.stderr and not (tmp_path / "bad").exists()


def test_user_errors_exit_2_with_one_line(tmp_path, fake_fashion_mnist):
    result = run_main(tmp_path, fake_fashion_mnist, **{"input.global_batch_size": 12})  # 8 devices
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: input.global_batch_size=12 is not divisible by the 8 devices of the mesh"
    )


# --- auxiliary heads -----------------------------------------------------------------------


class _TwoHeads(nnx.Module):
    """Auxiliary logits in train mode, like Inception-v3; none in eval mode."""

    def __init__(self):
        rngs = nnx.Rngs(0)
        self.head = nnx.Linear(3, 4, rngs=rngs)
        self.aux = nnx.Linear(3, 4, rngs=rngs)
        self.training = True

    def __call__(self, x):
        aux = self.aux(x) if self.training else None
        return ModelOutput(logits=self.head(x), features=x, aux_logits=aux)


def test_aux_logits_add_their_weighted_loss_and_train_the_aux_head():
    model = _TwoHeads()
    graphdef, params, batch_stats, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
    x = jax.random.normal(jax.random.key(0), (5, 3))
    targets = steps.soft_targets(jnp.array([0, 1, 2, 3, 0]), 4, 0.1)
    grad_fn = steps._forward_loss(graphdef, aux_loss_weight=0.4)
    (loss, (logits, _, _)), grads = grad_fn(params, batch_stats, rest, x, targets)
    main = jnp.mean(steps.cross_entropy(model.head(x), targets))
    aux = jnp.mean(steps.cross_entropy(model.aux(x), targets))
    np.testing.assert_allclose(loss, main + 0.4 * aux, rtol=1e-6)
    np.testing.assert_allclose(logits, model.head(x), rtol=1e-6)  # metrics use the main head
    assert float(jnp.abs(grads["aux"]["kernel"][...]).max()) > 0

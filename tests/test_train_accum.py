"""Gradient accumulation and BatchNorm groups in the jitted train step, on 8 simulated devices.

- Without BatchNorm, N micro-batches give the full batch's update (fp32 tolerance).
- With BatchNorm, the step's loss, gradient norm and new running statistics equal a manual
  computation over the micro-batches (rows k*b.. of every device's shard) and BN groups.
- The split into micro-batches is local: the compiled step moves no data between devices.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import alexnet, demo
from imagenot_jax.train import sharding, steps, trainer
from imagenot_jax.train.sharding import DATA_AXIS

# End-to-end runs: see the fast_compile fixture.
pytestmark = pytest.mark.usefixtures("fast_compile")


NUM_CLASSES = 10


def _setup(config):
    with config.unlocked():
        config.model.num_classes = NUM_CLASSES
    return trainer.make_setup(config, sharding.make_mesh(), num_train_examples=4096)


def _batch(batch_size: int, image_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "image": rng.integers(0, 256, (batch_size, image_size, image_size, 3), dtype=np.uint8),
        "label": rng.integers(0, NUM_CLASSES, (batch_size,), dtype=np.int32),
    }


def _one_step(config, batch):
    setup = _setup(config)
    step = steps.make_train_step(setup)
    state, metrics = step(setup.init(), sharding.global_batch(batch, setup.mesh))
    return jax.device_get(state), jax.device_get(metrics)


def _demo_config(batch_size: int, **fields):
    config = demo.get_config()
    config.input.global_batch_size = batch_size
    config.model.kwargs.widths = (4, 8, 8)
    for dotted, value in fields.items():
        section, name = dotted.split(".")
        config[section][name] = value
    return config


@pytest.mark.parametrize("bn_mode", ["global", "per_device"])
def test_accumulation_without_batchnorm_equals_the_full_batch_update(bn_mode):
    def config(accum: int):
        c = alexnet.get_config("smoke")
        c.model.kwargs.dropout = 0.0  # dropout draws differ per micro-batch
        c.input.global_batch_size = 32
        c.optim.lr = 1.0  # per 256 images: updates large enough to compare
        c.optim.grad_accum_steps = accum
        c.mesh.bn_mode = bn_mode
        return c

    batch = _batch(32, config(1).input.image_size)
    full_state, full = _one_step(config(1), batch)
    accum_state, accum = _one_step(config(4), batch)
    for name in ("loss", "train_top1", "grad_norm"):
        np.testing.assert_allclose(accum[name], full[name], rtol=1e-5, err_msg=name)
    moved = 0.0
    for a, b, before in zip(
        jax.tree.leaves(accum_state.params),
        jax.tree.leaves(full_state.params),
        jax.tree.leaves(jax.device_get(_setup(config(1)).init().params)),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        moved = max(moved, float(np.abs(b - before).max()))
    assert moved > 1e-3  # the step really updated the parameters


def _manual_step(config, batch):
    """Loss, grad norm and new batch stats computed group by group, micro-batch by micro-batch."""
    setup = _setup(config)
    state = setup.init()
    devices, accum = jax.device_count(), steps.accum_steps(config, jax.device_count())
    grad_fn = jax.jit(steps._forward_loss(setup.model_def.train, config.model.aux_loss_weight))
    images = np.asarray(steps.normalize(batch["image"], config.input, jnp.float32))
    targets = np.asarray(steps.soft_targets(batch["label"], NUM_CLASSES, 0.0))
    per = len(images) // devices // accum

    def micro(x, k):  # rows [k*per, (k+1)*per) of every device's shard, device by device
        return x.reshape(devices, accum, per, *x.shape[1:])[:, k]

    stats, losses, grads = state.batch_stats, [], []
    for k in range(accum):
        x, t = micro(images, k), micro(targets, k)
        if config.mesh.bn_mode == "global":
            groups = [(x.reshape(-1, *x.shape[2:]), t.reshape(-1, t.shape[-1]))]
        else:
            g = config.mesh.bn_group_size or per
            groups = [(x[d, j : j + g], t[d, j : j + g]) for d in range(devices)
                      for j in range(0, per, g)]  # fmt: skip
        outs = [grad_fn(state.params, stats, state.rest, gx, gt) for gx, gt in groups]
        losses.append(np.mean([loss for (loss, _), _ in outs]))
        stats = jax.tree.map(lambda *s: jnp.mean(jnp.stack(s), 0), *[o[0][1][1] for o in outs])
        grads += [o[1] for o in outs]
    mean_grads = jax.tree.map(lambda *g: jnp.mean(jnp.stack(g), 0), *grads)
    return np.mean(losses), float(optax.global_norm(mean_grads)), jax.device_get(stats)


@pytest.mark.parametrize(
    "fields",
    [
        {"mesh.bn_mode": "global", "optim.grad_accum_steps": 2},
        {"mesh.bn_mode": "per_device", "mesh.bn_group_size": 2},
        {"mesh.bn_mode": "per_device", "mesh.bn_group_size": 2, "optim.max_device_batch": 4},
    ],
    ids=["global_accum2", "groups_of_2", "groups_of_2_accum2"],
)
def test_batch_stats_and_loss_match_a_manual_per_group_computation(fields):
    config = _demo_config(64, **fields)  # 8 images per device
    batch = _batch(64, 28)
    loss, grad_norm, stats = _manual_step(config, batch)
    state, metrics = _one_step(config, batch)
    np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-5)
    np.testing.assert_allclose(metrics["grad_norm"], grad_norm, rtol=1e-4)
    initial = jax.device_get(_setup(config).init().batch_stats)
    for got, want, before in zip(
        jax.tree.leaves(state.batch_stats),
        jax.tree.leaves(stats),
        jax.tree.leaves(initial),
        strict=True,
    ):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        assert not np.allclose(got, before)  # the statistics did move


def test_whole_device_groups_differ_from_small_groups():
    """The manual reference is sensitive to the grouping (so the test above can fail)."""
    batch = _batch(64, 28)
    whole = _manual_step(_demo_config(64, **{"mesh.bn_mode": "per_device"}), batch)
    small = _manual_step(
        _demo_config(64, **{"mesh.bn_mode": "per_device", "mesh.bn_group_size": 2}), batch
    )
    assert not np.isclose(whole[0], small[0], rtol=1e-4)


@pytest.mark.parametrize("bn_mode", ["global", "per_device"])
def test_the_micro_batch_split_moves_no_data_between_devices(bn_mode):
    config = _demo_config(64, **{"mesh.bn_mode": bn_mode, "optim.grad_accum_steps": 4})
    setup = _setup(config)
    step = steps.make_train_step(setup)
    batch = sharding.global_batch(_batch(64, 28), setup.mesh)
    hlo = step.lower(setup.init(), batch).compile().as_text()
    assert "all-reduce" in hlo  # gradients (and global BN statistics) are reduced
    for collective in ("all-to-all", "collective-permute", "all-gather"):
        assert collective not in hlo, collective


def test_max_device_batch_picks_the_smallest_fitting_count_and_errors_name_fields():
    config = _demo_config(256)
    config.optim.max_device_batch = 100
    assert steps.accum_steps(config, 1) == 4  # 256 / 3 is not whole; 256 / 4 = 64
    config.optim.max_device_batch = 256
    assert steps.accum_steps(config, 1) == 1
    config.mesh.bn_mode, config.mesh.bn_group_size = "per_device", 48
    config.optim.max_device_batch = 100
    with pytest.raises(ValueError, match=r"optim.max_device_batch=100.*mesh.bn_group_size=48"):
        steps.accum_steps(config, 1)
    config.mesh.bn_group_size = 32
    assert steps.accum_steps(config, 2) == 2  # 128 per device -> 64, a multiple of 32
    config.optim.grad_accum_steps = 2
    with pytest.raises(ValueError, match="set only one"):
        steps.accum_steps(config, 1)
    config.optim.max_device_batch = None
    config.optim.grad_accum_steps = 3
    with pytest.raises(ValueError, match=r"optim.grad_accum_steps=3 does not divide .* 128"):
        steps.accum_steps(config, 2)


def test_bn_groups_are_validated_with_the_fields_named():
    mesh = sharding.make_mesh()
    config = _demo_config(64, **{"mesh.bn_group_size": 2})  # bn_mode global
    with pytest.raises(ValueError, match=r"mesh.bn_group_size=2 needs mesh.bn_mode='per_device'"):
        steps.make_grad_fn(config, mesh, None)
    config.mesh.bn_mode, config.mesh.bn_group_size = "per_device", 3
    with pytest.raises(ValueError, match=r"mesh.bn_group_size=3 does not divide .* of 8"):
        steps.make_grad_fn(config, mesh, None)
    config.mesh.bn_mode, config.mesh.bn_group_size = "global", 0  # 0: no groups (CLI's None)
    steps.make_grad_fn(config, mesh, None)
    assert mesh.shape[DATA_AXIS] == 8

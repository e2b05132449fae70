"""imagenot_jax.train.ema vs torch's AveragedModel, driven as torchvision's train.py drives it."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imagenot_jax.train import ema


def test_ema_decay_matches_torchvision_adjustment():
    # torchvision: adjust = world_size * batch_size * model_ema_steps / epochs
    decay = ema.ema_decay(0.99998, 32, 1024, 600)
    adjust = 1024 * 32 / 600
    assert decay == pytest.approx(1.0 - (1.0 - 0.99998) * adjust, rel=1e-12)
    assert ema.ema_decay(0.9, 32, 1024, 1) == 0.0  # alpha clamped at 1: EMA = model


def _torchvision_ema(torch, model, decay):
    """torchvision references/classification/utils.ExponentialMovingAverage."""

    def ema_avg(avg_model_param, model_param, num_averaged):
        return decay * avg_model_param + (1 - decay) * model_param

    return torch.optim.swa_utils.AveragedModel(model, "cpu", ema_avg, use_buffers=True)


def _state(model) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    ("steps_per_epoch", "pass_steps_per_epoch"),
    [(4, False), (5, True)],
    ids=["every_divides_epoch", "per_epoch_index"],
)
def test_update_matches_torch_averaged_model(steps_per_epoch, pass_steps_per_epoch):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    decay, every_steps, warmup_epochs, epochs = 0.7, 2, 1, 3
    torch_ema = _torchvision_ema(torch, model, decay)

    state = ema.init_ema({k: jnp.asarray(v) for k, v in _state(model).items()})
    update = jax.jit(
        functools.partial(
            ema.update_ema,
            decay=decay,
            every_steps=every_steps,
            warmup_steps=warmup_epochs * steps_per_epoch,
            steps_per_epoch=steps_per_epoch if pass_steps_per_epoch else None,
        )
    )
    step = 0
    for epoch in range(epochs):
        for i in range(steps_per_epoch):  # torchvision's train_one_epoch
            with torch.no_grad():  # a "training step": new weights and new BN statistics
                for p in model.parameters():
                    p.add_(torch.randn_like(p))
                model.train()
                model(torch.randn(8, 3) * (1 + epoch))
            if i % every_steps == 0:
                torch_ema.update_parameters(model)
                if epoch < warmup_epochs:
                    torch_ema.n_averaged.fill_(0)
            step += 1
            tree = {k: jnp.asarray(v) for k, v in _state(model).items()}
            state = update(state, tree, step)

            assert int(state.n_averaged) == int(torch_ema.n_averaged)
            theirs = _state(torch_ema.module)
            ours = ema.ema_tree(state)
            assert set(ours) == set(theirs)
            for name, value in theirs.items():
                np.testing.assert_allclose(
                    np.asarray(ours[name]), value, rtol=1e-6, atol=1e-7, err_msg=name
                )
    assert int(state.n_averaged) > 0  # averaging, not copying, after warmup


def test_first_update_copies_and_skipped_steps_keep_the_average():
    tree = {"w": jnp.ones(3), "count": jnp.asarray(7, jnp.int32)}
    state = ema.init_ema(jax.tree.map(jnp.zeros_like, tree))
    kwargs = dict(decay=0.9, every_steps=3, warmup_steps=0)
    state = ema.update_ema(state, tree, 1, **kwargs)  # i = 0: due, copies
    np.testing.assert_array_equal(state.average["w"], 1.0)
    assert int(state.average["count"]) == 7 and int(state.n_averaged) == 1
    later = {"w": jnp.full(3, 11.0), "count": jnp.asarray(9, jnp.int32)}
    skipped = ema.update_ema(state, later, 2, **kwargs)  # i = 1: not due
    assert skipped.average["w"][0] == 1.0 and int(skipped.n_averaged) == 1
    averaged = ema.update_ema(state, later, 4, **kwargs)  # i = 3: due, averages
    np.testing.assert_allclose(averaged.average["w"], 0.9 * 1 + 0.1 * 11, rtol=1e-6)
    assert int(averaged.average["count"]) == 7  # int(0.9 * 7 + 0.1 * 9) = int(7.2), as torch


def test_warmup_keeps_copying():
    state = ema.init_ema({"w": jnp.zeros(2)})
    for step in range(1, 7):
        state = ema.update_ema(
            state, {"w": jnp.full(2, float(step))}, step, decay=0.5, every_steps=1, warmup_steps=4
        )
        if step <= 4:
            np.testing.assert_array_equal(state.average["w"], float(step))
            assert int(state.n_averaged) == 0
    # Step 5 copied (n_averaged was still 0), step 6 averaged.
    np.testing.assert_allclose(state.average["w"], 0.5 * 5 + 0.5 * 6)
    assert int(state.n_averaged) == 2

"""Per-device BatchNorm (mesh.bn_mode='per_device', jax.shard_map) on 2 simulated devices:
every device draws its own dropout masks (the device index is folded into the model's RNG
streams inside the per-device function), and the streams' state stays one replicated copy.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from configs import alexnet
from imagenot_jax.train import sharding, steps, trainer
from imagenot_jax.train.sharding import DATA_AXIS

pytestmark = pytest.mark.usefixtures("fast_compile")

NUM_CLASSES = 10


def _two_device_mesh() -> jax.sharding.Mesh:
    return jax.make_mesh(
        (2,), (DATA_AXIS,), devices=jax.devices()[:2], axis_types=(jax.sharding.AxisType.Auto,)
    )


def _per_device_logits(dropout: float) -> tuple[np.ndarray, object, object]:
    """Train-mode logits of ONE image fed to both devices (one row each), and the RNG state
    before and after the step."""
    config = alexnet.get_config("smoke")  # dropout before each of the classifier's layers
    config.model.num_classes = NUM_CLASSES
    config.model.kwargs.dropout = dropout
    config.input.global_batch_size = 2
    config.mesh.bn_mode = "per_device"
    mesh = _two_device_mesh()
    setup = trainer.make_setup(config, mesh, num_train_examples=64)
    state = setup.init()
    loss_fn = steps.forward_loss(setup.model_def.train, config.model.aux_loss_weight)
    grad_fn = steps._per_device_bn(jax.value_and_grad(loss_fn, has_aux=True), mesh)
    size = config.input.image_size
    image = np.random.default_rng(0).integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    batch = sharding.global_batch({"image": np.repeat(image, 2, axis=0)}, mesh)
    images = steps.normalize(batch["image"], config.input, np.float32)
    targets = steps.soft_targets(np.zeros(2, np.int32), NUM_CLASSES, 0.0)
    (_, (logits, _, rest)), _ = jax.jit(grad_fn)(
        state.params, state.batch_stats, state.rest, images, targets
    )
    return np.asarray(logits), jax.device_get(state.rest), jax.device_get(rest)


def test_each_device_draws_its_own_dropout_masks():
    logits, before, after = _per_device_logits(dropout=0.5)
    assert logits.shape == (2, NUM_CLASSES)
    # The same image on both devices: only different dropout masks make the logits differ.
    assert not np.allclose(logits[0], logits[1])
    # The keys come back unfolded (one replicated stream); only the counters moved.
    keys = [leaf for leaf in jax.tree.leaves(before) if steps._is_key(leaf)]
    assert keys
    for b, a in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True):
        if steps._is_key(b):
            np.testing.assert_array_equal(jax.random.key_data(a), jax.random.key_data(b))
    counts_before = [x for x in jax.tree.leaves(before) if not steps._is_key(x)]
    counts_after = [x for x in jax.tree.leaves(after) if not steps._is_key(x)]
    assert any(int(a) != int(b) for a, b in zip(counts_after, counts_before, strict=True))


def test_without_dropout_both_devices_give_the_same_logits():
    """The control: the test above sees the masks, not some other per-device difference."""
    logits, _, _ = _per_device_logits(dropout=0.0)
    np.testing.assert_allclose(logits[0], logits[1], rtol=1e-6)

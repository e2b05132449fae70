"""imagenot_jax.train.optim against torch.optim and torchvision's reference-script recipes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from imagenot_jax.train import optim

EPOCHS = 20
STEPS_PER_EPOCH = 4
BASE_LR = 0.8


def _schedule_cfg(name: str, warmup_epochs: int = 0, method: str = "linear", per_epoch=True):
    cfg = optim.default_schedule_config()
    cfg.name = name
    cfg.epochs = EPOCHS
    cfg.per_epoch = per_epoch
    cfg.step_size = 7
    cfg.gamma = 0.3
    cfg.milestones = (6, 12, 17)
    cfg.eta_min = 0.001
    cfg.warmup_epochs = warmup_epochs
    cfg.warmup_method = method
    cfg.warmup_decay = 0.1
    return cfg


def _torch_scheduler(torch, optimizer, cfg):
    """The scheduler exactly as torchvision's train.py builds it (multistep/constant added)."""
    sched = torch.optim.lr_scheduler
    main = {
        "step": lambda: sched.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma),
        "multistep": lambda: sched.MultiStepLR(
            optimizer, milestones=list(cfg.milestones), gamma=cfg.gamma
        ),
        "cosine": lambda: sched.CosineAnnealingLR(
            optimizer, T_max=cfg.epochs - cfg.warmup_epochs, eta_min=cfg.eta_min
        ),
        "constant": lambda: sched.LambdaLR(optimizer, lambda epoch: 1.0),
    }[cfg.name]()
    if cfg.warmup_epochs == 0:
        return main
    warmup = {
        "linear": lambda: sched.LinearLR(
            optimizer, start_factor=cfg.warmup_decay, total_iters=cfg.warmup_epochs
        ),
        "constant": lambda: sched.ConstantLR(
            optimizer, factor=cfg.warmup_decay, total_iters=cfg.warmup_epochs
        ),
    }[cfg.warmup_method]()
    return sched.SequentialLR(optimizer, schedulers=[warmup, main], milestones=[cfg.warmup_epochs])


def _torch_epoch_lrs(cfg, base_lr: float = BASE_LR) -> np.ndarray:
    torch = pytest.importorskip("torch")
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=base_lr)
    scheduler = _torch_scheduler(torch, optimizer, cfg)
    lrs = []
    for _ in range(cfg.epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return np.asarray(lrs)


SCHEDULES = ["step", "multistep", "cosine", "constant"]
WARMUPS = [(0, "linear"), (3, "linear"), (3, "constant")]


@pytest.mark.parametrize("warmup", WARMUPS, ids=lambda w: f"warmup{w[0]}-{w[1]}")
@pytest.mark.parametrize("name", SCHEDULES)
def test_per_epoch_schedule_matches_torch(name, warmup):
    cfg = _schedule_cfg(name, *warmup)
    expected = _torch_epoch_lrs(cfg)
    schedule = jax.jit(optim.learning_rate_schedule(cfg, BASE_LR, STEPS_PER_EPOCH))
    for offset in range(STEPS_PER_EPOCH):  # lr is constant within an epoch, like torch's
        steps = jnp.arange(EPOCHS) * STEPS_PER_EPOCH + offset
        np.testing.assert_allclose(np.asarray(schedule(steps)), expected, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("warmup", WARMUPS, ids=lambda w: f"warmup{w[0]}-{w[1]}")
@pytest.mark.parametrize("name", SCHEDULES)
def test_per_step_schedule_follows_the_same_curve(name, warmup):
    cfg = _schedule_cfg(name, *warmup, per_epoch=False)
    expected = _torch_epoch_lrs(cfg)
    schedule = optim.learning_rate_schedule(cfg, BASE_LR, STEPS_PER_EPOCH)
    lrs = np.asarray(schedule(jnp.arange(EPOCHS * STEPS_PER_EPOCH)))
    at_epochs = lrs[::STEPS_PER_EPOCH]
    np.testing.assert_allclose(at_epochs, expected, rtol=1e-6, atol=1e-9)
    # Between epoch starts the lr moves monotonically from one epoch's value towards the next.
    for e in range(EPOCHS - 1):
        inside = lrs[e * STEPS_PER_EPOCH : (e + 1) * STEPS_PER_EPOCH]
        lo, hi = sorted((expected[e], expected[e + 1]))
        assert np.all(inside >= lo * (1 - 1e-6)) and np.all(inside <= hi * (1 + 1e-6))


def test_per_step_linear_warmup_is_linear_in_steps():
    cfg = _schedule_cfg("constant", 3, "linear", per_epoch=False)
    schedule = optim.learning_rate_schedule(cfg, BASE_LR, STEPS_PER_EPOCH)
    steps = np.arange(3 * STEPS_PER_EPOCH + 1)
    expected = BASE_LR * (0.1 + 0.9 * steps / (3 * STEPS_PER_EPOCH))
    np.testing.assert_allclose(np.asarray(schedule(steps)), expected, rtol=1e-6)


def test_per_step_cosine_matches_closed_form_mid_epoch():
    cfg = _schedule_cfg("cosine", per_epoch=False)
    schedule = optim.learning_rate_schedule(cfg, BASE_LR, STEPS_PER_EPOCH)
    step = 5 * STEPS_PER_EPOCH + STEPS_PER_EPOCH // 2  # epoch 5.5
    expected = 0.001 + (BASE_LR - 0.001) * (1 + np.cos(np.pi * 5.5 / EPOCHS)) / 2
    np.testing.assert_allclose(float(schedule(step)), expected, rtol=1e-6)


def _tiny_model() -> nnx.Module:
    class Net(nnx.Module):
        def __init__(self, rngs: nnx.Rngs):
            self.fc = nnx.Linear(4, 3, rngs=rngs)
            self.ln = nnx.LayerNorm(3, rngs=rngs)
            self.bn = nnx.BatchNorm(3, rngs=rngs)
            self.class_token = nnx.Param(jax.random.normal(rngs.params(), (1, 3)))

    model = Net(nnx.Rngs(0))
    # Non-trivial norm parameters so that their decay is visible.
    model.ln.scale.value = jax.random.normal(jax.random.key(1), (3,))
    model.ln.bias.value = jax.random.normal(jax.random.key(2), (3,))
    model.bn.scale.value = jax.random.normal(jax.random.key(3), (3,))
    model.bn.bias.value = jax.random.normal(jax.random.key(4), (3,))
    model.fc.bias.value = jax.random.normal(jax.random.key(5), (3,))
    return model


# nnx graph path -> (torch parameter name, whether the array is transposed)
TORCH_NAMES = {
    ("fc", "kernel"): ("fc.weight", True),
    ("fc", "bias"): ("fc.bias", False),
    ("ln", "scale"): ("ln.weight", False),
    ("ln", "bias"): ("ln.bias", False),
    ("bn", "scale"): ("bn.weight", False),
    ("bn", "bias"): ("bn.bias", False),
    ("class_token",): ("class_token", False),
}


def _torch_model(torch, params: dict):
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 3)
            self.ln = torch.nn.LayerNorm(3)
            self.bn = torch.nn.BatchNorm1d(3)
            self.class_token = torch.nn.Parameter(torch.zeros(1, 3))

    net = Net()
    named = dict(net.named_parameters())
    with torch.no_grad():
        for path, (name, transpose) in TORCH_NAMES.items():
            value = np.asarray(params[path])
            named[name].copy_(torch.from_numpy(np.array(value.T if transpose else value)))
    return net


def _torchvision_set_weight_decay(torch, model, weight_decay, norm_weight_decay, custom_keys):
    """torchvision references/classification/utils.py set_weight_decay, verbatim in behaviour."""
    norm_classes = (
        torch.nn.modules.batchnorm._BatchNorm,
        torch.nn.LayerNorm,
        torch.nn.GroupNorm,
        torch.nn.modules.instancenorm._InstanceNorm,
        torch.nn.LocalResponseNorm,
    )
    params = {"other": [], "norm": []}
    params_weight_decay = {"other": weight_decay, "norm": norm_weight_decay}
    keys = []
    for key, decay in custom_keys or []:
        params[key] = []
        params_weight_decay[key] = decay
        keys.append(key)

    def add(module, prefix=""):
        for name, p in module.named_parameters(recurse=False):
            target = None
            for key in keys:
                target_name = f"{prefix}.{name}" if prefix != "" and "." in key else name
                if key == target_name:
                    target = key
                    break
            if target is None:
                is_norm = norm_weight_decay is not None and isinstance(module, norm_classes)
                target = "norm" if is_norm else "other"
            params[target].append(p)
        for child_name, child in module.named_children():
            add(child, prefix=f"{prefix}.{child_name}" if prefix != "" else child_name)

    add(model)
    return [
        {"params": params[key], "weight_decay": params_weight_decay[key]}
        for key in params
        if len(params[key]) > 0
    ]


def _torch_param_groups(torch, net, cfg):
    custom = []
    if cfg.bias_weight_decay is not None:
        custom.append(("bias", cfg.bias_weight_decay))
    if cfg.embedding_weight_decay is not None:
        for key in ["class_token", "position_embedding", "relative_position_bias_table"]:
            custom.append((key, cfg.embedding_weight_decay))
    return _torchvision_set_weight_decay(
        torch, net, cfg.weight_decay, cfg.norm_weight_decay, custom or None
    )


def _torch_optimizer(torch, groups, cfg, lr):
    return {
        "sgd": lambda: torch.optim.SGD(
            groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=0.0
        ),
        "rmsprop": lambda: torch.optim.RMSprop(
            groups, lr=lr, momentum=cfg.momentum, eps=cfg.eps, alpha=cfg.rmsprop_alpha
        ),
        "adamw": lambda: torch.optim.AdamW(groups, lr=lr, betas=(cfg.b1, cfg.b2), eps=cfg.adam_eps),
    }[cfg.name]()


DECAYS = {
    "all_groups": dict(weight_decay=0.05, norm=0.0, bias=0.02, embedding=0.0),
    "bias_only": dict(weight_decay=0.05, norm=None, bias=0.2, embedding=None),
    "norm_only": dict(weight_decay=0.05, norm=0.3, bias=None, embedding=0.1),
    "uniform": dict(weight_decay=0.05, norm=None, bias=None, embedding=None),
}
OPTIMIZERS = {
    "sgd": dict(name="sgd", lr=0.2),
    "sgd_nesterov": dict(name="sgd", nesterov=True, lr=0.2),
    "rmsprop": dict(name="rmsprop", lr=0.05),
    "rmsprop_no_momentum": dict(name="rmsprop", momentum=0.0, lr=0.05),
    "adamw": dict(name="adamw", lr=0.05),
}


def _optim_cfg(opt: dict, decays: dict, clip):
    cfg = optim.default_optim_config()
    for key, value in opt.items():
        setattr(cfg, key, value)
    cfg.weight_decay = decays["weight_decay"]
    cfg.norm_weight_decay = decays["norm"]
    cfg.bias_weight_decay = decays["bias"]
    cfg.embedding_weight_decay = decays["embedding"]
    cfg.grad_clip_norm = clip
    cfg.lr_reference_batch = 256
    return cfg


@pytest.mark.parametrize("clip", [None, 0.5], ids=["noclip", "clip"])
@pytest.mark.parametrize("decays", list(DECAYS))
@pytest.mark.parametrize("opt", list(OPTIMIZERS))
def test_optimizer_matches_torch(opt, decays, clip):
    torch = pytest.importorskip("torch")
    cfg = _optim_cfg(OPTIMIZERS[opt], DECAYS[decays], clip)
    # lr warms up linearly over epoch 0 then halves every epoch: it changes during the test.
    sched_cfg = optim.default_schedule_config()
    sched_cfg.update(dict(name="step", epochs=4, step_size=1, gamma=0.5, warmup_epochs=1))
    sched_cfg.warmup_decay = 0.5
    steps_per_epoch, batch = 2, 512  # lr scaled x2 from its 256-image reference

    model = _tiny_model()
    params = nnx.state(model, nnx.Param)
    flat = {path: np.asarray(v.value) for path, v in params.flat_state()}
    tx, schedule = optim.make_optimizer(
        cfg,
        sched_cfg,
        global_batch_size=batch,
        steps_per_epoch=steps_per_epoch,
        decay_groups=optim.weight_decay_groups(model),
    )
    opt_state = tx.init(params)
    update = jax.jit(tx.update)

    net = _torch_model(torch, flat)
    named = dict(net.named_parameters())
    torch_opt = _torch_optimizer(torch, _torch_param_groups(torch, net, cfg), cfg, cfg.lr * 2)
    torch_sched = _torch_scheduler(torch, torch_opt, sched_cfg)

    rng = np.random.default_rng(0)
    for step in range(6):
        grads_np = {p: rng.normal(size=v.shape).astype(np.float32) for p, v in flat.items()}
        grads = jax.tree_util.tree_map_with_path(
            lambda kp, _, g=grads_np: jnp.asarray(g[optim._graph_path(kp)]), params
        )
        updates, opt_state = update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)

        for path, (name, transpose) in TORCH_NAMES.items():
            g = grads_np[path]
            named[name].grad = torch.from_numpy(g.T.copy() if transpose else g)
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
        torch_opt.step()
        if (step + 1) % steps_per_epoch == 0:
            torch_sched.step()

        assert float(schedule(step + 1)) == pytest.approx(torch_opt.param_groups[0]["lr"])
        ours = {path: np.asarray(v.value) for path, v in params.flat_state()}
        for path, (name, transpose) in TORCH_NAMES.items():
            theirs = named[name].detach().numpy()
            np.testing.assert_allclose(
                ours[path], theirs.T if transpose else theirs, rtol=1e-6, atol=3e-7, err_msg=name
            )


def test_optimizer_accepts_pure_dict_params():
    model = _tiny_model()
    params = nnx.state(model, nnx.Param)
    cfg = _optim_cfg(OPTIMIZERS["sgd"], DECAYS["all_groups"], None)
    tx, _ = optim.make_optimizer(
        cfg,
        optim.default_schedule_config(),
        global_batch_size=256,
        steps_per_epoch=10,
        decay_groups=optim.weight_decay_groups(model),
    )
    zeros = jax.tree.map(jnp.zeros_like, params)
    on_state, _ = tx.update(zeros, tx.init(params), params)
    pure = params.to_pure_dict()
    on_dict, _ = tx.update(zeros.to_pure_dict(), tx.init(pure), pure)
    on_state = nnx.State(on_state).to_pure_dict()
    jax.tree.map(np.testing.assert_array_equal, on_state, on_dict)
    # Zero gradients: the update is -lr * wd * p, with wd from the parameter's group.
    np.testing.assert_allclose(on_dict["ln"]["scale"], -0.2 * 0.0 * pure["ln"]["scale"])
    np.testing.assert_allclose(on_dict["fc"]["bias"], -0.2 * 0.02 * pure["fc"]["bias"], rtol=1e-6)


def test_linear_lr_scaling():
    cfg = optim.default_optim_config()
    sched = optim.default_schedule_config()
    _, schedule = optim.make_optimizer(cfg, sched, global_batch_size=1024, steps_per_epoch=5)
    assert float(schedule(0)) == pytest.approx(0.4)  # 0.1 per 256 images
    cfg.lr_reference_batch = 0
    _, schedule = optim.make_optimizer(cfg, sched, global_batch_size=1024, steps_per_epoch=5)
    assert float(schedule(0)) == pytest.approx(0.1)


def test_weight_decay_groups_by_module_type():
    class MyNorm(nnx.Module):  # a norm layer known only through NORM_CLASSES
        def __init__(self):
            self.weight = nnx.Param(jnp.ones(3))
            self.bias = nnx.Param(jnp.zeros(3))

    class Net(nnx.Module):
        def __init__(self, rngs: nnx.Rngs):
            self.blocks = nnx.List([nnx.Conv(3, 3, (1, 1), rngs=rngs), MyNorm()])
            self.norm_named_but_linear = nnx.Linear(3, 3, rngs=rngs)
            self.gn = nnx.GroupNorm(4, num_groups=2, rngs=rngs)
            self.pos_embedding = nnx.Param(jnp.zeros((1, 3)))
            self.cls_token = nnx.Param(jnp.zeros((1, 3)))

    net = Net(nnx.Rngs(0))
    groups = optim.weight_decay_groups(net, norm_classes=(*optim.NORM_CLASSES, MyNorm))
    labels = {path: v.value for path, v in groups.flat_state()}
    assert labels == {
        ("blocks", 0, "kernel"): "other",
        ("blocks", 0, "bias"): "bias",
        ("blocks", 1, "weight"): "norm",
        ("blocks", 1, "bias"): "norm",
        ("norm_named_but_linear", "kernel"): "other",
        ("norm_named_but_linear", "bias"): "bias",
        ("gn", "scale"): "norm",
        ("gn", "bias"): "norm",
        ("pos_embedding",): "embedding",
        ("cls_token",): "embedding",
    }
    without = {p: v.value for p, v in optim.weight_decay_groups(net).flat_state()}
    assert without[("blocks", 1, "weight")] == "other"
    # Same tree structure as the params, so the two zip.
    params = nnx.state(net, nnx.Param)
    assert jax.tree.structure(groups) == jax.tree.structure(params)


def test_register_norm_class(monkeypatch):
    monkeypatch.setattr(optim, "NORM_CLASSES", optim.NORM_CLASSES)

    @optim.register_norm_class
    class Norm2d(nnx.Module):
        def __init__(self):
            self.weight = nnx.Param(jnp.ones(3))

    labels = jax.tree.leaves(optim.weight_decay_groups(Norm2d()))
    assert labels == ["norm"]


@pytest.mark.parametrize(
    ("section", "field", "value"),
    [
        ("optim", "name", "lamb"),
        ("schedule", "name", "exponential"),
        ("schedule", "warmup_method", "cubic"),
    ],
)
def test_unknown_names_are_one_line_errors(section, field, value):
    cfgs = {"optim": optim.default_optim_config(), "schedule": optim.default_schedule_config()}
    cfgs["schedule"].warmup_epochs = 2
    cfgs[section][field] = value
    with pytest.raises(ValueError) as err:
        optim.make_optimizer(
            cfgs["optim"], cfgs["schedule"], global_batch_size=256, steps_per_epoch=10
        )
    message = str(err.value)
    assert f"{section}.{field}" in message and repr(value) in message and "\n" not in message


def test_rmsprop_has_no_nesterov():
    cfg = optim.default_optim_config()
    cfg.name, cfg.nesterov = "rmsprop", True
    with pytest.raises(ValueError, match=r"optim\.nesterov"):
        optim.make_optimizer(
            cfg, optim.default_schedule_config(), global_batch_size=256, steps_per_epoch=10
        )

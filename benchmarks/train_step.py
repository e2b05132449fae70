"""Train-step throughput: the project's jitted step vs torchvision + torch.optim on the same batch.

    python -m benchmarks.train_step                      # CPU: fp32, 2 threads, 4 small cases
    python -m benchmarks.train_step --device gpu --write # one GPU: bf16, study models, MFU

JAX side: the recipe config (configs/<file>.py, `dataset=imagenot`; the demo's own config for
resnet_mini) with the case's model, resolution and batch, `trainer.make_setup` on a one-device
mesh, `setup.init()`, `steps.make_train_step`: normalisation, mixup/cutmix, label smoothing,
forward, backward, optimizer, EMA, metrics, all in one jit. The batch is a device-resident uint8
NHWC array (no input pipeline). Peer, in the same run: torchvision's same architecture (the demo's
net is built here from torchvision's BasicBlock: torchvision has no 3-stage ResNet), the recipe's
optimizer from torch.optim (SGD momentum/Nesterov, RMSprop, AdamW, gradient clipping), the same
loss (cross-entropy, label smoothing, Inception's aux loss), torchvision's MixUp/CutMix on the
device batch, an EMA update every `ema_steps`.

CPU: fp32 on both sides, torch with as many intra-op threads as JAX uses (all cores), eager and
torch.compile; the two sides run interleaved (the machine is shared and noisy). GPU: full
resolution, JAX bf16 compute, torch channels_last + bf16 autocast + torch.compile; each side of
each model in its own process (a failure or OOM costs one cell, and neither allocator keeps the
other's memory), within one total time budget. MFU = XLA's FLOPs per image (cost analysis of the
compiled step) x images/s / the device's peak dense bf16 FLOP/s.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent
REPO = ROOT.parent
RESULTS = ROOT / "results" / "train_step"
PEAK_BF16 = {"H100": 989e12, "H200": 989e12}  # dense bf16 FLOP/s, SXM
MARK_BEGIN, MARK_END = "<!-- train_step:gpu:begin -->", "<!-- train_step:gpu:end -->"


@dataclasses.dataclass(frozen=True)
class Case:
    model: str  # registry / torchvision name
    config: str  # configs/<config>.py
    image_size: int | None  # None: the recipe's train crop
    batch: int
    kwargs: tuple[tuple[str, object], ...] = ()  # model kwargs on both sides


CPU_CASES = {
    "resnet_mini": Case("resnet_mini", "demo", 28, 128),
    "resnet18": Case("resnet18", "resnet50", 64, 32),
    "mobilenet_v3_small": Case("mobilenet_v3_small", "mobilenet_v3_large", 64, 32),
    "vit_b_16": Case("vit_b_16", "vit_b_16", 64, 32, (("image_size", 64),)),
}
GPU_CASES = {  # per-device batches that fit an H100 in bf16 with either framework
    "resnet50": Case("resnet50", "resnet50", None, 256),
    "mobilenet_v3_large": Case("mobilenet_v3_large", "mobilenet_v3_large", None, 256),
    "alexnet": Case("alexnet", "alexnet", None, 256),
    "vit_b_16": Case("vit_b_16", "vit_b_16", None, 256),
    "vgg19": Case("vgg19", "vgg19", None, 128),
    "resnet152": Case("resnet152", "resnet152", None, 128),
    "inception_v3": Case("inception_v3", "inception_v3", None, 128),
    "densenet161": Case("densenet161", "densenet161", None, 128),
    "convnext_large": Case("convnext_large", "convnext_large", None, 64),
    "efficientnet_v2_l": Case("efficientnet_v2_l", "efficientnet_v2_l", None, 64),
}


def recipe_config(case: Case, dtype: str):
    """The case's recipe config, resized to its resolution and batch."""
    spec = importlib.util.spec_from_file_location("recipe", REPO / "configs" / f"{case.config}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("dataset=imagenot")
    config.model.name = case.model
    config.model.dtype = dtype
    config.model.num_classes = 10 if case.config == "demo" else 1000
    config.input.global_batch_size = case.batch
    if case.image_size is not None:
        config.input.image_size = case.image_size
    for key, value in case.kwargs:
        config.model.kwargs[key] = value
    if case.model == "vit_b_16":
        config.model.kwargs.image_size = config.input.image_size
    return config


def _batch_arrays(config) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    size, batch = config.input.image_size, config.input.global_batch_size
    images = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    labels = rng.integers(0, config.model.num_classes, (batch,), dtype=np.int32)
    return images, labels


# --- the two sides: each returns (run `n` steps and wait, extra facts) ----------------------


def jax_runner(config, xla_conv_only: bool = False) -> tuple[Callable[[int], None], dict]:
    """`xla_conv_only`: trace without layers' CPU formulations (small-map GEMM, depthwise taps)."""
    from imagenot_jax.models import layers

    default = layers.CPU_GEMM_MAX_PIXELS, layers.CPU_DEPTHWISE_TAPS
    if xla_conv_only:
        layers.CPU_GEMM_MAX_PIXELS, layers.CPU_DEPTHWISE_TAPS = 0, False
    try:
        return _jax_runner(config)
    finally:
        layers.CPU_GEMM_MAX_PIXELS, layers.CPU_DEPTHWISE_TAPS = default


def _jax_runner(config) -> tuple[Callable[[int], None], dict]:
    import jax

    from imagenot_jax.train import sharding, steps, trainer

    mesh = jax.make_mesh((1,), ("data",))
    setup = trainer.make_setup(
        config, mesh, num_train_examples=1000 * config.input.global_batch_size
    )
    state = setup.init()
    step = steps.make_train_step(setup)
    images, labels = _batch_arrays(config)
    # Laid out as the loop feeds it (per_device BatchNorm's shard_map needs the data axis).
    batch = jax.device_put({"image": images, "label": labels}, sharding.batch_sharding(mesh))
    start = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    flops = float(cost.get("flops", 0.0)) if cost else 0.0
    holder = [state]

    def run(n: int) -> None:
        for _ in range(n):
            holder[0], metrics = compiled(holder[0], batch)
        jax.block_until_ready((holder[0], metrics))

    facts = {"flops_per_image": flops / config.input.global_batch_size, "compile_s": compile_s}
    return run, facts


class MiniResNet:
    """The demo's resnet_mini in torch: CIFAR stem, one torchvision BasicBlock per stage."""

    @staticmethod
    def build(widths, num_classes: int):
        import torch
        from torchvision.models.resnet import BasicBlock, conv1x1

        layers, inplanes = [], widths[0]
        stem = [torch.nn.Conv2d(3, inplanes, 3, padding=1, bias=False)]
        layers += [*stem, torch.nn.BatchNorm2d(inplanes), torch.nn.ReLU(inplace=True)]
        for i, planes in enumerate(widths):
            stride = 1 if i == 0 else 2
            down = None
            if stride != 1 or inplanes != planes:
                down = torch.nn.Sequential(
                    conv1x1(inplanes, planes, stride), torch.nn.BatchNorm2d(planes)
                )
            layers.append(BasicBlock(inplanes, planes, stride, down))
            inplanes = planes
        layers += [torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()]
        return torch.nn.Sequential(*layers, torch.nn.Linear(inplanes, num_classes))


def _torch_model(config):
    import torchvision

    kwargs = dict(config.model.get("kwargs", {}))
    if config.model.name == "resnet_mini":
        return MiniResNet.build(kwargs.get("widths", (8, 16, 32)), config.model.num_classes)
    extra = {"image_size": kwargs["image_size"]} if "image_size" in kwargs else {}
    if config.model.name == "inception_v3":
        extra = {"aux_logits": True, "init_weights": True}
    fn = getattr(torchvision.models, config.model.name)
    return fn(num_classes=config.model.num_classes, **extra)


def _torch_optimizer(config, params):
    import torch

    from imagenot_jax.train import optim

    o = config.optim
    lr = optim.scaled_lr(o, config.input.global_batch_size)
    if o.name == "sgd":
        return torch.optim.SGD(
            params, lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=o.weight_decay
        )
    if o.name == "rmsprop":
        return torch.optim.RMSprop(
            params, lr, alpha=o.rmsprop_alpha, eps=o.eps, momentum=o.momentum,
            weight_decay=o.weight_decay,
        )  # fmt: skip
    return torch.optim.AdamW(
        params, lr, betas=(o.b1, o.b2), eps=o.adam_eps, weight_decay=o.weight_decay
    )


def _torch_mixing(config):
    from torchvision.transforms import v2

    k, inp = config.model.num_classes, config.input
    mixes = [v2.MixUp(alpha=inp.mixup_alpha, num_classes=k)] if inp.mixup_alpha else []
    mixes += [v2.CutMix(alpha=inp.cutmix_alpha, num_classes=k)] if inp.cutmix_alpha else []
    return v2.RandomChoice(mixes) if mixes else None


def torch_runner(config, *, compile: bool, gpu: bool) -> tuple[Callable[[int], None], dict]:
    import torch

    device = torch.device("cuda" if gpu else "cpu")
    fmt = torch.channels_last if gpu else torch.contiguous_format
    model = _torch_model(config).to(device, memory_format=fmt).train()
    opt = _torch_optimizer(config, model.parameters())
    net = torch.compile(model) if compile else model
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=config.optim.label_smoothing)
    mix = _torch_mixing(config)
    clip = config.optim.get("grad_clip_norm")
    aux_weight = config.model.aux_loss_weight
    ema_every = config.optim.get("ema_steps") if config.optim.get("ema_decay") else None
    ema = [t.detach().clone() for t in model.state_dict().values() if t.is_floating_point()]
    live = [t for t in model.state_dict().values() if t.is_floating_point()]
    mean = torch.tensor(config.input.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(config.input.std, device=device).view(1, 3, 1, 1)
    images, labels = _batch_arrays(config)
    images = torch.from_numpy(images).to(device).permute(0, 3, 1, 2)  # NHWC memory: channels_last
    images = images if gpu else images.contiguous()
    labels = torch.from_numpy(labels).long().to(device)
    count = [0]

    def one_step() -> None:
        x = (images.float() - mean) / std
        targets = labels
        if mix is not None:
            x, targets = mix(x, labels)
        with torch.autocast(device.type, torch.bfloat16, enabled=gpu):
            out = net(x)
            logits, aux = (
                (out.logits, out.aux_logits) if hasattr(out, "aux_logits") else (out, None)
            )
            loss = loss_fn(logits.float(), targets)
            if aux is not None:
                loss = loss + aux_weight * loss_fn(aux.float(), targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        count[0] += 1
        if ema_every and count[0] % ema_every == 0:
            with torch.no_grad():
                torch._foreach_lerp_(ema, live, 1.0 - config.optim.ema_decay)

    def run(n: int) -> None:
        for _ in range(n):
            one_step()
        if gpu:
            torch.cuda.synchronize()

    start = time.perf_counter()
    run(2)  # torch.compile compiles on the first calls
    return run, {"compile_s": time.perf_counter() - start}


# --- timing ---------------------------------------------------------------------------------


def _steps_for(run: Callable[[int], None], seconds: float) -> int:
    """Steps per timed round so that a round takes about `seconds` (one step measured)."""
    start = time.perf_counter()
    run(1)
    return max(1, round(seconds / max(time.perf_counter() - start, 1e-6)))


def time_interleaved(
    runners: dict[str, Callable[[int], None]], batch: int, rounds: int, seconds: float
) -> dict[str, float]:
    """Median images/s of each runner over `rounds` rounds, the runners alternating per round."""
    steps = {name: _steps_for(run, seconds) for name, run in runners.items()}
    rates: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            start = time.perf_counter()
            run(steps[name])
            rates[name].append(steps[name] * batch / (time.perf_counter() - start))
    return {name: statistics.median(r) for name, r in rates.items()}


def run_cpu(names: list[str], rounds: int, seconds: float, gemm_off: bool = False) -> list[dict]:
    import jax
    import torch

    threads = os.cpu_count() or 1  # XLA:CPU's intra-op pool uses every core
    torch.set_num_threads(threads)
    rows = []
    for name in names:
        case = CPU_CASES[name]
        config = recipe_config(case, "float32")
        jax_run, facts = jax_runner(config)
        runners = {
            "jax": jax_run,
            **(
                {"jax (XLA conv only)": jax_runner(config, xla_conv_only=True)[0]}
                if gemm_off
                else {}
            ),
            "torch": torch_runner(config, compile=False, gpu=False)[0],
            "torch.compile": torch_runner(config, compile=True, gpu=False)[0],
        }
        rates = time_interleaved(runners, case.batch, rounds, seconds)
        device = jax.devices()[0].device_kind
        rows.append({"model": name, "size": config.input.image_size, "batch": case.batch,
                     "threads": threads, **rates, **facts, "device": device})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    return rows


# --- GPU: one process per (model, side), inside a total time budget --------------------------


def child(side: str, name: str, rounds: int, seconds: float) -> None:
    """One side of one GPU model: prints one JSON line with images/s (and FLOPs for JAX)."""
    case = GPU_CASES[name]
    config = recipe_config(case, "bfloat16")
    if side == "jax":
        run, facts = jax_runner(config)
    else:
        run, facts = torch_runner(config, compile=True, gpu=True)
    rate = time_interleaved({side: run}, case.batch, rounds, seconds)[side]
    print("RESULT " + json.dumps({"images_per_s": rate, **facts}), flush=True)


def _child_result(side: str, name: str, timeout: float, args) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.train_step", "--child", side, "--models", name,
           "--rounds", str(args.rounds), "--seconds", str(args.seconds)]  # fmt: skip
    env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=max(timeout, 1))  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"error": f"over its {timeout:.0f} s share of the budget"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"error": tail[0][:160]}
    return json.loads(lines[-1][len("RESULT ") :])


def gpu_device() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30).stdout  # fmt: skip
        return out.strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "unknown GPU"


def run_gpu(names: list[str], args) -> list[dict]:
    deadline = time.monotonic() + args.budget
    peak = next((v for k, v in PEAK_BF16.items() if k in gpu_device()), None)
    rows = []
    for i, name in enumerate(names):
        row = {"model": name, "batch": GPU_CASES[name].batch}
        for side in ("jax", "torch.compile"):
            sides_left = 2 * (len(names) - i) - (side != "jax")
            share = (deadline - time.monotonic()) / sides_left
            result = _child_result(side, name, share, args)
            row[side] = result.get("images_per_s")
            row[f"{side} error"] = result.get("error")
            row.update({k: v for k, v in result.items() if k == "flops_per_image"})
        if peak and row.get("jax") and row.get("flops_per_image"):
            row["mfu"] = row["jax"] * row["flops_per_image"] / peak
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


# --- reporting ------------------------------------------------------------------------------


def _fmt(value: float | None, pattern: str = "{:,.0f}") -> str:
    return "—" if value is None else pattern.format(value)


def markdown(rows: list[dict], gpu: bool) -> str:
    if not gpu:
        off = "jax (XLA conv only)"
        extra = any(off in r for r in rows)
        head = "| model | px | batch | JAX img/s |" + (" JAX, XLA conv only |" if extra else "")
        head += " torch eager | torch.compile | JAX/eager | JAX/compile |"
        lines = [head, "| --- |" + " ---: |" * (head.count("|") - 2)]
        for r in rows:
            cells = [r["model"], r["size"], r["batch"], f"{r['jax']:,.1f}"]
            cells += [f"{r[off]:,.1f}"] if extra else []
            cells += [f"{r['torch']:,.1f}", f"{r['torch.compile']:,.1f}"]
            cells += [f"{r['jax'] / r['torch']:.2f}x", f"**{r['jax'] / r['torch.compile']:.2f}x**"]
            lines.append("| " + " | ".join(map(str, cells)) + " |")
        return "\n".join(lines)
    lines = ["| model | batch | JAX img/s | torch.compile img/s | JAX/torch | GFLOP/img | MFU |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for r in rows:
        ratio = r["jax"] / r["torch.compile"] if r.get("jax") and r.get("torch.compile") else None
        flops = r.get("flops_per_image") and r["flops_per_image"] / 1e9
        lines.append(
            f"| {r['model']} | {r['batch']} | {_fmt(r.get('jax'))} | "
            f"{_fmt(r.get('torch.compile'))} | {_fmt(ratio, '**{:.2f}x**')} | "
            f"{_fmt(flops, '{:.1f}')} | {_fmt(r.get('mfu'), '{:.1%}')} |"
        )
    errors = [f"- {r['model']} {s}: {r[s + ' error']}" for r in rows
              for s in ("jax", "torch.compile") if r.get(s + " error")]  # fmt: skip
    return "\n".join(lines + (["", *errors] if errors else []))


def write_benchmarks_md(table: str, device: str, command: str) -> None:
    """Puts the GPU table between its markers in BENCHMARKS.md (appended the first time)."""
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text()
    block = (f"{MARK_BEGIN}\n{time.strftime('%Y-%m-%d')}, {device}, one GPU, bf16; "
             f"`{command}`:\n\n{table}\n{MARK_END}")  # fmt: skip
    if MARK_BEGIN in text and MARK_END in text:
        head, rest = text.split(MARK_BEGIN, 1)
        text = head + block + rest.split(MARK_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--models", help="comma-separated; default: every case of the device")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per runner")
    parser.add_argument("--seconds", type=float, default=None, help="per round (CPU 4, GPU 2)")
    parser.add_argument("--budget", type=float, default=450, help="GPU: total seconds")
    parser.add_argument("--write", action="store_true", help="GPU: put the table in BENCHMARKS.md")
    parser.add_argument(
        "--gemm-off", action="store_true", help="CPU: also time JAX with XLA's convolutions only"
    )
    parser.add_argument("--child", choices=("jax", "torch.compile"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    gpu = args.device == "gpu" or args.child is not None
    args.seconds = args.seconds or (2.0 if gpu else 4.0)
    cases = GPU_CASES if gpu else CPU_CASES
    names = args.models.split(",") if args.models else list(cases)
    if unknown := [n for n in names if n not in cases]:
        parser.error(f"--models {','.join(unknown)}: expected some of {','.join(cases)}")
    if args.child:
        return child(args.child, names[0], args.rounds, args.seconds)
    rows = run_gpu(names, args) if gpu else run_cpu(names, args.rounds, args.seconds, args.gemm_off)
    table = markdown(rows, gpu)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{args.device}.md"
    out.write_text(table + "\n")
    print(f"\n{table}\n\nwritten to {out}")
    if gpu and args.write:
        write_benchmarks_md(
            table, gpu_device(), "python -m " + " ".join(["benchmarks.train_step", *sys.argv[1:]])
        )


if __name__ == "__main__":
    main()

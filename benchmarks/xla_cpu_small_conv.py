"""XLA:CPU convolution cliff on small feature maps: a minimal, self-contained reproducer.

    python -m benchmarks.xla_cpu_small_conv [--batch 32] [--channels 512] [--sizes 1,2,3,4,7,8]

Only jax is imported (no project code), so the file can go to openxla/xla as is. For each square
map size it times one 3x3, stride 1, padding 1, NHWC/HWIO fp32 convolution two ways and prints
GFLOP/s (2 * N * H * W * Cin * Cout * 9 FLOPs forward; backward = grads of input and kernel,
twice that):

- `conv`:   jax.lax.conv_general_dilated (XLA's convolution emitter / Eigen on CPU)
- `matmul`: the same function as im2col by slicing + one dot_general, which XLA:CPU runs as a GEMM

Both compute the same values (checked before timing). What we saw on 2 Xeon cores, jaxlib 0.10.2,
batch 32, 512 -> 512 channels: the convolution runs at ~150 GFLOP/s on a 4x4 map but falls to
~2 GFLOP/s on 2x2 and ~12 on 1x1 (ResNet-18's layer4 at 64 px input), while the GEMM form stays
fast. Set XLA_FLAGS / thread counts in the environment before running to try variations.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")


def conv(x: jax.Array, w: jax.Array) -> jax.Array:
    """3x3, stride 1, padding 1 with XLA's convolution."""
    return jax.lax.conv_general_dilated(
        x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=DIMENSION_NUMBERS
    )


def conv_as_matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    """The same convolution as im2col (9 shifted slices, concatenated on channels) + one GEMM."""
    n, h, wd, c = x.shape
    kh, kw, _, o = w.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    taps = [xp[:, i : i + h, j : j + wd, :] for i in range(kh) for j in range(kw)]
    patches = jnp.concatenate(taps, axis=-1).reshape(n * h * wd, kh * kw * c)
    return (patches @ w.reshape(kh * kw * c, o)).reshape(n, h, wd, o)


def depthwise(x: jax.Array, w: jax.Array, stride: int = 1) -> jax.Array:
    """k x k depthwise conv (kernel HW1C), padding k // 2, with XLA's convolution."""
    k, c = w.shape[0], x.shape[-1]
    pads = ((k // 2, k // 2),) * 2
    return jax.lax.conv_general_dilated(
        x, w, (stride, stride), pads, dimension_numbers=DIMENSION_NUMBERS, feature_group_count=c
    )


def depthwise_as_taps(x: jax.Array, w: jax.Array, stride: int = 1) -> jax.Array:
    """The same depthwise conv as a sum over the k*k taps of shifted slices times a per-channel
    weight: elementwise work that XLA fuses into one loop."""
    k, n, h, wd, c = w.shape[0], *x.shape
    xp = jnp.pad(x, ((0, 0), (k // 2, k // 2), (k // 2, k // 2), (0, 0)))
    ho, wo = (h - 1) // stride + 1, (wd - 1) // stride + 1
    out = None
    for i in range(k):
        for j in range(k):
            end = (n, i + (ho - 1) * stride + 1, j + (wo - 1) * stride + 1, c)
            tap = jax.lax.slice(xp, (0, i, j, 0), end, (1, stride, stride, 1)) * w[i, j, 0]
            out = tap if out is None else out + tap
    return out


def _time(fn: Callable, *args: jax.Array, repeats: int, min_seconds: float = 0.2) -> float:
    """Median seconds per call of a compiled fn (compile and a warm-up call excluded)."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        calls, start = 0, time.perf_counter()
        while True:
            jax.block_until_ready(fn(*args))
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds:
                break
        times.append(elapsed / calls)
    return statistics.median(times)


def measure(batch: int, channels: int, size: int, repeats: int) -> dict[str, float]:
    kx, kw = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (batch, size, size, channels), jnp.float32)
    w = jax.random.normal(kw, (3, 3, channels, channels), jnp.float32) / np.sqrt(9 * channels)
    np.testing.assert_allclose(conv(x, w), conv_as_matmul(x, w), rtol=1e-4, atol=1e-4)
    flops = 2.0 * batch * size * size * channels * channels * 9
    result = {}
    for name, fn in (("conv", conv), ("matmul", conv_as_matmul)):
        fwd = jax.jit(fn)
        # Backward: the input and kernel gradients of sum(y * g) (what a train step needs).
        bwd = jax.jit(jax.grad(lambda x, w, f=fn: jnp.sum(f(x, w) * x), argnums=(0, 1)))
        result[f"{name}_fwd"] = flops / _time(fwd, x, w, repeats=repeats) / 1e9
        result[f"{name}_bwd"] = 3 * flops / _time(bwd, x, w, repeats=repeats) / 1e9
    return result


# Depthwise cases: (kernel, stride, map, channels, batch) as in MobileNetV3-Small at 64 px
# (3x3/5x5) and ConvNeXt (7x7) at small inputs.
DEPTHWISE_CASES = ((3, 1, 16, 64, 32), (3, 2, 16, 72, 32), (5, 1, 4, 240, 32), (5, 1, 2, 576, 32),
                   (7, 1, 16, 128, 32), (7, 1, 4, 512, 32))  # fmt: skip


def _torch_depthwise(k: int, stride: int, c: int) -> Callable:
    """torch's peer (NCHW, oneDNN): returns fn(x, need_grad) over a torch tensor."""
    import torch

    conv = torch.nn.Conv2d(c, c, k, stride, k // 2, groups=c, bias=False)

    def run(x: torch.Tensor, backward: bool) -> None:
        if backward:
            (conv(x) ** 2).sum().backward()
        else:
            with torch.no_grad():
                conv(x)

    return run


def _time_torch(run: Callable, x, backward: bool, repeats: int) -> float:
    run(x, backward)
    times = []
    for _ in range(repeats):
        calls, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < 0.2 or calls == 0:
            run(x, backward)
            calls += 1
        times.append(elapsed / calls)
    return statistics.median(times)


def measure_depthwise(case: tuple[int, ...], repeats: int) -> dict[str, float]:
    """GFLOP/s of a depthwise conv: XLA's conv, the tap formulation, torch (if installed)."""
    k, stride, size, c, batch = case
    kx, kw = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (batch, size, size, c), jnp.float32)
    w = jax.random.normal(kw, (k, k, 1, c), jnp.float32) / k
    np.testing.assert_allclose(
        depthwise(x, w, stride), depthwise_as_taps(x, w, stride), rtol=1e-4, atol=1e-4
    )
    ho = (size - 1) // stride + 1
    flops = 2.0 * batch * ho * ho * c * k * k
    result = {}
    for name, fn in (("conv", depthwise), ("taps", depthwise_as_taps)):
        fwd = jax.jit(lambda x, w, f=fn: f(x, w, stride))
        bwd = jax.jit(jax.grad(lambda x, w, f=fn: jnp.sum(f(x, w, stride) ** 2), argnums=(0, 1)))
        result[f"{name}_fwd"] = flops / _time(fwd, x, w, repeats=repeats) / 1e9
        result[f"{name}_bwd"] = 3 * flops / _time(bwd, x, w, repeats=repeats) / 1e9
    try:
        import torch
    except ImportError:
        return result
    xt = torch.from_numpy(np.asarray(x)).permute(0, 3, 1, 2).contiguous().requires_grad_()
    run = _torch_depthwise(k, stride, c)
    result["torch_fwd"] = flops / _time_torch(run, xt, False, repeats) / 1e9
    result["torch_bwd"] = 3 * flops / _time_torch(run, xt, True, repeats) / 1e9
    return result


def main_depthwise(repeats: int) -> None:
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    print("depthwise, fp32, GFLOP/s (fwd; fwd+bwd), torch with as many threads as cores")
    print("| k | stride | map | C | batch | conv fwd | taps fwd | torch fwd "
          "| conv f+b | taps f+b | torch f+b |")  # fmt: skip
    print("| ---: " * 11 + "|")
    for case in DEPTHWISE_CASES:
        r = measure_depthwise(case, repeats)
        cells = [f"{r.get(f'{n}_{p}', float('nan')):.1f}" for p in ("fwd", "bwd")
                 for n in ("conv", "taps", "torch")]  # fmt: skip
        print("| " + " | ".join([*map(str, case), *cells]) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--channels", type=int, default=512)
    parser.add_argument("--sizes", default="1,2,3,4,7,8")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--depthwise", action="store_true", help="depthwise cases (vs torch)")
    args = parser.parse_args()
    if args.depthwise:
        return main_depthwise(args.repeats)
    print(
        f"jax {jax.__version__}, jaxlib {jax.lib.__version__ if hasattr(jax, 'lib') else '?'}, "
        f"{jax.devices()[0].device_kind}, {os.cpu_count()} CPUs ({platform.processor() or '?'}), "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}"
    )
    print(f"3x3 conv, stride 1, pad 1, fp32, batch {args.batch}, {args.channels}->{args.channels}")
    print("| map | conv fwd GFLOP/s | matmul fwd | conv fwd+bwd | matmul fwd+bwd |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for size in map(int, args.sizes.split(",")):
        r = measure(args.batch, args.channels, size, args.repeats)
        print(
            f"| {size}x{size} | {r['conv_fwd']:.1f} | {r['matmul_fwd']:.1f} | "
            f"{r['conv_bwd']:.1f} | {r['matmul_bwd']:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()

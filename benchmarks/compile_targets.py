"""Compile the project's real train and eval steps for hardware this machine does not have.

XLA compiles for an NVIDIA GPU through the `jax-cuda12-plugin` wheel (no CUDA libraries needed)
and for TPU topologies through `libtpu` ("deviceless" compilation, the `compile` extra). A
compiled program gives per-device memory and the optimized HLO (kernels, dtypes, collectives);
it gives no run time. `targets/*.txtpb` are openxla/xla's GPU target descriptions
(`xla/backends/gpu/target_config/specs/`, Apache-2.0) reduced to the fields jaxlib 0.10 parses.

Call `configure_environment()` before JAX starts (it selects the CPU platform for the host side
and keeps libtpu from querying a GCE metadata server or taking its single-process lock).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import re
import time
from typing import Any

TARGETS_DIR = pathlib.Path(__file__).resolve().parent / "targets"
GIB = 2**30
# Fits = at most this share of the device's memory; on GPUs run with
# XLA_PYTHON_CLIENT_MEM_FRACTION=0.9 (JAX preallocates 75% by default).
MEMORY_BUDGET = 0.9
# Deviceless GPU compiles skip autotuning, and without it the Triton GEMM emitter fails on some
# shapes ("Couldn't find output tile sizes"): cuBLAS then serves every GEMM.
GPU_COMPILER_OPTIONS = {"xla_gpu_enable_triton_gemm": False}


def configure_environment() -> None:
    """Environment for deviceless compiles; must run before JAX initialises a backend."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # parallel test workers


@dataclasses.dataclass(frozen=True)
class Target:
    """A device kind and slice: what to compile for and what to measure against."""

    name: str
    platform: str  # "cuda" or "tpu"
    topology: str  # "1x1x1" (one GPU) or a TPU topology name, e.g. "v5e:2x4"
    memory_bytes: int  # per device
    peak_flops: float  # dense bf16 FLOP/s per device (vendor figure)
    description: str
    target_config: str | None = None  # GPU: file in targets/

    @property
    def budget_bytes(self) -> int:
        return int(MEMORY_BUDGET * self.memory_bytes)


def _gpu_memory(file_name: str) -> int:
    text = (TARGETS_DIR / file_name).read_text()
    return int(re.search(r"device_memory_size:\s*(\d+)", text).group(1))


def _targets() -> dict[str, Target]:
    gpus = [
        ("h100", "h100_sxm.txtpb", "one NVIDIA H100 SXM 80 GB"),
        ("h200", "h200.txtpb", "one NVIDIA H200 141 GB"),
    ]
    targets = {
        name: Target(name, "cuda", "1x1x1", _gpu_memory(f), 989.4e12, desc, target_config=f)
        for name, f, desc in gpus
    }
    # HBM per chip and dense bf16 peaks from Google Cloud's TPU pages.
    tpus = [
        ("v5e-4", "v5e:2x2", 16 * GIB, 197e12, "TPU v5e 2x2 (4 chips, one host)"),
        ("v5e-8", "v5e:2x4", 16 * GIB, 197e12, "TPU v5e 2x4 (8 chips, one host)"),
        ("v5p-16", "v5p:2x2x2", 95 * GIB, 459e12, "TPU v5p 2x2x2 (8 chips, two hosts)"),
    ]
    targets.update(
        {name: Target(name, "tpu", topo, mem, peak, desc) for name, topo, mem, peak, desc in tpus}
    )
    return targets


TARGETS = _targets()


@functools.cache
def devices(target_name: str) -> tuple[Any, ...]:
    """The target's devices (deviceless: they exist only to compile for)."""
    from jax.experimental import topologies

    target = TARGETS[target_name]
    if target.platform == "cuda":
        config = (TARGETS_DIR / target.target_config).read_text()
        topology = topologies.get_topology_desc(
            platform="cuda", target_config=config, topology=target.topology
        )
    else:
        topology = topologies.get_topology_desc(target.topology, platform="tpu")
    return tuple(topology.devices)


def mesh(target_name: str) -> Any:
    """The trainer's one-axis `data` mesh over every device of the target."""
    import jax
    import numpy as np

    from imagenot_jax.train.sharding import DATA_AXIS

    return jax.sharding.Mesh(np.array(devices(target_name)), (DATA_AXIS,))


def abstract_state(setup: Any) -> Any:
    """The train state as sharded ShapeDtypeStructs: nothing is allocated."""
    import jax

    return jax.tree.map(
        lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
        setup.abstract_state,
        setup.state_shardings,
    )


def abstract_batch(setup: Any, batch_size: int, *, eval_batch: bool = False) -> dict:
    """A global batch of uint8 images (and eval's index/mask) sharded over `data`."""
    import jax
    import jax.numpy as jnp

    from imagenot_jax.train import sharding

    config, batch_sharding = setup.config, sharding.batch_sharding(setup.mesh)
    size = config.input.eval_crop if eval_batch else config.input.image_size
    channels = config.input.get("channels", 3)

    def array(shape: tuple[int, ...], dtype: Any) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sharding)

    batch = {
        "image": array((batch_size, size, size, channels), jnp.uint8),
        "label": array((batch_size,), jnp.int32),
    }
    if eval_batch:
        batch["index"] = array((batch_size,), jnp.int64 if jax.config.x64_enabled else jnp.int32)
        batch["mask"] = array((batch_size,), jnp.bool_)
    return batch


def compile_program(jitted: Any, args: tuple, target: Target) -> dict:
    """Traces, lowers and compiles `jitted(*args)`; memory, HLO and timings of the program."""
    start = time.perf_counter()
    traced = jitted.trace(*args)
    lowered = traced.lower()
    trace_s = time.perf_counter() - start
    start = time.perf_counter()
    options = GPU_COMPILER_OPTIONS if target.platform == "cuda" else None
    compiled = lowered.compile(compiler_options=options)
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    total = (
        memory.argument_size_in_bytes
        + memory.output_size_in_bytes
        - memory.alias_size_in_bytes
        + memory.temp_size_in_bytes
        + memory.generated_code_size_in_bytes
    )
    cost = compiled.cost_analysis() or {}
    return {
        "trace_s": round(trace_s, 1),
        "compile_s": round(compile_s, 1),
        "bytes": {
            "argument": memory.argument_size_in_bytes,
            "output": memory.output_size_in_bytes,
            "alias": memory.alias_size_in_bytes,
            "temp": memory.temp_size_in_bytes,
            "total": total,
        },
        "fits": total <= target.budget_bytes,
        "xla_flops_per_device": cost.get("flops"),  # TPU gives it; deviceless GPU does not
        "lowered_flops": lowered_flops(lowered),
        "hlo": compiled.as_text(),
    }


def lowered_flops(lowered: Any) -> float | None:
    """FLOPs of the whole (global, unpartitioned) lowered program, by XLA's HloCostAnalysis on
    the CPU client. A loop body (gradient accumulation) is counted once."""
    from jax._src import xla_bridge
    from jax._src.lib import _jax

    try:
        module = lowered.compiler_ir("hlo").get_hlo_module()
        return _jax.hlo_module_cost_analysis(xla_bridge.get_backend("cpu"), module).get("flops")
    except Exception:  # private API: a report without FLOPs beats no report
        return None


def is_out_of_memory(error: BaseException) -> bool:
    """TPU compiles refuse programs that exceed HBM; that answers "does not fit", not a bug."""
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "Ran out of memory" in text

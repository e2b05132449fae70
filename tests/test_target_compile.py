"""The train step compiled for one H100 and a TPU v5e 2x2, without either (deviceless).

A sharding or dtype regression then fails here instead of on a pod: the demo's ResNet (with
BatchNorm) in bf16 must compile to bf16 convolutions only, stay under a memory budget per device,
and show the collectives of its mesh mode and none of the others'.
"""

from __future__ import annotations

import importlib.util
import json
import multiprocessing
import pathlib

import pytest

if importlib.util.find_spec("jax_plugins.xla_cuda12") is None or not importlib.util.find_spec(
    "libtpu"
):
    pytest.skip(
        "deviceless compilation needs the `compile` extra (jax-cuda12-plugin, libtpu): "
        "pip install -e '.[compile]' -c constraints.txt",
        allow_module_level=True,
    )

from benchmarks import compile_targets, hlo_stats

compile_targets.configure_environment()

BATCH_PER_DEVICE = 8
# Measured: 8.6 MB on the H100, 11-23 MB per v5e chip (FSDP replicates nothing it can split, but
# this model is too small for that to pay). Budget with headroom, far below any real model.
MEMORY_BUDGET_BYTES = 48 * 2**20


def _compiled(target_name: str, *, bn_mode: str = "global", fsdp: bool = False) -> dict:
    from configs import demo
    from imagenot_jax.train import steps, trainer

    config = demo.get_config(None)
    config.model.num_classes = 10
    config.model.dtype = "bfloat16"
    config.mesh.bn_mode = bn_mode
    config.mesh.fsdp = fsdp
    config.mesh.fsdp_min_size = 256  # elements: shards this small model's convolutions
    mesh = compile_targets.mesh(target_name)
    config.input.global_batch_size = BATCH_PER_DEVICE * mesh.size
    setup = trainer.make_setup(config, mesh, 60_000)
    args = (
        compile_targets.abstract_state(setup),
        compile_targets.abstract_batch(setup, config.input.global_batch_size),
    )
    target = compile_targets.TARGETS[target_name]
    result = compile_targets.compile_program(steps.make_train_step(setup), args, target)
    result["stats"] = hlo_stats.summarize(result["hlo"])
    result["batchnorm_layers"] = len(_leaves(setup.abstract_state.batch_stats)) // 2
    return result


def _leaves(tree) -> list:
    import jax

    return jax.tree.leaves(tree)


def _assert_bf16_math(stats: dict) -> None:
    math = stats["convs_matmuls"]
    assert math.get("conv:bf16/other", 0) > 0, math
    assert not any(kind.endswith(":f32") for kind in math), (math, stats["fp32_convs_matmuls"])


def test_h100_train_step_is_bf16_cudnn_and_small():
    result = _compiled("h100")
    stats = result["stats"]
    _assert_bf16_math(stats)
    assert any(t.startswith("__cudnn$conv") for t in stats["custom_calls"]), stats["custom_calls"]
    assert result["bytes"]["total"] < MEMORY_BUDGET_BYTES
    assert stats["collectives"] == {}  # one device


@pytest.fixture(scope="module")
def v5e_global():
    return _compiled("v5e-4", bn_mode="global")


def test_v5e_global_batchnorm_all_reduces_statistics_in_the_forward(v5e_global):
    stats = v5e_global["stats"]
    _assert_bf16_math(stats)
    assert v5e_global["bytes"]["total"] < MEMORY_BUDGET_BYTES
    # BatchNorm layers reduce their batch statistics over the global batch in the forward pass
    # (XLA combines the reductions of independent layers: a block's shortcut and main path).
    forward = stats["collectives"]["all-reduce"]["forward"]
    assert forward >= v5e_global["batchnorm_layers"] // 2 > 0
    assert "all-gather" not in stats["collectives"]  # replicated state


def test_v5e_per_device_batchnorm_reduces_only_gradients():
    result = _compiled("v5e-4", bn_mode="per_device")
    stats = result["stats"]
    _assert_bf16_math(stats)
    assert result["bytes"]["total"] < MEMORY_BUDGET_BYTES
    collectives = stats["collectives"]
    # One combined mean of loss, gradients and running statistics after the backward pass;
    # nothing in the forward (statistics stay per device) and no state gathering.
    assert set(collectives) == {"all-reduce"}, collectives
    assert collectives["all-reduce"]["forward"] == 0
    assert collectives["all-reduce"]["count"] <= 2


def test_v5e_fsdp_gathers_sharded_parameters(v5e_global):
    result = _compiled("v5e-4", bn_mode="global", fsdp=True)
    stats = result["stats"]
    _assert_bf16_math(stats)
    assert result["bytes"]["total"] < MEMORY_BUDGET_BYTES
    assert stats["collectives"]["all-gather"]["count"] > 0, stats["collectives"]
    # The state arguments are split four ways instead of replicated.
    assert result["bytes"]["argument"] < 0.6 * v5e_global["bytes"]["argument"]


def _save_cells(path: str, prefix: str, count: int) -> None:
    from benchmarks import target_compile

    for index in range(count):
        target_compile.save_cell(pathlib.Path(path), {"cell": f"{prefix}{index}/h100/ref"})


def test_report_cache_keeps_the_cells_of_drivers_running_at_once(tmp_path):
    """Two drivers filling one JSON cache at once (one per target, say) lose none of the cells."""
    path = tmp_path / "target_compile.json"
    context = multiprocessing.get_context("spawn")
    drivers = [
        context.Process(target=_save_cells, args=(str(path), name, 25)) for name in ("a", "b")
    ]
    for driver in drivers:
        driver.start()
    for driver in drivers:
        driver.join(timeout=120)
        assert driver.exitcode == 0
    cells = json.loads(path.read_text())["cells"]
    assert len(cells) == 50
    assert {"a0/h100/ref", "b24/h100/ref"} <= set(cells)


def test_report_names_the_cells_not_computed_yet():
    """A partial table says which cells it lacks (the rows alone would not show a gap)."""
    from benchmarks import compile_report, target_compile

    results = json.loads(target_compile.RESULTS.read_text())
    keys = [cell.key for cell in target_compile.all_cells(("resnet50",), ("h100", "v5e-8"))]
    assert len(keys) == 3 and set(keys) <= set(results["cells"])
    complete = compile_report.markdown(results, ("resnet50",), ("h100", "v5e-8"), keys)
    assert "Not computed yet" not in complete and complete.count("| resnet50 |") == 3
    partial = {**results, "cells": {k: v for k, v in results["cells"].items() if k != keys[-1]}}
    table = compile_report.markdown(partial, ("resnet50",), ("h100", "v5e-8"), keys)
    assert f"**Not computed yet:** 1 of 3 cells: `{keys[-1]}`" in table

"""The compile report's figures and table (see target_compile.py)."""

from __future__ import annotations

import pathlib
import platform
from importlib import metadata
from typing import Any

from benchmarks import hlo_stats
from benchmarks.compile_targets import GIB, MEMORY_BUDGET, TARGETS

BEGIN, END = "<!-- target_compile:begin -->", "<!-- target_compile:end -->"
_SHORT = {"all-reduce": "AR", "all-gather": "AG", "reduce-scatter": "RS", "all-to-all": "A2A",
          "collective-permute": "CP"}  # fmt: skip


def hlo_summary(hlo_text: str, keep_names: int = 10) -> dict:
    """hlo_stats.summarize with the list of float32 ops cut to its first names."""
    stats = hlo_stats.summarize(hlo_text)
    names = stats["fp32_convs_matmuls"]
    stats["fp32_convs_matmuls"] = {"count": len(names), "first": names[:keep_names]}
    return stats


def count_params(tree: Any) -> int:
    import jax
    import numpy as np

    return int(sum(np.prod(leaf.shape, dtype=np.int64) for leaf in jax.tree.leaves(tree)))


def versions() -> dict[str, str]:
    packages = ("jax", "jaxlib", "jax-cuda12-plugin", "libtpu", "flax")
    found = {}
    for name in packages:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "missing"
    return found | {"python": platform.python_version()}


def flops_per_image(cell: dict) -> tuple[float | None, str]:
    """FLOPs of one image's train step: XLA's per-device cost analysis where the compiler gives
    it (TPU), else the lowered program's (global) count. Both count a loop body once, so the
    divisor is the micro-batch (per device or global)."""
    micro = cell.get("micro_batch")
    if not micro or "error" in cell:
        return None, ""
    if cell.get("xla_flops_per_device"):
        return cell["xla_flops_per_device"] / micro, "xla"
    if cell.get("lowered_flops"):
        return cell["lowered_flops"] / (micro * cell["devices"]), "lowered"
    return None, ""


def mfu(cell: dict, images_per_s_per_device: float) -> float | None:
    """Model FLOPs utilisation at a given throughput."""
    flops, _ = flops_per_image(cell)
    if flops is None:
        return None
    return images_per_s_per_device * flops / cell["target"]["peak_flops"]


def _gib(value: int | None) -> str:
    return "" if value is None else f"{value / GIB:.1f}"


def _collectives(stats: dict) -> str:
    parts = [
        f"{_SHORT.get(kind, kind)} {c['count']} / {c['bytes'] / 2**20:,.0f} MiB"
        for kind, c in sorted(stats.get("collectives", {}).items())
    ]
    return ", ".join(parts) or "none"


def _batch(cell: dict) -> str:
    """devices x micro-batch [x accumulation steps] [, BatchNorm group size (ghost BN)]."""
    accum = cell.get("accum", 1)
    text = f"{cell['devices']}x{cell['micro_batch']}" + (f"x{accum} acc" if accum > 1 else "")
    group = cell.get("bn_group_size")
    return f"{text}, BN/{group}" if group and "bn_global" not in cell["cell"] else text


def row(cell: dict) -> str:
    model, target, variant = cell["cell"].split("/")
    if "error" in cell and not cell.get("bytes"):
        return (
            f"| {model} | {target} | {variant} | | | **error**: {cell['error'][:120]} |" + " |" * 8
        )
    stats = cell.get("hlo_stats", {})
    flops, source = flops_per_image(cell)
    peak_rate = cell["target"]["peak_flops"] / flops if flops else None
    memory = cell["target"]["memory_bytes"]
    evaluated = cell.get("eval", {})
    eval_text = (
        f"{_gib(evaluated['bytes']['total'])} GiB" + ("" if evaluated.get("fits") else " (over)")
        if evaluated
        else "-"
    )
    fits = "yes" if cell.get("fits") else "**no**"
    return (
        f"| {model} | {target} | {variant} | {_batch(cell)} | "
        f"{_gib(cell['bytes']['total'])} / {memory / GIB:.0f} | {fits} | "
        f"{'' if flops is None else f'{flops / 1e9:.1f}'}{' (L)' if source == 'lowered' else ''} | "
        f"{'' if peak_rate is None else f'{peak_rate:,.0f}'} | {stats.get('kernels', '')} | "
        f"{_collectives(stats)} | {stats.get('fp32_convs_matmuls', {}).get('count', '')} | "
        f"{stats.get('grouped_convs', '')} | {eval_text} | "
        f"{cell.get('trace_s', '')} + {cell.get('compile_s', '')} |"
    )


def markdown(
    results: dict,
    models: tuple[str, ...],
    targets: tuple[str, ...],
    expected: list[str] | None = None,
) -> str:
    """The report table of the cached cells; `expected` (cell keys) adds a line naming the cells
    not computed yet, so a partial table says so itself."""
    header = (
        "| model | target | variant | batch/step (devices x micro x accum, BN group) "
        "| GiB/device (of) | fits "
        "| GFLOP/img | img/s/device at 100% MFU | kernels | collectives (count / bytes) "
        "| fp32 conv+mm | grouped convs | eval step | trace + compile s |\n"
        "| --- | --- | --- | --- | ---: | --- | ---: | ---: | ---: | --- | ---: | ---: | --- "
        "| ---: |"
    )
    rows = [
        row(cell)
        for key, cell in sorted(results["cells"].items(), key=lambda kv: _order(kv[0], models))
        if key.split("/")[0] in models and key.split("/")[1] in targets
    ]
    versions = results.get("versions", {})
    notes = (
        f"Fits: total bytes (arguments + outputs - donated + temporaries + code) ≤ "
        f"{MEMORY_BUDGET:.0%} of the device's memory. GFLOP/img: XLA's cost analysis of the "
        "compiled TPU program per device, or (L) of the lowered program (deviceless GPU compiles "
        "give none), per image of the micro-batch. Counts are static (a loop body once). "
        "Targets: " + "; ".join(f"{t.name} = {t.description}" for t in TARGETS.values()) + ". "
        "Versions: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())) + "."
    )
    missing = [key for key in expected or [] if key not in results["cells"]]
    if missing:
        notes += (
            f"\n\n**Not computed yet:** {len(missing)} of {len(expected)} cells: "
            + ", ".join(f"`{key}`" for key in missing)
            + " (`make bench-compile` computes only the missing cells)."
        )
    return "\n".join([header, *rows, "", notes])


def _order(key: str, models: tuple[str, ...]) -> tuple:
    model, target, variant = key.split("/")
    targets = list(TARGETS)
    return (
        models.index(model) if model in models else len(models),
        targets.index(target) if target in targets else len(targets),
        variant,
    )


def one_line(cell: dict) -> str:
    if "error" in cell and not cell.get("bytes"):
        return f"error: {cell['error'][:200]}"
    flops, _ = flops_per_image(cell)
    return (
        f"{_batch(cell)}: {_gib(cell['bytes']['total'])} GiB/device, fits={cell.get('fits')}, "
        f"{'' if flops is None else f'{flops / 1e9:.1f} GFLOP/img, '}"
        f"{cell['hlo_stats']['kernels']} kernels, {_collectives(cell['hlo_stats'])}, "
        f"trace {cell['trace_s']} s, compile {cell['compile_s']} s"
    )


def write_section(path: pathlib.Path, table: str) -> None:
    """Replaces the text between the report's markers in BENCHMARKS.md."""
    text = path.read_text()
    if BEGIN not in text:
        raise SystemExit(f"{path}: markers {BEGIN} / {END} not found")
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    path.write_text(f"{head}{BEGIN}\n{table}\n{END}{tail}")

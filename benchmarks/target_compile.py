"""Compile every study recipe's real train and eval steps for H100, H200 and TPU slices.

    python -m benchmarks.target_compile [--only MODEL[/TARGET[/VARIANT]],...] [--write]
    make bench-compile

No accelerator is needed (deviceless compilation, see compile_targets.py). A cell is one model
on one target in one variant:

- `ref` (H100): the recipe's per-GPU batch in torchvision's reference run (its global batch
  over the reference GPUs: 8 for most recipes, 64 for ViT-B/16, 50 for Inception-v3). The H200
  compiles the same program (same SM 9.0, same bytes), so it has no `ref` cell of its own;
- `global`: the recipe's global batch on the target. The per-device batch is tried whole, then
  split into 2, 4, ... micro-batches (`optim.grad_accum_steps`) until the program fits: the
  micro-batch found is the largest power-of-two fraction of the per-device batch that fits;
- `bn_global`, `bn_per_device` (multi-host slice, BatchNorm models; `global` for the others):
  `global` under each `mesh.bn_mode`; `fsdp` (multi-host slice, models over 80M parameters):
  `global` with FSDP.

The recipes' ghost-BatchNorm groups (`mesh.bn_group_size`) stay as configured where they divide
the per-device batch; where not (Inception-v3's 32 in 200 images per chip), the nearest divisor
is used and reported.

Each cell reports per-device memory against the device's, FLOPs per image, kernels,
collectives, float32 convolutions/matmuls and grouped convolutions of the optimized train step,
and whether the eval step compiles and fits. Cells are compiled one per subprocess and cached
in `benchmarks/target_compile.json` as they finish: a rerun computes only missing cells
(`--force` recomputes the selected ones), so the whole report can be filled in over several runs.
`--write` puts the table into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import importlib
import json
import os
import pathlib
import subprocess
import sys
import time
import traceback

from benchmarks import compile_report, compile_targets
from benchmarks.compile_targets import TARGETS

ROOT = pathlib.Path(__file__).resolve().parent
RESULTS = ROOT / "target_compile.json"
STUDY_MODELS = (
    "alexnet", "vgg19", "inception_v3", "resnet50", "resnet152", "densenet161",
    "mobilenet_v3_large", "efficientnet_v2_l", "vit_b_16", "convnext_large",
)  # fmt: skip
# GPUs of torchvision's reference run per recipe (each config's docstring); default 8.
REFERENCE_GPUS = {"vit_b_16": 64, "inception_v3": 50}
MULTI_HOST = "v5p-16"
# Which multi-host cells exist (each cell records the parameters it compiled): both BN modes
# only for models with BatchNorm, FSDP only above 80M parameters (torchvision's counts).
BATCHNORM_MODELS = frozenset(
    {"inception_v3", "resnet50", "resnet152", "densenet161", "mobilenet_v3_large",
     "efficientnet_v2_l"}
)  # fmt: skip
LARGE_MODELS = frozenset({"vgg19", "efficientnet_v2_l", "vit_b_16", "convnext_large"})
NUM_TRAIN_EXAMPLES = 1_281_167  # ImageNet-1k's train split: sets steps per epoch only
NUM_CLASSES = 1000
CELL_TIMEOUT_S = 3600


@dataclasses.dataclass(frozen=True)
class Cell:
    model: str
    target: str
    variant: str

    @property
    def key(self) -> str:
        return f"{self.model}/{self.target}/{self.variant}"

    @classmethod
    def parse(cls, key: str) -> Cell:
        model, target, variant = key.split("/")
        return cls(model, target, variant)


def recipe_config(model: str):
    """The study recipe `configs/<model>.py` on ImageNot at 1,000 classes."""
    config = importlib.import_module(f"configs.{model}").get_config("dataset=imagenot")
    config.model.num_classes = NUM_CLASSES
    return config


def reference_batch(config, model: str) -> int:
    """Per-GPU batch of torchvision's reference run."""
    return config.input.global_batch_size // REFERENCE_GPUS.get(model, 8)


def all_cells(models: tuple[str, ...], targets: tuple[str, ...]) -> list[Cell]:
    """Every cell of the report for these models and targets (see the module docstring)."""
    cells = []
    for model in models:
        for target in targets:
            cells += [Cell(model, target, v) for v in _variants(model, target)]
    return cells


def _variants(model: str, target: str) -> list[str]:
    if target == "h200":  # the H100's programs (same SM 9.0): `ref` would repeat its bytes
        return ["global"]
    if TARGETS[target].platform == "cuda":
        return ["ref", "global"]
    if target != MULTI_HOST:
        return ["global"]
    variants = ["bn_global", "bn_per_device"] if model in BATCHNORM_MODELS else ["global"]
    return variants + (["fsdp"] if model in LARGE_MODELS else [])


# --- one cell (in a subprocess) --------------------------------------------------------------


def _variant_config(cell: Cell, per_device: int | None = None):
    config = recipe_config(cell.model)
    if cell.variant.startswith("bn_"):
        config.mesh.bn_mode = cell.variant.removeprefix("bn_")
    if cell.variant == "bn_global" and config.mesh.get("bn_group_size"):
        config.mesh.bn_group_size = None  # groups are a per-device notion
    if cell.variant == "fsdp":
        config.mesh.fsdp = True
    group = config.mesh.get("bn_group_size")
    if group and per_device and per_device % group:
        config.mesh.bn_group_size = nearest_group(per_device, group)
    return config


def nearest_group(per_device: int, group: int) -> int:
    """The divisor of the per-device batch nearest the recipe's BN group (ties: the smaller),
    e.g. 25 for Inception-v3's groups of 32 in 200 images per chip (1,600 over 8 chips)."""
    divisors = [d for d in range(1, per_device + 1) if per_device % d == 0]
    return min(divisors, key=lambda d: (abs(d - group), d))


def _configure(config, *, global_batch: int, accum: int):
    config.input.global_batch_size = global_batch
    config.input.eval_batch_size = global_batch // accum
    if accum > 1 or "grad_accum_steps" in config.optim:
        config.optim.grad_accum_steps = accum
    return config


def _compile_steps(config, target, *, global_batch: int, accum: int, with_eval: bool) -> dict:
    from imagenot_jax.evaluate import predict
    from imagenot_jax.train import steps, trainer

    mesh = compile_targets.mesh(target.name)
    setup = trainer.make_setup(config, mesh, NUM_TRAIN_EXAMPLES)
    state = compile_targets.abstract_state(setup)
    batch = compile_targets.abstract_batch(setup, global_batch)
    result = compile_targets.compile_program(steps.make_train_step(setup), (state, batch), target)
    result["hlo_stats"] = compile_report.hlo_summary(result.pop("hlo"))
    result["params"] = compile_report.count_params(setup.abstract_state.params)
    result["has_batchnorm"] = bool(compile_report.count_params(setup.abstract_state.batch_stats))
    if with_eval:
        eval_batch = compile_targets.abstract_batch(setup, global_batch // accum, eval_batch=True)
        # With EMA, evaluation reads the averaged weights: the same shapes and shardings.
        args = (state.params, state.batch_stats, state.rest, eval_batch)
        evaluated = compile_targets.compile_program(predict.make_eval_step(setup), args, target)
        evaluated.pop("hlo")
        result["eval"] = {k: evaluated[k] for k in ("bytes", "fits", "trace_s", "compile_s")}
    return result


def _attempt(cell: Cell, target, *, global_batch: int, accum: int, with_eval: bool) -> dict:
    per_device = global_batch // len(compile_targets.devices(cell.target))
    config = _configure(_variant_config(cell, per_device), global_batch=global_batch, accum=accum)
    try:
        result = _compile_steps(
            config, target, global_batch=global_batch, accum=accum, with_eval=with_eval
        )
    except Exception as e:  # an error is a result of the cell
        if not compile_targets.is_out_of_memory(e):
            return {"accum": accum, "error": f"{type(e).__name__}: {str(e)[:500]}",
                    "traceback": traceback.format_exc()[-2000:]}  # fmt: skip
        result = {"fits": False, "error": f"out of memory: {str(e)[:300]}"}
    return {"accum": accum, **result}


def run_cell(cell: Cell) -> dict:
    """Compiles one cell; for `global` cells, halves the micro-batch until the program fits."""
    target = TARGETS[cell.target]
    devices = len(compile_targets.devices(cell.target))
    config = _variant_config(cell)
    if cell.variant == "ref":
        global_batch = reference_batch(config, cell.model) * devices
    else:
        global_batch = config.input.global_batch_size
    per_device = global_batch // devices
    config = _variant_config(cell, per_device)
    attempts, accum = [], 1
    while True:
        attempt = _attempt(cell, target, global_batch=global_batch, accum=accum, with_eval=False)
        attempts.append(attempt)
        micro = per_device // accum
        group = config.mesh.get("bn_group_size") or 1  # micro-batches hold whole BN groups
        if attempt.get("fits") or cell.variant == "ref" or micro % (2 * group):
            break
        if "error" in attempt and not attempt["error"].startswith("out of memory"):
            break
        accum *= 2
    final = attempts[-1]
    if final.get("fits"):  # the eval step at the micro-batch that fits, once
        final = _attempt(cell, target, global_batch=global_batch, accum=accum, with_eval=True)
        attempts[-1] = final
    summary = [{k: a.get(k) for k in ("accum", "fits", "error")} | _total(a) for a in attempts]
    return {
        "cell": cell.key,
        "target": dataclasses.asdict(target),
        "devices": devices,
        "global_batch": global_batch,
        "per_device_batch": per_device,
        "micro_batch": per_device // accum,
        "bn_group_size": config.mesh.get("bn_group_size"),
        "attempts": summary,
        **final,
    }


def _total(attempt: dict) -> dict:
    return {"total_bytes": attempt.get("bytes", {}).get("total")}


# --- the report --------------------------------------------------------------------------------


def load_results(path: pathlib.Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {"cells": {}}


def save_cell(path: pathlib.Path, result: dict) -> None:
    """Adds one finished cell to the JSON cache.

    The file is re-read under a lock, so drivers running at once (say one per target, to use
    more cores) keep each other's cells. The write is atomic: a run killed mid-write keeps the
    previous file.
    """
    with open(path.with_suffix(".json.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        results = load_results(path)
        results["cells"][result["cell"]] = result
        results["versions"] = compile_report.versions()
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, path)


def _run_in_subprocess(cell: Cell, timeout_s: int) -> dict:
    """One cell in a fresh interpreter: memory is returned, a crash or hang is one cell's error."""
    command = [sys.executable, "-m", "benchmarks.target_compile", "--cell", cell.key]
    start = time.perf_counter()
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout_s, cwd=ROOT.parent
        )
    except subprocess.TimeoutExpired:
        return {"cell": cell.key, "error": f"timed out after {timeout_s} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        tail = done.stderr.strip().splitlines()[-5:]
        return {"cell": cell.key, "error": f"exit {done.returncode}: {' | '.join(tail)[:800]}"}
    result = json.loads(lines[-1])
    result["wall_s"] = round(time.perf_counter() - start, 1)
    return result


def _selected(cells: list[Cell], only: list[str]) -> list[Cell]:
    if not only:
        return cells
    return [c for c in cells if any(c.key == o or c.key.startswith(o + "/") for o in only)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="MODEL[/TARGET[/VARIANT]],... (default all)")
    parser.add_argument("--models", default=",".join(STUDY_MODELS))
    parser.add_argument("--targets", default=f"h100,h200,v5e-8,{MULTI_HOST}")
    parser.add_argument("--results", default=str(RESULTS), help="JSON cache of finished cells")
    parser.add_argument("--force", action="store_true", help="recompute selected cells")
    parser.add_argument("--timeout", type=int, default=CELL_TIMEOUT_S, help="seconds per cell")
    parser.add_argument("--write", action="store_true", help="write the table to BENCHMARKS.md")
    parser.add_argument("--cell", help=argparse.SUPPRESS)  # internal: compile one cell, print JSON
    args = parser.parse_args(argv)
    compile_targets.configure_environment()
    if args.cell:
        print(json.dumps(run_cell(Cell.parse(args.cell))), flush=True)
        return
    path = pathlib.Path(args.results)
    models, targets = tuple(args.models.split(",")), tuple(args.targets.split(","))
    cells = _selected(all_cells(models, targets), [o for o in args.only.split(",") if o])
    for number, cell in enumerate(cells, 1):
        # Re-read each time: another driver may have finished this cell meanwhile.
        if cell.key in load_results(path)["cells"] and not args.force:
            continue
        print(f"[{number}/{len(cells)}] {cell.key} ...", flush=True)
        result = _run_in_subprocess(cell, args.timeout)
        save_cell(path, result)
        print("   ", compile_report.one_line(result), flush=True)
    expected = [cell.key for cell in all_cells(models, targets)]
    table = compile_report.markdown(load_results(path), models, targets, expected)
    print(table)
    if args.write:
        compile_report.write_section(ROOT / "BENCHMARKS.md", table)


if __name__ == "__main__":
    main()

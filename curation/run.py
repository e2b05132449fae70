"""All curation stages in order: `python -m curation.run --config curation/configs/imagenot.py
--workdir W [--config.laion.paths='laion/*.parquet'] [--ray_address auto]`.

Every stage resumes where it stopped (finished shards are skipped), so rerunning this after a
crash or preemption continues the run. `--config.stages=select,download` runs a subset.
"""

from __future__ import annotations

import importlib
import pathlib
import time

import ml_collections
from absl import logging

from curation import cli, files
from curation.configs.base import STAGES
from curation.errors import CurationError


def stages_to_run(config: ml_collections.ConfigDict) -> list[str]:
    """config.stages in pipeline order; clip_score only when enabled."""
    wanted = [s.strip() for s in config.stages.split(",") if s.strip()]
    unknown = sorted(set(wanted) - set(STAGES))
    if unknown:
        raise CurationError(
            f"config.stages: unknown stage(s) {', '.join(unknown)}; expected some of "
            f"{', '.join(STAGES)}"
        )
    if not config.clip_score.enabled:
        wanted = [s for s in wanted if s != "clip_score"]
    return [s for s in STAGES if s in wanted]


def run(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict:
    """Runs the selected stages; returns {stage: summary} (also workdir/run_summary.json)."""
    workdir.mkdir(parents=True, exist_ok=True)
    files.write_text_atomic(workdir / "config.json", config.to_json_best_effort(indent=2) + "\n")
    summaries = {}
    for name in stages_to_run(config):
        start = time.perf_counter()
        logging.info("curation: stage %s", name)
        stage = importlib.import_module(f"curation.{name}")
        summaries[name] = stage.run(config, workdir)
        logging.info("curation: stage %s done in %.1f s", name, time.perf_counter() - start)
    files.write_json(workdir / "run_summary.json", summaries)
    return summaries


if __name__ == "__main__":
    cli.run_stage(run)

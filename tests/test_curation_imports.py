"""Curation configs and the CPU-only stages load no model library.

Every config imports every stage (for its `defaults()`), so a module-level `import torch` in any
stage would make `python -m curation.match` pay seconds of import time and need the GPU stack
installed. The check runs in a fresh interpreter: this test process may have imported torch
already (conftest, other tests).
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pyarrow as pa

from curation import files, match, testing

REPO = pathlib.Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "open_clip")

# Runs the match stage through the CLI's own flag and config loading (`cli.run_stage`), then
# prints which of HEAVY are loaded. Tasks run in this process (engine.workers=1): a forked
# worker's imports would not show in the parent's sys.modules.
_SCRIPT = f"""
import json, sys
from curation import cli, match

def stage(config, workdir):
    summary = match.run(config, workdir)
    loaded = sorted(m for m in {HEAVY!r} if m in sys.modules)
    print("RESULT " + json.dumps({{"summary": summary, "loaded": loaded}}))

cli.run_stage(stage)
"""


def test_imagenot_config_and_match_stage_load_no_model_library(tmp_path):
    fixture = testing.write_laion_fixture(tmp_path)
    workdir = fixture.candidates.parents[1]
    command = [
        sys.executable,
        "-c",
        _SCRIPT,
        f"--config={REPO / 'curation' / 'configs' / 'imagenot.py'}",
        f"--workdir={workdir}",
        f"--config.laion.paths={fixture.paths}",
        "--config.engine.workers=1",
    ]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, done.stdout[-3000:]
    result = json.loads(lines[0].removeprefix("RESULT "))
    assert result["loaded"] == [], f"imported with the config and match stage: {result['loaded']}"
    # The stage really ran on the fixture, with the ImageNot config's defaults.
    assert {k: result["summary"][k] for k in fixture.counts} == fixture.counts
    output: pa.Table = files.read_stage(workdir / match.OUT_DIR).replace_schema_metadata()
    assert output.equals(fixture.expected())

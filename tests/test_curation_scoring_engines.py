"""The scoring stages on the engine's model workers: local process pools and a Ray actor pool
give byte-identical outputs to one in-process worker; a stage killed in the middle resumes into
the same files. Tiny random models on CPU (curation.tiny)."""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation import engine, scoring, text_score
from tests.test_curation_scoring import GLOSS, _config, _match_table

REPO = pathlib.Path(__file__).resolve().parents[1]
CAPTIONS = [
    "A grey cat sleeping on a sofa",
    "Construction crane at sunset over the harbour",
    "dog: a member of the genus Canis",
    None,
    "Puppy!! dog toys 50% off, free shipping " * 3,
    "true cat",
]
SHARDS = 6


@pytest.fixture
def workdir(tmp_path: pathlib.Path) -> pathlib.Path:
    """Candidates and SHARDS match shards of a few rows each."""
    (tmp_path / "classes").mkdir()
    candidates = {
        "wnid": list(GLOSS),
        "name": [v[0] for v in GLOSS.values()],
        "lemmas": [v[1] for v in GLOSS.values()],
        "gloss": [v[2] for v in GLOSS.values()],
    }
    pq.write_table(pa.table(candidates), tmp_path / "classes" / "candidates.parquet")
    (tmp_path / "match").mkdir()
    wnids = list(GLOSS)
    for shard in range(SHARDS):
        rows = [
            (f"laion_{shard:04d}", wnids[(shard + i) % 3], GLOSS[wnids[(shard + i) % 3]][1][0], c)
            for i, c in enumerate(CAPTIONS[shard % 3 :])
        ]
        pq.write_table(_match_table(rows), tmp_path / "match" / f"laion_{shard:04d}.parquet")
    return tmp_path


def _outputs(directory: pathlib.Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.glob("*.parquet"))}


def _copy(workdir: pathlib.Path, name: str) -> pathlib.Path:
    other = workdir.parent / name
    shutil.copytree(workdir / "classes", other / "classes")
    shutil.copytree(workdir / "match", other / "match")
    return other


def test_local_pool_of_two_workers_gives_the_same_bytes_as_one(workdir):
    one = text_score.run(_config(workers=1), workdir)
    two_dir = _copy(workdir, "two")
    two = text_score.run(_config(workers=2), two_dir)
    assert _outputs(two_dir / "text_score") == _outputs(workdir / "text_score")
    assert len(_outputs(workdir / "text_score")) == SHARDS
    assert one["rows_scored_now"] == two["rows_scored_now"] > 0
    assert one["null_captions_now"] == two["null_captions_now"] == SHARDS  # one None each


_KILLABLE = textwrap.dedent(
    """
    import pathlib, sys
    sys.path.insert(0, {repo!r})
    from curation import text_score
    from tests.test_curation_scoring import _config
    text_score.run(_config(workers=1), pathlib.Path({workdir!r}))
    """
)


def test_killed_in_the_middle_resumes_into_the_same_files(workdir):
    reference = _copy(workdir, "reference")
    text_score.run(_config(workers=1), reference)
    out = workdir / "text_score"
    env = {**os.environ, scoring.DELAY_ENV: "0.5"}
    code = _KILLABLE.format(repo=str(REPO), workdir=str(workdir))
    process = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=REPO)
    deadline = time.monotonic() + 240
    while len(list(out.glob("*.parquet"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    done = len(list(out.glob("*.parquet")))
    assert 2 <= done < SHARDS, "the stage finished before it could be killed"
    summary = text_score.run(_config(workers=1), workdir)
    assert summary["shards_processed_now"] == SHARDS - done
    assert _outputs(out) == _outputs(reference / "text_score")
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


# Ray last (ray_local, tests/conftest.py): its threads stay up until the module ends.


def test_ray_actor_pool_gives_the_same_bytes_as_the_local_engine(workdir, ray_local):
    text_score.run(_config(workers=1), workdir)
    ray_dir = _copy(workdir, "ray")
    config = _config(workers=2)
    config.engine = engine.defaults()
    config.engine.name = "ray"
    summary = text_score.run(config, ray_dir)
    assert summary["shards_processed_now"] == SHARDS
    assert _outputs(ray_dir / "text_score") == _outputs(workdir / "text_score")

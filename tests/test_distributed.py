"""Two JAX processes on localhost (CPU, gloo collectives) train one global model.

Each process has 2 CPU devices and feeds its own slice of every global batch.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO

WORKER = REPO / "tests" / "distributed_worker.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _launch(mode: str, num_processes: int, workdir, dataset_dir) -> list[dict]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    logs = pathlib.Path(workdir).parent / f"{pathlib.Path(workdir).name}-logs"
    logs.mkdir(parents=True, exist_ok=True)
    processes = []
    for i in range(num_processes):
        # Files, not pipes: a process blocked on a full pipe would stall the others' barriers.
        out, err = (logs / f"{i}.out").open("w"), (logs / f"{i}.err").open("w")
        command = [sys.executable, str(WORKER), mode, str(i), str(num_processes), str(port),
                   str(workdir), str(dataset_dir)]  # fmt: skip
        processes.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=err))
    results = []
    for i, process in enumerate(processes):
        process.wait(timeout=600)
        stderr = (logs / f"{i}.err").read_text()
        assert process.returncode == 0, stderr[-3000:]
        stdout = (logs / f"{i}.out").read_text()
        line = next(line for line in stdout.splitlines() if line.startswith("RESULT "))
        results.append(json.loads(line[len("RESULT ") :]))
    return results


def _flatten(replica: dict) -> np.ndarray:
    return np.concatenate([np.ravel(replica[name]) for name in sorted(replica)])


def test_two_processes_agree_and_match_one_process(tmp_path, fake_fashion_mnist):
    two = _launch("steps", 2, tmp_path / "two", fake_fashion_mnist)
    assert [r["devices"] for r in two] == [4, 4]
    replicas = [_flatten(rep) for r in two for rep in r["replicas"].values()]
    assert len(replicas) == 4  # 2 devices in each of 2 processes, all holding the params
    for replica in replicas[1:]:
        np.testing.assert_array_equal(replica, replicas[0])
    (one,) = _launch("steps", 1, tmp_path / "one", fake_fashion_mnist)  # 2 devices, whole batch
    single = _flatten(next(iter(one["replicas"].values())))
    # Same global batches, summed in another order: equal up to float rounding.
    np.testing.assert_allclose(replicas[0], single, rtol=1e-4, atol=1e-5)
    assert not np.allclose(single, 0)


def test_full_trainer_runs_across_two_processes(tmp_path, fake_fashion_mnist):
    results = _launch("full", 2, tmp_path, fake_fashion_mnist)
    assert [r["process"] for r in results] == [0, 1]
    assert all(r["val_n"] == 21 for r in results)
    assert results[0]["val_top1"] == pytest.approx(results[1]["val_top1"])
    assert (tmp_path / "checkpoints" / "4").is_dir()
    data_states = sorted(p.name for p in (tmp_path / "checkpoints" / "4" / "data").iterdir())
    assert {"process_0-of-2.json", "process_1-of-2.json"} <= set(data_states)

"""SIGTERM to one of two jax.distributed processes (CPU, localhost): both save the same step
and exit 0, and resuming gives the parameters of an uninterrupted run, bit for bit."""

from __future__ import annotations

import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

from tests.conftest import REPO
from tests.distributed_worker import LONG_STEPS
from tests.helpers import checkpoint_steps
from tests.test_distributed import WORKER, _free_port

# Seconds for each two-process launch: a hang (unsynchronised collective save) fails the test;
# generous, because two JAX processes start slowly on a loaded 2-core machine.
TIMEOUT = 600


def _start(workdir: pathlib.Path, dataset_dir, logs: pathlib.Path) -> list[subprocess.Popen]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    logs.mkdir(parents=True, exist_ok=True)
    processes = []
    for i in range(2):
        # Files, not pipes: a process blocked on a full pipe would stall the other's collectives.
        out, err = (logs / f"{i}.out").open("w"), (logs / f"{i}.err").open("w")
        command = [sys.executable, str(WORKER), "long", str(i), "2", str(port), str(workdir),
                   str(dataset_dir)]  # fmt: skip
        processes.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=err))
    return processes


def _finish(processes: list[subprocess.Popen], logs: pathlib.Path) -> list[str]:
    """Each process's stderr, once all have exited 0."""
    deadline = time.monotonic() + TIMEOUT
    try:
        for process in processes:
            process.wait(timeout=max(1, deadline - time.monotonic()))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    stderrs = [(logs / f"{i}.err").read_text() for i in range(len(processes))]
    for process, stderr in zip(processes, stderrs, strict=True):
        assert process.returncode == 0, stderr[-3000:]
    return stderrs


def _saved_state(workdir: pathlib.Path, step: int):
    """The train state saved at `step` by the 4 devices of both processes, on one device here."""
    path = workdir / "checkpoints" / str(step) / "state"
    checkpointer = ocp.StandardCheckpointer()
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one),
        checkpointer.metadata(path).item_metadata,
    )
    return checkpointer.restore(path, target)


def _logged_steps(workdir: pathlib.Path) -> int:
    metrics = workdir / "metrics.jsonl"
    return metrics.read_text().count("\n") if metrics.exists() else 0


def test_sigterm_to_one_process_saves_one_step_on_both_and_resumes_bitwise(
    tmp_path, fake_fashion_mnist, fast_compile
):
    straight, straight_logs = tmp_path / "straight", tmp_path / "straight-logs"
    _finish(_start(straight, fake_fashion_mnist, straight_logs), straight_logs)

    workdir, logs = tmp_path / "preempted", tmp_path / "preempted-logs"
    processes = _start(workdir, fake_fashion_mnist, logs)
    deadline = time.monotonic() + TIMEOUT
    # Process 0 writes metrics.jsonl; every step is a collective, so process 1 is there too.
    while _logged_steps(workdir) < 2:
        assert time.monotonic() < deadline and all(p.poll() is None for p in processes)
        time.sleep(0.05)
    processes[1].send_signal(signal.SIGTERM)  # process 0 is never told
    stderrs = _finish(processes, logs)
    saved = [re.findall(r"preempted: checkpoint saved at step (\d+)", s) for s in stderrs]
    assert saved[0] and saved[0] == saved[1], saved
    step = int(saved[0][0])
    assert 0 < step < LONG_STEPS, "the run finished before it could be stopped"
    assert checkpoint_steps(workdir)[-1] == step

    resume_logs = tmp_path / "resumed-logs"
    stderrs = _finish(_start(workdir, fake_fashion_mnist, resume_logs), resume_logs)
    assert all(f"resuming from step {step}" in s for s in stderrs)
    a, b = _saved_state(straight, LONG_STEPS), _saved_state(workdir, LONG_STEPS)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)

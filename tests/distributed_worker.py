"""One process of the two-process jax.distributed tests (run by tests/test_distributed.py).

    python tests/distributed_worker.py MODE PROCESS_ID NUM_PROCESSES PORT WORKDIR DATA_DIR

MODE `steps`: a few train steps through the public pieces (per-process pipeline slice ->
global batch -> jitted step), then print a JSON line with this process's replicas of the
parameters (checksums); MODE `full`: `trainer.train_and_evaluate` end to end; MODE `long`: the
same for LONG_STEPS steps, checkpointing only at epoch ends and at the end (long enough to be
stopped by SIGTERM midway: tests/test_preemption_multihost.py).
"""

from __future__ import annotations

import json
import os
import sys

# Only as a program: importing this module (as tests do, for its constants) must not change
# the importing process's devices, nor those of the processes it starts.
if __name__ == "__main__":
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"

import jax
import numpy as np
from absl import logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import demo
from imagenot_jax.data import input_pipeline
from imagenot_jax.train import sharding, steps, trainer

STEPS = 4
LONG_STEPS = 90


def make_config(process_id: int, num_processes: int, port: int, data_dir: str):
    config = demo.get_config()
    config.data.data_dir = data_dir
    config.input.global_batch_size = 16
    config.input.eval_batch_size = 8
    config.input.num_workers = 0
    config.model.kwargs.widths = (4, 8, 8)
    config.model.num_classes = 10
    config.schedule.num_steps = STEPS
    config.checkpoint.every_steps = 2
    if num_processes > 1:
        config.mesh.distributed = True
        config.mesh.coordinator_address = f"localhost:{port}"
        config.mesh.num_processes = num_processes
        config.mesh.process_id = process_id
    return config


def run_steps(config) -> dict:
    sharding.initialize_distributed(config.mesh)
    mesh = sharding.make_mesh()
    setup = trainer.make_setup(config, mesh, num_train_examples=96)
    step_fn = steps.make_train_step(setup)
    state = setup.init()
    iterator = iter(input_pipeline.make_train_dataset(config))
    for _ in range(STEPS):
        local = next(iterator)
        batch = sharding.global_batch({k: local[k] for k in ("image", "label")}, mesh)
        state, _ = step_fn(state, batch)
    replicas = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(state.params):
        for shard in leaf.addressable_shards:
            replicas.setdefault(str(shard.device.id), {})[jax.tree_util.keystr(path)] = (
                np.asarray(shard.data).astype(np.float64).tolist()
            )
    return {"process": jax.process_index(), "devices": jax.device_count(), "replicas": replicas}


def main() -> None:
    mode, process_id, num_processes, port, workdir, data_dir = sys.argv[1:7]
    config = make_config(int(process_id), int(num_processes), int(port), data_dir)
    if mode == "long":
        config.schedule.num_steps = LONG_STEPS
        config.checkpoint.every_steps = LONG_STEPS
        config.eval.every_steps = LONG_STEPS  # evaluates once, at the end
        config.logging.every_steps = 5
        logging.set_verbosity(logging.INFO)  # the test reads "resuming from step N"
    if mode == "steps":
        print("RESULT " + json.dumps(run_steps(config)), flush=True)
    else:
        result = trainer.train_and_evaluate(config, workdir)
        print("RESULT " + json.dumps({"process": jax.process_index(), **result}), flush=True)


if __name__ == "__main__":
    main()

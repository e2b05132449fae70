"""Mesh, shardings and multi-host set-up (explicit shardings, no pmap).

Default: every device of every process on one `data` axis. Batches are split over `data`; the
train state is replicated, or with FSDP its large arrays are split over `data` along their
largest divisible dimension (XLA inserts the all-gathers and reduce-scatters). Each process
feeds only its own slice of the global batch.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from imagenot_jax.errors import UserError

DATA_AXIS = "data"


def default_mesh_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.distributed = False  # call jax.distributed.initialize() (TPU pods, multi-node GPU)
    config.coordinator_address = ml_collections.config_dict.placeholder(str)  # None: auto-detect
    config.num_processes = ml_collections.config_dict.placeholder(int)
    config.process_id = ml_collections.config_dict.placeholder(int)
    config.bn_mode = "global"  # global: statistics over the global batch; per_device: local
    # per_device only: BatchNorm statistics over groups of this many examples within each
    # device's (micro-)batch (ghost BatchNorm: a reference run's per-GPU batch on any mesh);
    # None or 0 (on the command line): the whole per-device batch. Beside bn_mode: both say how
    # the batch is laid out over devices.
    config.bn_group_size = ml_collections.config_dict.placeholder(int)
    config.fsdp = False  # shard large state arrays over `data` instead of replicating them
    config.fsdp_min_size = 2**18  # elements; smaller arrays stay replicated
    return config


def initialize_distributed(mesh_cfg: ml_collections.ConfigDict) -> None:
    """jax.distributed.initialize() from config; unset fields are auto-detected (TPU, SLURM)."""
    # Once per process: the suite trains several runs in one process (and initializes first,
    # so all hosts of a slice can agree on the run); a second initialize() would raise.
    if not mesh_cfg.distributed or jax.distributed.is_initialized():
        return
    # Cross-process collectives on CPU hosts need gloo; GPU and TPU backends ignore this.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=mesh_cfg.coordinator_address,
        num_processes=mesh_cfg.num_processes,
        process_id=mesh_cfg.process_id,
    )
    logging.info(
        "process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )


def make_mesh() -> Mesh:
    """All devices of all processes on the `data` axis.

    Auto axis type: XLA's partitioner propagates shardings through the model, so model code
    needs no per-op sharding annotations (FSDP included).
    """
    return jax.make_mesh(
        (jax.device_count(),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,)
    )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def _fsdp_spec(shape: tuple[int, ...], axis_size: int, min_size: int) -> P:
    """Split the largest dimension divisible by the axis size; small or odd arrays replicate."""
    if int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[dim] % axis_size == 0:
            spec = [None] * len(shape)
            spec[dim] = DATA_AXIS
            return P(*spec)
    return P()


def state_shardings(abstract_state: Any, mesh: Mesh, mesh_cfg: ml_collections.ConfigDict) -> Any:
    """A NamedSharding for every leaf of the (abstract) train state."""
    axis_size = mesh.shape[DATA_AXIS]

    def leaf_sharding(leaf: Any) -> NamedSharding:
        shape = getattr(leaf, "shape", ())
        if not mesh_cfg.fsdp or not shape:
            return replicated(mesh)
        return NamedSharding(mesh, _fsdp_spec(tuple(shape), axis_size, mesh_cfg.fsdp_min_size))

    return jax.tree.map(leaf_sharding, abstract_state)


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles each process's slice into global arrays sharded over `data` (numeric leaves)."""
    sharding = batch_sharding(mesh)
    return {
        name: jax.make_array_from_process_local_data(sharding, value)
        for name, value in local_batch.items()
        if value.dtype.kind in "biuf"
    }


def check_batch_divisible(global_batch_size: int, mesh: Mesh, what: str) -> None:
    devices = mesh.shape[DATA_AXIS]
    if global_batch_size % devices:
        raise UserError(
            f"{what}={global_batch_size} is not divisible by the {devices} devices of the mesh"
        )

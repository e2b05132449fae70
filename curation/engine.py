"""Where the parallel stages run: `local` (a multiprocessing pool on this machine, the default)
or `ray` (Ray Data, on a laptop or a cluster). Both call the same task function on the same
tasks and return its results in task order, so a stage's output cannot depend on the engine.

Task functions should write their outputs themselves (atomically) and return small summaries:
results travel between processes (pickled) and are kept in memory until the end.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import ml_collections

from curation import files
from curation.errors import CurationError

# Environment of every Ray worker, whichever stage starts Ray: img2dataset (download) imports
# albumentations, whose import asks PyPI for a newer version unless this is set.
WORKER_ENV = {"NO_ALBUMENTATIONS_UPDATE": "1"}

T = TypeVar("T")
R = TypeVar("R")


def defaults() -> ml_collections.ConfigDict:
    """config.engine: how parallel stages (match) spread their tasks."""
    c = ml_collections.ConfigDict()
    c.name = "local"  # 'local': a process pool on this machine; 'ray': Ray Data
    c.workers = 0  # parallel tasks (processes); 0 = one per CPU core (Ray: no cap)
    # Ray cluster address ('auto', 'ray://host:10001'); '' = the Ray already initialized in this
    # process, else a new local one. Cluster nodes need this package installed and the workdir
    # on a file system they all see. `--ray_address` sets it and name='ray'.
    c.ray_address = ""
    return c


def run_tasks(
    tasks: Sequence[T], fn: Callable[[T], R], cfg: ml_collections.ConfigDict, desc: str
) -> list[R]:
    """[fn(task) for task in tasks] on the engine `cfg.name`, with a progress bar. `fn` must be
    a module-level function (it is pickled by reference) and tasks/results picklable."""
    if cfg.name not in ENGINES:
        raise CurationError(f"config.engine.name={cfg.name!r}: expected one of {sorted(ENGINES)}")
    if not tasks:
        return []
    return ENGINES[cfg.name](list(tasks), fn, cfg, desc)


def cpu_count() -> int:
    """Cores this process may use (the affinity mask, e.g. under taskset or a container)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _run_local(tasks: list[T], fn: Callable[[T], R], cfg: ml_collections.ConfigDict, desc: str):
    """One task per process at a time, in a pool of forked processes: what the parent built
    before (e.g. an automaton) is shared copy-on-write, not rebuilt or pickled. One worker runs
    in this process."""
    workers = min(int(cfg.workers) or cpu_count(), len(tasks))
    bar = {"desc": desc, "total": len(tasks), "unit": "task"}
    if workers <= 1:
        return [fn(task) for task in files.progress(tasks, **bar)]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        return list(files.progress(pool.imap(fn, tasks, chunksize=1), **bar))


def init_ray(address: str = "") -> None:
    """Connects to the Ray at `address`, or starts a local one ('' ), unless this process already
    did; workers get WORKER_ENV. Importing Ray costs seconds, so only the Ray paths call this."""
    import ray

    if ray.is_initialized():
        return
    runtime_env = {"env_vars": WORKER_ENV}
    if address:
        ray.init(address=address, runtime_env=runtime_env)
    else:
        ray.init(include_dashboard=False, runtime_env=runtime_env)  # this machine's cores


def _run_ray(tasks: list[T], fn: Callable[[T], R], cfg: ml_collections.ConfigDict, desc: str):
    """Ray Data over the tasks, one block (hence one Ray task) per task. Tasks and results
    travel pickled, so Ray never infers a schema from them."""
    import ray

    init_ray(cfg.ray_address)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # ours counts tasks; Ray's would count rows
    items = [{"index": i, "task": pickle.dumps(t)} for i, t in enumerate(tasks)]
    dataset = ray.data.from_items(items, override_num_blocks=len(items)).map(
        _ray_apply, fn_kwargs={"fn": fn}, num_cpus=1, concurrency=int(cfg.workers) or None
    )
    results: list[Any] = [None] * len(tasks)
    rows = dataset.iter_rows()
    for row in files.progress(rows, desc=desc, total=len(tasks), unit="task"):
        results[row["index"]] = pickle.loads(row["result"])
    return results


def _ray_apply(row: dict[str, Any], fn: Callable[[Any], Any]) -> dict[str, Any]:
    return {"index": row["index"], "result": pickle.dumps(fn(pickle.loads(row["task"])))}


ENGINES: Mapping[str, Callable[..., list]] = {"local": _run_local, "ray": _run_ray}

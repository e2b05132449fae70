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


# --- model workers: stages whose tasks need a model loaded once per worker -------------------

# make_worker(worker index, *args) -> task function; module level (pickled by reference).
WorkerFactory = Callable[..., Callable[[Any], Any]]


def run_on_workers(
    tasks: Sequence[T],
    make_worker: WorkerFactory,
    args: tuple,
    cfg: ml_collections.ConfigDict,
    workers: int,
    num_gpus: float,
    desc: str,
) -> list[Any]:
    """[worker(task) for task in tasks], each worker built once by `make_worker(index, *args)`
    (a model loaded once, then used for many tasks), results in task order.

    `local`: `workers` spawned processes (spawn: the parent may hold torch or CUDA state, which
    forked children must not inherit), or this process alone for one worker. `ray`: Ray Data
    `map_batches` over a pool of `workers` actors, each reserving `num_gpus` GPUs (Ray then
    sets CUDA_VISIBLE_DEVICES per actor)."""
    if cfg.name not in ENGINES:
        raise CurationError(f"config.engine.name={cfg.name!r}: expected one of {sorted(ENGINES)}")
    tasks = list(tasks)
    if not tasks:
        return []
    workers = max(1, min(int(workers), len(tasks)))
    bar = {"desc": desc, "total": len(tasks), "unit": "task"}
    if cfg.name == "ray":
        return _workers_on_ray(tasks, make_worker, args, cfg, workers, num_gpus, bar)
    if workers == 1:
        worker = make_worker(0, *args)
        return [worker(task) for task in files.progress(tasks, **bar)]
    context = multiprocessing.get_context("spawn")
    indices = context.Queue()
    for index in range(workers):
        indices.put(index)
    with context.Pool(workers, _start_worker, (make_worker, args, indices)) as pool:
        return list(files.progress(pool.imap(_call_worker, tasks, chunksize=1), **bar))


_WORKER: Callable[[Any], Any] | None = None  # this pool process's worker


def _start_worker(make_worker: WorkerFactory, args: tuple, indices) -> None:
    global _WORKER
    _WORKER = make_worker(indices.get(), *args)


def _call_worker(task: Any) -> Any:
    return _WORKER(task)


def cluster_gpus() -> float:
    """GPUs of the Ray cluster this process is connected to."""
    import ray

    return float(ray.cluster_resources().get("GPU", 0))


class _RayWorker:
    """One actor of the pool: builds its worker once, then applies it to each task it gets."""

    def __init__(self, make_worker: WorkerFactory, args: tuple):
        # Index 0: an actor sees only the GPUs Ray gave it (CUDA_VISIBLE_DEVICES).
        self._worker = make_worker(0, *args)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        results = [pickle.dumps(self._worker(pickle.loads(t))) for t in batch["task"]]
        return {"index": batch["index"], "result": results}


def _workers_on_ray(tasks, make_worker, args, cfg, workers, num_gpus, bar) -> list[Any]:
    import ray

    init_ray(cfg.ray_address)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    items = [{"index": i, "task": pickle.dumps(t)} for i, t in enumerate(tasks)]
    dataset = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        _RayWorker,
        fn_constructor_args=(make_worker, args),
        batch_size=1,
        concurrency=workers,
        num_gpus=num_gpus,
        num_cpus=1,
    )
    results: list[Any] = [None] * len(tasks)
    for row in files.progress(dataset.iter_rows(), **bar):
        results[row["index"]] = pickle.loads(row["result"])
    return results

"""Shared fixtures: small real TFDS datasets built once per test session into a temp data dir."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import pathlib
import sys

with contextlib.suppress(ImportError):  # Before TensorFlow: TF-then-torch aborts (LLVM).
    import torchvision  # noqa: F401  (installed with the curation extra only)

# Multi-device logic is tested on 8 simulated CPU devices; this must precede JAX's start-up.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
# Tests run on the CPU. The `compile` extra's CUDA plugin and libtpu (deviceless compiles, see
# benchmarks/compile_targets.py) would otherwise be probed at start-up: no CUDA libraries, no
# TPU metadata server, and libtpu's one-process lock would stop the second xdist worker.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """After each module, drop JAX's compiled programs and traced functions: every test jits its
    own functions, and an xdist worker keeping them all grew to ~9 GiB over the suite."""
    yield
    jax = sys.modules.get("jax")  # not imported by the curation-only modules: nothing to drop
    if jax is not None:
        jax.clear_caches()
        gc.collect()
        with contextlib.suppress(OSError, AttributeError):  # glibc: give freed arenas back
            ctypes.CDLL("libc.so.6").malloc_trim(0)


def pytest_runtest_logfinish(nodeid, location):
    """With IMAGENOT_TEST_RSS=FILE, append each test's id and the worker's RSS after it."""
    if path := os.environ.get("IMAGENOT_TEST_RSS"):
        rss = int(pathlib.Path("/proc/self/statm").read_text().split()[1]) * os.sysconf(
            "SC_PAGE_SIZE"
        )
        with open(path, "a") as f:
            f.write(f"{os.getpid()}\t{rss / 2**30:.2f}\t{nodeid}\n")


@pytest.fixture
def fast_compile(monkeypatch):
    """XLA's expensive optimisations off, here and in CLI subprocesses: end-to-end smoke runs
    check plumbing, not speed, and compiling dominates them (~20% less time measured on the
    recipes' smoke runs). Not for tests of compiled programs (target_compile, profiles)."""
    import jax

    monkeypatch.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """../shared/data (reference data); tests that need it skip in clones without it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"reference data not found at {SHARED_DATA} (a clone without ../shared)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def imagenot_manifest():
    """tfds_imagenot/imagenot/manifest.py (the builder's manifest validator) loaded by path:
    the package's __init__ would import TensorFlow Datasets, and it needs only pyarrow/numpy."""
    import importlib.util
    import sys

    path = REPO / "tfds_imagenot" / "imagenot" / "manifest.py"
    spec = importlib.util.spec_from_file_location("imagenot_manifest_for_tests", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being created
    spec.loader.exec_module(module)
    return module


# Sizes of the fake Fashion-MNIST below; 21: no eval batch size used in the tests divides it.
FAKE_FASHION_TRAIN, FAKE_FASHION_TEST = 96, 21


@pytest.fixture(scope="session")
def fake_fashion_mnist(tmp_path_factory) -> pathlib.Path:
    """A TFDS data dir holding fashion_mnist_local/all built from fake IDX files (random
    28x28 images): the demo's dataset, at test size."""
    import tensorflow_datasets as tfds

    from tfds_imagenot.fashion_mnist_local import Builder
    from tfds_imagenot.fashion_mnist_local.testing import write_fake_fashion_mnist

    root = tmp_path_factory.mktemp("fake_fashion_mnist")
    write_fake_fashion_mnist(
        root / "manual", {"train": FAKE_FASHION_TRAIN, "test": FAKE_FASHION_TEST}
    )
    builder = Builder(config="all", data_dir=str(root))
    builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(manual_dir=str(root / "manual")),
    )
    return root


@pytest.fixture(scope="session")
def pipeline_data_dir(tmp_path_factory) -> pathlib.Path:
    """fashion_mnist_local/all (60 train, 25 test) and imagenot/full (photos, 4 train, 2 test)."""
    from tests.helpers import build_pipeline_datasets

    return build_pipeline_datasets(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray of 2 CPUs for one module; its threads stay up until the module ends, so the
    modules run their Ray tests last (later tests fork)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()

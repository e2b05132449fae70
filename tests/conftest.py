"""Shared fixtures: small real TFDS datasets built once per test session into a temp data dir."""

from __future__ import annotations

import contextlib
import os
import pathlib

with contextlib.suppress(ImportError):  # Before TensorFlow: TF-then-torch aborts (LLVM).
    import torchvision  # noqa: F401  (installed with the curation extra only)

# Multi-device logic is tested on 8 simulated CPU devices; this must precede JAX's start-up.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """../shared/data (reference data); tests that need it skip in clones without it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"reference data not found at {SHARED_DATA} (a clone without ../shared)")
    return SHARED_DATA

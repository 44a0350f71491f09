"""Shared fixtures: one local Ray per test run, an isolated cache, small synthetic exports."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.pop("WANDB_API_KEY", None)


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every test run gets its own prepared-data and demo cache (never the user's)."""
    root = tmp_path_factory.mktemp("lobsearch-cache")
    os.environ["LOBSEARCH_CACHE"] = str(root)
    return root


@pytest.fixture
def ray_session(_ray_shut_down_at_the_end):
    """One local Ray with 2 CPUs shared by every test that needs Ray: started by the first such
    test (and again after a test that needed the machine to itself, ``without_shared_ray``)."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    return ray


@pytest.fixture(scope="session")
def _ray_shut_down_at_the_end():
    yield
    import ray

    ray.shutdown()


@pytest.fixture
def without_shared_ray():
    """The machine to this test alone: the shared local Ray (its raylet, GCS and the worker
    processes earlier tests left idle) is shut down first; the next test that needs it starts it."""
    import ray

    ray.shutdown()


@pytest.fixture(scope="session")
def small_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic export: 6 days x 3,000 rows (train 4 / val 1 / test 1 style split), seed 0."""
    from lobsearch.synth import write_synthetic_export

    return write_synthetic_export(tmp_path_factory.mktemp("export") / "small", days=6, rows=3000, seed=0)

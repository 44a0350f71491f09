"""Running many lobsearch searches in one process, for the benchmarks that compare searches.

``local_ray`` starts one bounded local Ray (with the driver's quiet environment) that every
search of the benchmark joins, instead of a Ray start and stop per search; ``run`` runs one
search through ``python -m lobsearch.tune``'s entry point and returns its results.json with the
wall seconds it took (None with the exit code when it did not finish).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from lobsearch.search import RAY_ENVIRONMENT  # noqa: E402
from lobsearch.tune import main as tune_main  # noqa: E402


@contextlib.contextmanager
def local_ray(cpus: int = 2) -> Iterator[None]:
    """A local Ray of ``cpus`` CPUs for the searches of one benchmark; shut down after."""
    import ray

    for key, value in RAY_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()


def run(space: Path, storage: Path, name: str, *options: str) -> tuple[dict | None, int, float]:
    """(results.json or None, exit code, wall seconds) of one quiet, W&B-less search."""
    started = time.perf_counter()
    code = tune_main([str(space), "--storage", str(storage), "--name", name, "--wandb", "disabled", "--quiet",
                      *options])
    wall = time.perf_counter() - started
    results = json.loads((storage / name / "results.json").read_text()) if code == 0 else None
    return results, code, wall

"""The selection benchmarks build valid spaces: the honesty one per seed, the protocols one per protocol."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import pytest

from lobsearch.space import load_space

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _module(name: str):
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


def test_the_honesty_space_is_the_shipped_lstm_space_with_the_seed_set(tmp_path: Path) -> None:
    space = load_space(_module("honesty")._space(tmp_path, 7))
    shipped = load_space(BENCH.parent / "search_spaces" / "lstm.yaml")
    assert space.spec.search.seed == 7 and space.spec.fixed["train"]["seed"] == 7
    assert space.spec.params == shipped.spec.params and space.spec.models == shipped.spec.models


@pytest.mark.parametrize("protocol", ["holdout", "walk_forward"])
def test_the_protocols_spaces_differ_only_in_the_protocol(tmp_path: Path, protocol: str) -> None:
    bench = _module("protocols")
    args = argparse.Namespace(folds=3, epochs=6, steps=40, num_samples=8, reeval_top=2, reeval_seeds=3)
    space = load_space(bench._space(tmp_path, 1, protocol, args))
    assert space.spec.objective.protocol == protocol
    assert space.spec.search.time_budget_s is None and space.spec.search.num_samples == 8
    assert space.max_trial_epochs == 6 * (3 if protocol == "walk_forward" else 1)

"""lobsearch.actorcache on Ray 2.60's private Tune controller: finished trials' actors kept for
the next trials, and a trial whose own actor is already starting keeps it."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from lobsearch import actorcache

ROOT = Path(__file__).resolve().parents[1]
LSTM = ROOT / "search_spaces" / "lstm.yaml"
RECORDED = ROOT / "docs" / "bench" / "scale_source_results.json"


def test_the_cache_keeps_every_actor_offered_until_tune_forces_it_empty():
    from ray.tune.execution import tune_controller

    actorcache.install()
    cache = tune_controller._ObjectCache(may_keep_one=True)
    cache.increase_max("1 CPU")  # one trial staged
    assert all(cache.cache_object("1 CPU", actor) for actor in ("a", "b", "c"))
    assert list(cache.flush_cached_objects()) == [], "Tune's per-step flush keeps them"
    assert cache.pop_cached_object("1 CPU") == "a" and cache.num_cached_objects == 2
    assert sorted(cache.flush_cached_objects(force_all=True)) == ["b", "c"] and cache.num_cached_objects == 0


class Trial:
    placement_group_factory = "1 CPU"


def controller(trial: object, own: str, live: bool, asked: list) -> SimpleNamespace:
    """The parts of a TuneController that choosing a cached actor reads; ``asked`` collects the
    resources it looks a cached actor up for (none is cached)."""
    manager = SimpleNamespace(_live_actors_to_ray_actors_resources={own: None} if live else {})
    cache = SimpleNamespace(has_cached_object=lambda resources: asked.append(resources) or False)
    return SimpleNamespace(_trial_to_actor={trial: own}, _resetting_trials=set(), _actor_manager=manager,
                           _actor_cache=cache)


def test_a_trial_keeps_its_own_starting_actor_but_gives_up_a_resource_request():
    from ray.tune.execution.tune_controller import TuneController

    actorcache.install()
    trial, asked = Trial(), []
    starting = controller(trial, own="its actor", live=True, asked=asked)
    assert TuneController._maybe_reuse_cached_actor(starting, trial) is False and asked == [], \
        "its actor is being created on a node: no cached actor is looked for"
    waiting = controller(trial, own="its request", live=False, asked=asked)
    assert TuneController._maybe_reuse_cached_actor(waiting, trial) is False and asked == ["1 CPU"], \
        "a trial still waiting for resources looks for a cached actor (Tune's own path)"


@pytest.mark.ray
def test_every_trial_actor_a_search_creates_runs_trials_and_no_more_than_run_at_once(ray_session, tmp_path: Path):
    from lobsearch.replay import load_replay, searched_names
    from lobsearch.search import Outcome, run_search
    from lobsearch.space import load_space
    from ray._private import state

    raw = yaml.safe_load(LSTM.read_text())
    raw["search"].pop("time_budget_s")
    raw["search"].pop("reeval_top", None)
    raw["search"].update({"num_samples": 24, "max_concurrent": 6, "cpus_per_trial": 0.25})
    raw["tracking"] = {"wandb": "disabled"}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(raw))
    space = load_space(tmp_path / "space.yaml")
    replay = load_replay(RECORDED, metric="val_macro_f1", searched=searched_names(space), epoch_s=0.01)
    before = set(state.actors())
    assert run_search(space, export=None, name="w", storage=str(tmp_path / "runs"), quiet=True,
                      replay=replay) is Outcome.FINISHED
    pids = {json.loads(line)["pid"] for path in (tmp_path / "runs" / "w").glob("*/result.json")
            for line in path.read_text().splitlines()}
    trials = len(list((tmp_path / "runs" / "w").glob("*/result.json")))
    created = [i for i, actor in state.actors().items() if i not in before and actor["ActorClassName"] == "ImplicitFunc"]
    # Tune alone: 12 trial actors created, 10 of them killed before running a trial (2 processes ran all 24)
    assert trials == 24 and len(created) == len(pids) <= 6, \
        f"{len(created)} trial actors created, {len(pids)} ran the {trials} trials"

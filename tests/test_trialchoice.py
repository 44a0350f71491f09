"""lobsearch.trialchoice on Ray 2.60's FIFOScheduler: no scan of every trial when none waits, and
the same trial chosen as Tune's scan whenever one does."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from lobsearch import trialchoice

ROOT = Path(__file__).resolve().parents[1]
LSTM = ROOT / "search_spaces" / "lstm.yaml"
RECORDED = ROOT / "docs" / "bench" / "scale_source_results.json"


def scanned(controller: object) -> object:
    """Tune's own answer, by the scan: the first PENDING trial in the search's order, else the first PAUSED."""
    trials = controller.get_trials()
    return (next((t for t in trials if t.status == "PENDING"), None)
            or next((t for t in trials if t.status == "PAUSED"), None))


class Trial:
    def __init__(self, name: str, status: str):
        self.name, self.status = name, status


class Controller:
    """What the scheduler reads of a TuneController, counting the scans of its trials."""

    def __init__(self, statuses: list[str]):
        self.trials = [Trial(f"t{i}", status) for i, status in enumerate(statuses)]
        self._pending_trials = {t for t in self.trials if t.status == "PENDING"}
        self._paused_trials = {t for t in self.trials if t.status == "PAUSED"}
        self.scans = 0

    def get_trials(self) -> list:
        self.scans += 1
        return self.trials


@pytest.mark.parametrize("statuses", [
    ["TERMINATED", "RUNNING", "RUNNING", "ERROR"],
    ["TERMINATED", "PENDING", "RUNNING", "PENDING"],
    ["RUNNING", "PAUSED", "PENDING", "PAUSED"],
    ["PAUSED", "RUNNING", "TERMINATED"],
    [],
], ids=["none-waits", "pending", "pending-after-paused", "paused-only", "no-trials"])
def test_the_choice_is_tunes_own_and_made_without_a_scan_when_no_trial_waits(statuses):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    trialchoice.install()
    trialchoice.install()  # idempotent
    for scheduler in (FIFOScheduler(), ASHAScheduler(metric="m", mode="max")):
        controller = Controller(statuses)
        wrapper = SimpleNamespace(_tune_controller=controller, get_trials=controller.get_trials)
        expected = scanned(Controller(statuses))
        chosen = scheduler.choose_trial_to_run(wrapper)
        assert (chosen.name if chosen else None) == (expected.name if expected else None)
        waits = any(s in ("PENDING", "PAUSED") for s in statuses)
        assert (controller.scans > 0) == waits, f"{controller.scans} scans with statuses {statuses}"


def test_random_searches_get_the_scans_choice():
    import random

    from ray.tune.schedulers import FIFOScheduler

    trialchoice.install()
    rng = random.Random(7)
    for _ in range(300):
        statuses = rng.choices(["PENDING", "RUNNING", "PAUSED", "TERMINATED", "ERROR"],
                               weights=[1, 4, 1, 8, 1], k=rng.randrange(0, 40))
        controller = Controller(statuses)
        wrapper = SimpleNamespace(_tune_controller=controller, get_trials=controller.get_trials)
        assert FIFOScheduler().choose_trial_to_run(wrapper) is scanned(controller), statuses


class Walked(list):
    """A list of trials that counts the trials a walk from its end visits."""

    visited = 0

    def __reversed__(self):
        for trial in super().__reversed__():
            self.visited += 1
            yield trial


def test_the_walk_stops_once_every_waiting_trial_is_seen():
    trials = Walked(Trial(f"t{i}", "TERMINATED") for i in range(1000))
    newest = trials[-1]
    assert trialchoice.first_in_order(trials, {newest}) is newest and trials.visited == 1
    trials.visited = 0
    assert trialchoice.first_in_order(trials, {trials[-3], trials[-1]}) is trials[-3] and trials.visited == 3
    trials.visited = 0
    assert trialchoice.first_in_order(trials, set()) is None and trials.visited == 0


@pytest.mark.ray
def test_in_a_search_every_choice_equals_tunes_scan(ray_session, tmp_path: Path, monkeypatch):
    from ray.tune.schedulers import FIFOScheduler

    from lobsearch.replay import load_replay, searched_names
    from lobsearch.search import Outcome, run_search
    from lobsearch.space import load_space

    trialchoice.install()
    patched, answers = FIFOScheduler.choose_trial_to_run, []

    def checked(self, tune_controller):
        chosen = patched(self, tune_controller)
        answers.append((chosen, scanned(tune_controller)))
        return chosen

    monkeypatch.setattr(FIFOScheduler, "choose_trial_to_run", checked)
    raw = yaml.safe_load(LSTM.read_text())
    raw["search"].pop("time_budget_s")
    raw["search"].pop("reeval_top", None)
    raw["search"].update({"num_samples": 12, "max_concurrent": 4, "cpus_per_trial": 0.25})
    raw["tracking"] = {"wandb": "disabled"}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(raw))
    space = load_space(tmp_path / "space.yaml")
    replay = load_replay(RECORDED, metric="val_macro_f1", searched=searched_names(space), epoch_s=0.01)
    assert run_search(space, export=None, name="c", storage=str(tmp_path / "runs"), quiet=True,
                      replay=replay) is Outcome.FINISHED
    assert len(list((tmp_path / "runs" / "c").glob("*/result.json"))) == 12
    disagreements = [(a, b) for a, b in answers if a is not b]
    assert not disagreements, f"{len(disagreements)} of {len(answers)} choices differ from Tune's scan"
    assert sum(a is None for a, _ in answers) > 0 and sum(a is not None for a, _ in answers) > 0, \
        "the search made choices both ways (none waiting, a trial waiting)"

"""Re-evaluation of the top configurations: who is a candidate, which seeds, how they rank."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lobsearch.errors import ConfigError
from lobsearch.plan import Plan
from lobsearch.reeval import Reevaluation, _rank, candidates, fresh_seeds, with_seed
from lobsearch.space import load_space
from lobsearch.tune import _apply_overrides, build_parser

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "search_spaces" / "smoke.yaml"


def _plan(mode: str = "max", metric: str = "val_macro_f1") -> Plan:
    space = load_space(SMOKE)
    return Plan(space=space, export=Path("/e"), name="p", storage="/s", run_dir=Path("/s/p"), resume=False,
                address=None, metric=metric, mode=mode, sign=1 if mode == "max" else -1, max_epochs=3,
                gpus_per_trial=0, started=0.0, started_at="", say=lambda _: None)


def _trial(trial_id: str, score: float | None, window: int, status: str = "completed") -> dict:
    params = {"data.window": window, "train.learning_rate": 0.002, "lstm_tiny.hidden_size": 4}
    return {"trial_id": trial_id, "status": status, "params": params,
            "best": None if score is None else {"val_macro_f1": score, "val_loss": 1 - score}}


def test_candidates_are_the_best_distinct_configurations_of_finished_trials() -> None:
    trials = [_trial("a", 0.40, 10), _trial("b", 0.55, 20), _trial("c", 0.55, 20),  # c repeats b's point
              _trial("d", 0.70, 30, status="failed"), _trial("e", None, 40), _trial("f", 0.50, 40)]
    chosen = candidates(trials, _plan(), top=3)
    assert [c.trial_id for c in chosen] == ["b", "f", "a"]
    assert chosen[0].run.data.window == 20 and chosen[0].search_score == 0.55


def test_no_candidates_when_the_reevaluation_is_off() -> None:
    assert candidates([_trial("a", 0.40, 10), _trial("b", 0.55, 20)], _plan(), top=0) == []


def test_candidates_follow_the_objective_direction() -> None:
    trials = [_trial("a", 0.40, 10), _trial("b", 0.55, 20)]
    assert [c.trial_id for c in candidates(trials, _plan(mode="min", metric="val_loss"), top=2)] == ["b", "a"]


def test_fresh_seeds_never_repeat_the_searched_seed() -> None:
    run = candidates([_trial("a", 0.4, 10)], _plan(), top=1)[0].run
    seeds = fresh_seeds(run, 3)
    assert run.train.seed not in seeds and len(set(seeds)) == 3
    assert with_seed(run, seeds[1]).train.seed == seeds[1] and with_seed(run, seeds[1]).data == run.data


def _outcome(score: float | None) -> dict:
    if score is None:
        return {"status": "nan_loss", "val": {}, "state": None, "message": "loss is nan", "epochs": 1}
    return {"status": "completed", "val": {"macro_f1": score}, "state": {"w": torch.tensor([score])},
            "best_epoch": 2, "epochs": 3}


def test_the_winner_is_the_best_mean_not_the_best_single_search_trial() -> None:
    """The search's best trial (a, 0.60) was lucky: its fresh seeds average below b's."""
    plan = _plan()
    chosen = candidates([_trial("a", 0.60, 10), _trial("b", 0.55, 20)], plan, top=2)
    seeds = [1, 2, 3]
    scores = {("a", 1): 0.45, ("a", 2): 0.47, ("a", 3): 0.46, ("b", 1): 0.52, ("b", 2): 0.54, ("b", 3): 0.53}
    outcomes = {(i, s): _outcome(scores[(c.trial_id, s)]) for i, c in enumerate(chosen) for s in seeds}
    found = Reevaluation(metric=plan.metric, seeds=seeds)
    _rank(found, chosen, seeds, outcomes, plan)
    assert found.winner.trial_id == "b" and found.winner_seeds == seeds
    assert [float(r["state"]["w"]) for r in found.winner_runs] == pytest.approx([0.52, 0.54, 0.53])
    first, second = found.rows
    assert (first["trial_id"], first["rank"], second["rank"]) == ("b", 1, 2)
    assert first["mean"] == pytest.approx(0.53) and first["low"] < 0.53 < first["high"]
    assert first["rival"] == "a" and first["p_beats_rival"] > 0.99 and second["p_beats_rival"] < 0.01
    assert json.loads(json.dumps(found.table()))["winner"] == "b"


def test_a_failed_seed_is_noted_and_a_configuration_short_of_two_scores_is_not_ranked() -> None:
    plan = _plan()
    chosen = candidates([_trial("a", 0.60, 10), _trial("b", 0.55, 20)], plan, top=2)
    seeds = [1, 2]
    outcomes = {(0, 1): _outcome(0.5), (0, 2): _outcome(None), (1, 1): _outcome(0.4), (1, 2): _outcome(0.42)}
    found = Reevaluation(metric=plan.metric, seeds=seeds)
    _rank(found, chosen, seeds, outcomes, plan)
    assert found.winner.trial_id == "b"
    unranked = next(r for r in found.rows if r["trial_id"] == "a")
    assert unranked["rank"] is None and "1 of 2 seeds" in unranked["note"]
    assert found.notes == ["trial a seed 2: loss is nan"]


def test_no_configuration_with_two_scores_leaves_no_winner() -> None:
    plan = _plan()
    chosen = candidates([_trial("a", 0.60, 10)], plan, top=1)
    found = Reevaluation(metric=plan.metric, seeds=[1, 2])
    _rank(found, chosen, [1, 2], {(0, 1): _outcome(0.5)}, plan)  # seed 2 never ran (interrupted)
    assert found.winner is None and found.winner_row is None and found.rows[0]["rank"] is None


def _overridden(*argv: str):
    args = build_parser().parse_args([str(SMOKE), *argv])
    return _apply_overrides(load_space(SMOKE), args).spec.search


def test_reeval_options_from_the_command_line() -> None:
    assert _overridden().top_to_reevaluate == 2
    assert _overridden("--reeval-top", "0").top_to_reevaluate == 0
    assert _overridden("--reeval-top", "3", "--reeval-seeds", "4").reeval_seeds == 4
    assert _overridden("--smoke").top_to_reevaluate == 1
    assert _overridden("--smoke", "--reeval-top", "0").top_to_reevaluate == 0


def test_the_default_top_is_capped_by_the_trials_but_an_explicit_one_is_not() -> None:
    assert _overridden("--num-samples", "3", "--reeval-top", "3").top_to_reevaluate == 3
    space = load_space(SMOKE)
    raw = space.spec.model_dump(mode="python")
    raw["search"] = {k: v for k, v in raw["search"].items() if k != "reeval_top"} | {"num_samples": 3}
    from lobsearch.schema import validate
    from lobsearch.space import SpaceFile

    assert validate(SpaceFile, raw, "s").search.top_to_reevaluate == 3


@pytest.mark.parametrize("argv, words", [
    (("--reeval-top", "5"), ["search: reeval_top", "at most num_samples (4)", "got 5"]),
    (("--reeval-top", "-1"), ["search.reeval_top", "-1"]),
    (("--reeval-seeds", "1"), ["search.reeval_seeds", "2", "1"]),
])
def test_bad_reeval_options_are_refused_naming_the_key_the_rule_and_the_value(argv, words) -> None:
    with pytest.raises(ConfigError) as caught:
        _overridden(*argv)
    assert all(word in str(caught.value) for word in words), str(caught.value)

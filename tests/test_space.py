"""Search-space files: strict loading, the define-by-run function, conditional names."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml
from pydantic import ValidationError

from lobsearch.config import TrainConfig
from lobsearch.errors import ConfigError
from lobsearch.space import Objective, Param, load_space

SPACES = sorted((Path(__file__).parents[1] / "search_spaces").glob("*.yaml"))

GOOD = {
    "name": "t",
    "fixed": {"data": {"horizon": 10}, "train": {"epochs": 2}},
    "params": {
        "data.window": {"type": "int", "low": 10, "high": 50, "step": 10},
        "train.learning_rate": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True},
        "data.normalization.mode": {"type": "categorical", "choices": ["train", "per_day"]},
    },
    "models": {
        "lstm": {"fixed": {"num_layers": 1}, "params": {"hidden_size": {"type": "int", "low": 8, "high": 32}}},
        "gru": {"params": {"hidden_size": {"type": "int", "low": 8, "high": 64}}},
    },
}


def write(tmp_path: Path, body: dict) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.name)
def test_every_shipped_space_loads_and_opens_with_its_command(path: Path) -> None:
    space = load_space(path)
    assert space.families
    head = path.read_text().splitlines()
    assert head[0].startswith("# "), "each space opens with a comment saying what it searches"
    assert any(f"python -m lobsearch.tune search_spaces/{path.name}" in line for line in head)


def test_shipped_set_is_complete() -> None:
    assert {p.stem for p in SPACES} >= {"lstm", "gru", "deeplob", "transformer", "all", "smoke"}


def test_fixed_trial_builds_the_run_config(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, GOOD))
    params = {
        "data.window": 30,
        "train.learning_rate": 0.001,
        "data.normalization.mode": "per_day",
        "model.name": "gru",
        "gru.hidden_size": 16,
    }
    trial = optuna.trial.FixedTrial(params)
    constants = space.define_by_run(trial)
    assert constants == {}
    run = space.run_config({**params, **constants})
    assert run.data.window == 30 and run.data.horizon == 10
    assert run.data.normalization.mode == "per_day"
    assert run.model.name == "gru" and run.model.params == {"hidden_size": 16}
    assert run.train.epochs == 2 and run.train.learning_rate == 0.001


def test_conditional_branches_have_distinct_names_in_a_study(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, GOOD))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen: dict[str, set[str]] = {}
    for _ in range(30):
        trial = study.ask()
        space.define_by_run(trial)
        family = trial.params["model.name"]
        seen.setdefault(family, set()).update(k for k in trial.params if "." in k and k.split(".")[0] in ("lstm", "gru"))
        study.tell(trial, 0.5)
        run = space.run_config(trial.params)
        assert run.model.name == family
        if family == "lstm":
            assert run.model.params["num_layers"] == 1
    assert seen == {"lstm": {"lstm.hidden_size"}, "gru": {"gru.hidden_size"}}


def test_single_family_returns_its_name_as_a_constant(tmp_path: Path) -> None:
    body = {**GOOD, "models": {"lstm": GOOD["models"]["lstm"]}}
    space = load_space(write(tmp_path, body))
    trial = optuna.trial.FixedTrial({"data.window": 10, "train.learning_rate": 0.01, "data.normalization.mode": "train", "lstm.hidden_size": 8})
    assert space.define_by_run(trial) == {"model.name": "lstm"}


def test_prep_configs_enumerate_searched_normalization(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, GOOD))
    modes = sorted(c.normalization.mode for c in space.prep_configs())
    assert modes == ["per_day", "train"]


BAD = [
    ({"params": {"data.windw": {"type": "int", "low": 1, "high": 5}}}, "did you mean 'data.window'"),
    ({"params": {"model.hidden_size": {"type": "int", "low": 1, "high": 5}}}, "must start with 'data.' or 'train.'"),
    ({"params": {"train.learning_rate": {"type": "float", "low": 0.1, "high": 0.01}}}, "low <= high"),
    ({"params": {"train.learning_rate": {"type": "float", "low": 0.0, "high": 0.01, "log": True}}}, "`low > 0` must hold for `log=True`"),
    ({"params": {"train.learning_rate": {"type": "float", "low": 1e-3, "high": 0.01, "log": True, "step": 1e-3}}}, "`step` is not supported when `log` is true"),
    ({"params": {"data.window": {"type": "int", "low": 0, "high": 5}}}, "data.window"),
    ({"params": {"data.window": {"type": "categorical", "choices": []}}}, "`choices` must contain one or more elements"),
    ({"params": {"data.normalization.clip": {"type": "float", "low": 1.0, "high": 5.0}}}, "categorical choices"),
    ({"params": {"data.normalization": {"type": "categorical", "choices": ["train"]}}}, "whole section"),
    ({"models": {"deeplab": {}}}, "did you mean 'deeplob'"),
    ({"models": {"lstm": {"params": {"hiden_size": {"type": "int", "low": 1, "high": 4}}}}}, "did you mean 'hidden_size'"),
    ({"models": {"lstm": {"fixed": {"pooling": "max"}}}}, "pooling"),
    ({"search": {"num_samples": 0}}, "search.num_samples"),
    ({"search": {"gpus_per_trial": 1.5}}, "whole"),
    ({"search": {"gpus_per_trial": "half"}}, "number of GPUs >= 0, or 'auto'"),
    ({"search": {"gpus_per_trial": -0.5}}, "number of GPUs >= 0, or 'auto'"),
    ({"search": {"enqueue": [{"lstm.hidden": 3}]}}, "search.enqueue[0].lstm.hidden"),
    ({"objective": {"metric": "val_macro_f2"}}, "did you mean 'val_macro_f1'"),
    ({"serach": {}}, "did you mean 'search'"),
]


@pytest.mark.parametrize("change, expected", BAD, ids=[b[1][:30] for b in BAD])
def test_bad_space_names_its_key(tmp_path: Path, change: dict, expected: str) -> None:
    body = {**GOOD, "models": {"lstm": {"params": {"hidden_size": {"type": "int", "low": 8, "high": 32}}}}, "params": {}}
    body.update(change)
    with pytest.raises(ConfigError) as info:
        load_space(write(tmp_path, body))
    assert expected in str(info.value)
    assert str(tmp_path / "space.yaml") in str(info.value)


def test_every_problem_reported_at_once(tmp_path: Path) -> None:
    body = {**GOOD, "params": {"data.windw": {"type": "int", "low": 1, "high": 5}, "train.lr": {"type": "float", "low": 1.0, "high": 2.0}},
            "models": {"deeplab": {}}}
    with pytest.raises(ConfigError) as info:
        load_space(write(tmp_path, body))
    assert len(info.value.problems) == 3


def test_yaml_exponent_floats_are_numbers(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("models: {lstm: {}}\nparams:\n  train.learning_rate: {type: float, low: 1e-4, high: 1e-2, log: true}\n")
    space = load_space(path)
    assert space.spec.params["train.learning_rate"].low == 1e-4


def test_a_hyperparameter_in_place_of_a_family_lists_the_registered_families(tmp_path: Path) -> None:
    body = {"models": {"hidden_size": {"type": "int", "low": 8, "high": 32}}}
    with pytest.raises(ConfigError) as info:
        load_space(write(tmp_path, body))
    (problem,) = info.value.problems
    assert problem.startswith("models.hidden_size: unknown model 'hidden_size'; choices: ")
    families = problem.split("choices: ")[1].split(", ")
    assert set(families) >= {"deeplob", "gru", "logistic", "lstm", "mlp", "transformer", "lstm_tiny"}


def test_a_hyperparameter_in_place_of_fixed_or_params_lists_those(tmp_path: Path) -> None:
    body = {"models": {"lstm": {"hidden_size": {"type": "int", "low": 8, "high": 32}}}}
    with pytest.raises(ConfigError) as info:
        load_space(write(tmp_path, body))
    assert info.value.problems == ("models.lstm.hidden_size: unknown key (choices: fixed, params)",)


def test_a_duplicate_key_in_a_space_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("models: {lstm: {}}\nparams: {}\nsearch: {num_samples: 2}\nparams: {}\n")
    with pytest.raises(ConfigError) as info:
        load_space(path)
    assert str(path) in str(info.value)
    assert info.value.problems == ("line 4: duplicate key 'params' (first at line 2)",)


def _space(tmp_path: Path, **sections) -> object:
    return load_space(write(tmp_path, {"models": {"lstm_tiny": {}}, **sections}))


def test_max_epochs_is_the_top_of_a_searched_range_or_choice(tmp_path: Path) -> None:
    fixed = {"train": {"epochs": 3}}
    ranged = {"train.epochs": {"type": "int", "low": 2, "high": 11, "step": 4}}
    with pytest.warns(UserWarning, match="replaced with \\[2, 10\\]"):
        assert _space(tmp_path, fixed=fixed, params=ranged).max_epochs == 10
    chosen = {"train.epochs": {"type": "categorical", "choices": [4, 12, 6]}}
    assert _space(tmp_path, fixed=fixed, params=chosen).max_epochs == 12


def test_max_epochs_is_the_fixed_value_else_the_default(tmp_path: Path) -> None:
    assert _space(tmp_path, fixed={"train": {"epochs": 3}}).max_epochs == 3
    assert _space(tmp_path).max_epochs == TrainConfig().epochs


@pytest.mark.parametrize("objective, sign", [
    ({"metric": "val_macro_f1"}, 1),
    ({"metric": "val_macro_f1", "mode": "min"}, -1),
    ({"metric": "val_loss"}, -1),
])
def test_objective_sign_follows_its_direction(objective: dict, sign: int) -> None:
    assert Objective.model_validate(objective).sign == sign


def test_params_take_exactly_the_distributions_optuna_takes() -> None:
    assert Param(type="int", low=1, high=64, log=True, step=1).distribution().log
    with pytest.warns(UserWarning, match="not divisible by `step`"):
        assert Param(type="float", low=0.0, high=1.0, step=0.3).extremes() == [0.0, 0.9]
    bad = [
        {"type": "int", "low": 1, "high": 64, "log": True, "step": 2},
        {"type": "int", "low": 1.5, "high": 4},
        {"type": "float", "low": 0.0, "high": 1.0, "step": 0.0},
        {"type": "categorical", "choices": [1], "low": 0},
        {"type": "float", "low": 0.0, "high": 1.0, "choices": [0.5]},
        {"type": "float", "low": 0.0},
    ]
    for raw in bad:
        with pytest.raises(ValidationError):
            Param.model_validate(raw)

"""Run configs: the schema without the model zoo, the model check after it, strict YAML."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lobsearch.config import ModelConfig, load_run_config, model_problems, read_yaml, validate_run
from lobsearch.errors import ConfigError


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.integration
def test_the_schema_and_the_space_load_without_torch():
    probe = "import sys, lobsearch.config, lobsearch.space\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False"


def test_schema_and_model_problems_are_reported_in_one_pass():
    raw = {"data": {"window": 0}, "model": {"name": "lstm", "hiden_size": 8, "dropout": 1.5},
           "train": {"schedule": "cosin"}}
    with pytest.raises(ConfigError) as info:
        validate_run(raw, "run.yaml")
    assert info.value.source == "run.yaml"
    assert info.value.problems == (
        "data.window: Input should be greater than or equal to 1 (got 0)",
        "train.schedule: unknown value 'cosin'; did you mean 'cosine'? choices: cosine, none",
        "model.hiden_size: unknown hyperparameter 'hiden_size'; did you mean 'hidden_size'? "
        "choices: bidirectional, dropout, hidden_size, num_layers, pooling",
        "model.dropout: Input should be less than 1 (got 1.5)",
    )


def test_an_unknown_model_names_the_choices():
    with pytest.raises(ConfigError) as info:
        validate_run({"model": {"name": "deeplab"}}, "run.yaml")
    (problem,) = info.value.problems
    assert problem.startswith("model.name: unknown model 'deeplab'; did you mean 'deeplob'? choices: deeplob,")


def test_a_window_below_the_models_minimum_is_rejected_even_when_the_rest_is_broken():
    raw = {"data": {"window": 10}, "model": {"name": "deeplob"}, "train": {"epochs": 0}}
    with pytest.raises(ConfigError) as info:
        validate_run(raw, "run.yaml")
    assert "train.epochs: Input should be greater than or equal to 1 (got 0)" in info.value.problems
    assert any(p.startswith("model: window=10 is too small for model 'deeplob'") for p in info.value.problems)
    assert validate_run({"data": {"window": 19}, "model": {"name": "deeplob"}}, "run.yaml").data.window == 19


def test_cross_field_rules_keep_their_own_wording():
    model = ModelConfig.model_validate({"name": "transformer", "d_model": 10, "nhead": 4})
    assert model_problems(model) == ["model: d_model=10 must be divisible by nhead=4"]
    assert model_problems(ModelConfig.model_validate({"name": "lstm_tiny"}), window=1) == []


def test_duplicate_keys_name_the_file_the_key_and_both_lines(tmp_path):
    path = _write(tmp_path / "run.yaml", "data: {window: 10}\nmodel: {name: lstm}\ntrain:\n"
                  "  epochs: 3\n  batch_size: 4\n  epochs: 4\nmodel: {name: gru}\n")
    with pytest.raises(ConfigError) as info:
        load_run_config(path)
    assert info.value.source == str(path)
    assert info.value.problems == (
        "line 6: duplicate key 'epochs' (first at line 4)",
        "line 7: duplicate key 'model' (first at line 2)",
    )


def test_a_merged_key_may_be_overridden(tmp_path):
    path = _write(tmp_path / "merge.yaml", "base: &b {epochs: 3, batch_size: 4}\ntrain:\n  <<: *b\n  epochs: 5\n")
    assert read_yaml(path)["train"] == {"epochs": 5, "batch_size": 4}


def test_exponent_floats_and_syntax_errors(tmp_path):
    assert read_yaml(_write(tmp_path / "f.yaml", "lr: 1e-3\nwd: -2E+1\nn: 10\n")) == {"lr": 1e-3, "wd": -20.0, "n": 10}
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_yaml(_write(tmp_path / "bad.yaml", "a: [1, 2\n"))
    with pytest.raises(ConfigError, match="file not found"):
        read_yaml(tmp_path / "missing.yaml")


def test_every_lobsearch_error_survives_a_trip_through_pickle():
    """Errors raised in a Ray worker reach the driver pickled: type, message and fields intact."""
    import pickle

    from lobsearch import errors
    from lobsearch.trial import TrialFailed

    samples = [errors.LobsearchError("x"), errors.DataError("day 20260101: bad"),
               errors.ConfigError("space.yaml", ["a: rule (got 1)", "b: rule (got 2)"]),
               TrialFailed("loss went NaN")]
    for error in samples:
        back = pickle.loads(pickle.dumps(error))
        assert type(back) is type(error) and str(back) == str(error)
    config = pickle.loads(pickle.dumps(samples[2]))
    assert config.source == "space.yaml" and config.problems == ("a: rule (got 1)", "b: rule (got 2)")
    declared = {c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, Exception)}
    assert declared <= {type(e) for e in samples}, "a new error type needs a pickle sample here"


def test_a_huge_yaml_file_is_refused_before_it_is_parsed(tmp_path):
    from lobsearch.config import MAX_YAML_BYTES

    path = tmp_path / "big.yaml"
    path.write_text("models: {lstm: {}}\n" + "# padding\n" * (MAX_YAML_BYTES // 10 + 1))
    with pytest.raises(ConfigError, match="at most 1,048,576 bytes"):
        read_yaml(path)

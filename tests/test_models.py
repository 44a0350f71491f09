"""The model registry and every registered model, tiny twins included."""

from __future__ import annotations

import dataclasses
import inspect
import pickle

import pytest
import torch

from lobsearch.errors import ConfigError
from lobsearch.models import Backend, create_model, list_models, model_spec
from lobsearch.models.deeplob import PAPER_ORDER
from lobsearch.models.registry import register

N_FEATURES = 40
BATCH = 16
SLOW_TO_TRAIN = {"deeplob"}
"""Full-size models whose 30 training steps take more than a second on two shared CPU cores."""


def _window(name: str) -> int:
    return model_spec(name).minimum_window() + 3


def _names(slow: set[str]) -> list:
    return [pytest.param(n, marks=pytest.mark.slow) if n in slow else n for n in list_models()]


def _batch(name: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH, _window(name), N_FEATURES, generator=generator)
    return x, torch.randint(0, 3, (BATCH,), generator=generator)


@pytest.mark.parametrize("name", list_models())
def test_forward_gives_finite_logits_and_finite_gradients(name):
    torch.manual_seed(0)
    model = create_model(name, N_FEATURES, _window(name))
    x, y = _batch(name)
    logits = model(x)
    assert logits.shape == (BATCH, 3) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits, y).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("extra_rows", [0, 1, 40])
@pytest.mark.parametrize("name", list_models("*_tiny"))
def test_every_window_from_the_minimum_up_works(name, extra_rows):
    window = model_spec(name).minimum_window() + extra_rows
    model = create_model(name, N_FEATURES, window)
    assert model(torch.randn(2, window, N_FEATURES)).shape == (2, 3)


@pytest.mark.parametrize("name", _names(SLOW_TO_TRAIN))
def test_thirty_adam_steps_lower_the_loss_on_a_fixed_batch(name):
    torch.manual_seed(0)
    model = create_model(name, N_FEATURES, _window(name))
    x, y = _batch(name)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


@pytest.mark.parametrize("name", list_models())
def test_spec_hyperparameters_are_the_builders_keyword_only_arguments(name):
    spec = model_spec(name)
    params = inspect.signature(spec.builder).parameters.values()
    keyword_only = {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY}
    assert set(spec.hyperparameters) == set(keyword_only)
    assert set(spec.tiny) <= set(spec.hyperparameters)
    assert isinstance(spec.backend, Backend) and spec.problems({}) == []


@pytest.mark.parametrize("name", list_models("*_tiny"))
def test_tiny_twin_defaults_are_its_tiny_hyperparameters(name):
    twin, full = model_spec(name), model_spec(name.removesuffix("_tiny"))
    assert twin.twin_of == full.name and twin.family == full.family
    assert dict(twin.hyperparameters) == {**full.hyperparameters, **full.tiny}
    small = sum(p.numel() for p in create_model(name, N_FEATURES, _window(name)).parameters())
    assert small <= 5000


def test_a_spec_pickles_by_name():
    spec = model_spec("mlp_tiny")
    assert pickle.loads(pickle.dumps(spec)) is spec


@pytest.mark.parametrize("name", [n for n in list_models("*_tiny") if model_spec(n).backend.bf16])
def test_bf16_models_run_under_autocast(name):
    model = create_model(name, N_FEATURES, _window(name))
    x, y = _batch(name)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
    loss = torch.nn.functional.cross_entropy(logits.float(), y)
    loss.backward()
    assert logits.shape == (BATCH, 3) and torch.isfinite(loss)


@pytest.mark.parametrize("name", [n for n in list_models() if model_spec(n).backend.channels_last])
def test_channels_last_leaves_the_outputs_unchanged(name):
    torch.manual_seed(0)
    model = create_model(name, N_FEATURES, _window(name)).eval()
    x, _ = _batch(name)
    expected = model(x)
    model = model.to(memory_format=torch.channels_last)
    assert torch.allclose(model(x), expected, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("name", list_models())
def test_models_train_on_cuda_with_their_backend_settings(name):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    backend = model_spec(name).backend
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = backend.cudnn_benchmark
    try:
        model = create_model(name, N_FEATURES, _window(name)).cuda()
        if backend.channels_last:
            model = model.to(memory_format=torch.channels_last)
        x, y = (t.cuda() for t in _batch(name))
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=backend.bf16):
            logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
        loss.backward()
    finally:
        torch.backends.cudnn.benchmark = saved
    assert logits.shape == (BATCH, 3) and torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_list_models_filters_with_fnmatch_and_lists_every_family():
    assert list_models("*_tiny") == [f"{n}_tiny" for n in list_models("*") if "_tiny" not in n]
    assert set(list_models()) >= {"logistic", "mlp", "lstm", "gru", "deeplob", "transformer"}
    assert list_models("nothing*") == []
    assert {model_spec(n).family for n in list_models()} == {
        "linear", "recurrent", "deeplob", "transformer"
    }


def test_backend_settings_follow_the_measurements():
    assert model_spec("deeplob").backend == Backend(channels_last=True, bf16=True,
                                                    cudnn_benchmark=True, cuda_graphs=True)
    assert model_spec("lstm").backend == Backend(cuda_graphs=True) == model_spec("gru").backend
    assert model_spec("transformer").backend == Backend(bf16=True, cuda_graphs=True)
    assert all(model_spec(name).backend.cuda_graphs for name in list_models())
    with pytest.raises(dataclasses.FrozenInstanceError):
        model_spec("lstm").backend.bf16 = True  # type: ignore[misc]


def test_unknown_model_names_the_closest_match_and_the_choices():
    with pytest.raises(ConfigError, match=r"unknown model 'deeplab'; did you mean 'deeplob'\?"
                                          r" choices: deeplob, deeplob_tiny, gru"):
        create_model("deeplab", N_FEATURES, 30)
    with pytest.raises(ValueError, match="unknown model 'lstn'; did you mean 'lstm'"):
        model_spec("lstn")


def test_unknown_hyperparameter_names_the_closest_match_and_the_choices():
    with pytest.raises(ConfigError) as info:
        create_model("lstm", N_FEATURES, 10, hidden_sze=8)
    message = str(info.value)
    assert "model 'lstm'" in message
    assert "unknown hyperparameter 'hidden_sze'; did you mean 'hidden_size'?" in message
    assert "choices: bidirectional, dropout, hidden_size, num_layers, pooling" in message


def test_every_bad_value_is_reported_at_once():
    with pytest.raises(ConfigError) as info:
        create_model("lstm", N_FEATURES, 10, hidden_size=0, dropout=1.0, bidirectional=1,
                      num_layers=2.0, pooling="atention")
    problems = info.value.problems
    assert "hidden_size: Input should be greater than or equal to 1 (got 0)" in problems
    assert "dropout: Input should be less than 1 (got 1.0)" in problems
    assert "bidirectional: Input should be a valid boolean (got 1)" in problems
    assert "num_layers: Input should be a valid integer (got 2.0)" in problems
    assert ("pooling: unknown value 'atention'; did you mean 'attention'? choices: attention, last"
            in problems)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "0.1", None, True])
def test_a_float_hyperparameter_rejects_nan_inf_bools_and_non_numbers(value):
    with pytest.raises(ConfigError, match=r"dropout: Input should be a (valid|finite) number \(got "):
        create_model("gru", N_FEATURES, 10, dropout=value)


def test_a_float_hyperparameter_accepts_an_int():
    spec = model_spec("gru_tiny")
    assert spec.problems({"dropout": 0}) == []
    assert spec.problems({"dropout": 1}) == ["dropout: Input should be less than 1 (got 1)"]
    assert create_model("gru_tiny", N_FEATURES, 10, dropout=0).dropout.p == 0


@pytest.mark.parametrize("arg,kwargs,expected", [
    ("n_features", {"n_features": 0}, "n_features: Input should be greater than or equal to 1 (got 0)"),
    ("window", {"window": 2.5}, "window: Input should be a valid integer (got 2.5)"),
    ("n_classes", {"n_classes": 1}, "n_classes: Input should be greater than or equal to 2 (got 1)"),
])
def test_shape_arguments_are_checked(arg, kwargs, expected):
    args = {"n_features": N_FEATURES, "window": 10, **kwargs}
    with pytest.raises(ConfigError) as info:
        create_model("logistic", **args)
    assert expected in info.value.problems


def test_deeplob_names_its_minimum_window_and_the_rule():
    assert model_spec("deeplob").minimum_window() == 19
    create_model("deeplob_tiny", N_FEATURES, 19)
    with pytest.raises(ConfigError) as info:
        create_model("deeplob_tiny", N_FEATURES, 18)
    (problem,) = info.value.problems
    assert "window=18 is too small for model 'deeplob_tiny'" in problem
    assert "six unpadded (4, 1) convolutions remove 18 rows" in problem
    assert "window >= 19" in problem


def test_mlp_minimum_window_follows_its_lookback():
    assert model_spec("mlp").minimum_window({"lookback": 7}) == 7
    create_model("mlp_tiny", N_FEATURES, 7, lookback=7)
    with pytest.raises(ConfigError, match=r"window=6 is too small .* window >= 7"):
        create_model("mlp_tiny", N_FEATURES, 6, lookback=7)


def test_deeplob_needs_the_forty_book_columns():
    with pytest.raises(ConfigError, match="n_features=39: deeplob needs the 40 book columns"):
        create_model("deeplob_tiny", 39, 20)


def test_deeplob_extra_features_changes_the_input_width_it_accepts():
    torch.manual_seed(0)
    book_only = create_model("deeplob_tiny", 48, 20)
    extra = create_model("deeplob_tiny", 48, 20, extra_features=True)
    assert extra.lstm.input_size == book_only.lstm.input_size + 8
    x = torch.randn(2, 20, 48)
    assert extra(x).shape == book_only(x).shape == (2, 3)
    with pytest.raises(ValueError, match="input has 40 features, the model was built for 48"):
        extra(x[..., :40])
    with pytest.raises(ConfigError, match="extra_features=True appends columns 40\\+"):
        create_model("deeplob_tiny", 40, 20, extra_features=True)


def test_deeplob_extra_features_reach_the_output():
    torch.manual_seed(0)
    model = create_model("deeplob_tiny", 44, 20, extra_features=True).eval()
    x = torch.randn(1, 20, 44)
    changed = x.clone()
    changed[0, -1, 40:] += 5.0
    assert not torch.allclose(model(x), model(changed))


def test_deeplob_reorders_the_book_into_the_papers_interleaved_layout():
    assert PAPER_ORDER[:8] == (0, 10, 20, 30, 1, 11, 21, 31)
    assert sorted(PAPER_ORDER) == list(range(40))
    model = create_model("deeplob_tiny", 42, 20).eval()
    x = torch.randn(1, 20, 42)
    ignored = x.clone()
    ignored[..., 40:] = 0.0
    assert torch.equal(model(x), model(ignored))


@pytest.mark.parametrize("name", ["deeplob", "deeplob_tiny"])
def test_deeplob_output_length_shrinks_by_eighteen_steps(name):
    model = create_model(name, N_FEATURES, 25)
    features = model.inception(model.convs(torch.randn(2, 1, 25, 40)))
    assert features.shape[2:] == (25 - 18, 1)


@pytest.mark.parametrize("hp", [
    {"bidirectional": True},
    {"pooling": "attention"},
    {"bidirectional": True, "pooling": "attention", "num_layers": 2},
])
@pytest.mark.parametrize("name", ["lstm_tiny", "gru_tiny"])
def test_recurrent_variants_build_and_run(name, hp):
    model = create_model(name, N_FEATURES, 6, **hp)
    assert model(torch.randn(3, 6, N_FEATURES)).shape == (3, 3)


@pytest.mark.parametrize("hp", [
    {"positions": "learned"},
    {"pooling": "last"},
    {"pooling": "attention"},
    {"dual_attention": True},
    {"dual_attention": True, "positions": "learned", "d_model": 6, "nhead": 3},
])
def test_transformer_variants_build_and_run(hp):
    model = create_model("transformer_tiny", N_FEATURES, 7, **hp)
    assert model(torch.randn(3, 7, N_FEATURES)).shape == (3, 3)


def test_transformer_checks_heads_divide_the_width_and_the_input_length():
    with pytest.raises(ConfigError, match="d_model=10 must be divisible by nhead=4"):
        create_model("transformer_tiny", N_FEATURES, 8, d_model=10, nhead=4)
    assert model_spec("transformer").problems({"d_model": 10, "nhead": 4}) == [
        "d_model=10 must be divisible by nhead=4"
    ]
    model = create_model("transformer_tiny", N_FEATURES, 8)
    with pytest.raises(ValueError, match="input has 9 time steps, built for window=8"):
        model(torch.randn(1, 9, N_FEATURES))


@pytest.mark.parametrize("hp", [{"pool": "mean"}, {"pool": "mean", "lookback": 1}])
def test_mlp_pooled_variants_run(hp):
    name = "mlp_tiny"
    model = create_model(name, N_FEATURES, 5, **hp)
    assert model(torch.randn(2, 5, N_FEATURES)).shape == (2, 3)


def test_logistic_reads_only_the_last_row_by_default():
    model = create_model("logistic", N_FEATURES, 5)
    x = torch.randn(2, 5, N_FEATURES)
    earlier_changed = x.clone()
    earlier_changed[:, :-1] += 1.0
    assert torch.equal(model(x), model(earlier_changed))
    pooled = create_model("logistic", N_FEATURES, 5, pool="mean")
    assert not torch.equal(pooled(x), pooled(earlier_changed))


def test_register_rejects_a_taken_name_and_a_bad_tiny_twin():
    def builder(n_features, window, n_classes=3, *, width: int = 4):
        return torch.nn.Linear(n_features, n_classes)

    with pytest.raises(ValueError, match="'lstm' is already registered"):
        register("lstm", tiny={})(builder)
    with pytest.raises(ConfigError, match="unknown hyperparameter 'widht'"):
        register("new_model", tiny={"widht": 2})(builder)
    assert "new_model" not in list_models()


def test_register_requires_annotated_defaults():
    def builder(n_features, window, n_classes=3, *, width=4):
        return torch.nn.Linear(n_features, n_classes)

    with pytest.raises(ValueError, match="'width' needs a default and an annotation"):
        register("unannotated", tiny={})(builder)

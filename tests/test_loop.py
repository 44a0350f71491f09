"""The training loop: determinism, resume, NaN handling, early stopping, class weights, backend."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from lobsearch.backend import COMPILE_MIN_STEPS, device_setup
from lobsearch.config import TrainConfig
from lobsearch.data.windows import WindowSet
from lobsearch.errors import DataError
from lobsearch.checkpoints import CHECKPOINT_NAME
from lobsearch.graphs import GRAPH_WARMUP_STEPS, GraphedStep
from lobsearch.inference import evaluate, predict
from lobsearch.loop import FitSettings, fit, subsample
from lobsearch.recipe import fit_settings
from lobsearch.steps import (
    TrainStep,
    class_weights,
    epoch_batches,
    epoch_steps,
    focal_loss,
    lr_factor,
    make_train_step,
)
from lobsearch.models import Backend as SpecBackend
from lobsearch.models import create_model, model_spec

WINDOW, FEATURES = 8, 4


def _windows(seed: int = 0, rows: int = 1200) -> tuple[WindowSet, WindowSet]:
    """Train and val windows whose label is the sign class of feature 0 at the end row."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, FEATURES, generator=g)
    ends = torch.arange(WINDOW - 1, rows)
    y = (x[ends, 0] > -0.4).long() + (x[ends, 0] > 0.4).long()
    cut = len(ends) * 3 // 4
    return WindowSet(x, ends[:cut], y[:cut], WINDOW), WindowSet(x, ends[cut:], y[cut:], WINDOW)


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("lstm_tiny", FEATURES, WINDOW)


def _cfg(**changes) -> FitSettings:
    base = {"epochs": 3, "batch_size": 32, "steps_per_epoch": 8, "learning_rate": 5e-3,
            "patience": None, "eval_batch_size": 128}
    return fit_settings(TrainConfig(**{**base, **changes}))


def _numbers(history: list[dict]) -> list[dict]:
    """The history without its timings (samples_per_s, seconds), which differ run to run."""
    return [{k: v for k, v in h.items() if k not in ("samples_per_s", "seconds")} for h in history]


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class NaNModel(nn.Module):
    """Outputs NaN logits: training must end with status nan_loss, not an exception."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(FEATURES, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x[:, -1]) * float("nan")


# ------------------------------------------------------------------ fit


def test_fit_is_deterministic_on_cpu():
    train, val = _windows()
    first = fit(_model(), train, val, _cfg(), device="cpu")
    second = fit(_model(), train, val, _cfg(), device="cpu")
    assert first.status == "completed" and len(first.history) == 3
    assert _numbers(first.history) == _numbers(second.history)
    assert _same_state(first.best_state, second.best_state)


def test_fit_learns_the_planted_signal():
    train, val = _windows()
    result = fit(_model(), train, val, _cfg(epochs=3, steps_per_epoch=20, learning_rate=1e-2), device="cpu")
    assert result.best_val["macro_f1"] > 0.6
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def test_resume_continues_to_the_same_result(tmp_path):
    train, val = _windows()
    cfg = _cfg(epochs=4)
    straight_model = _model()
    straight = fit(straight_model, train, val, cfg, device="cpu", data_hash="h1")

    def stop_after_two(epoch):
        return epoch.epoch == 2

    first = fit(_model(), train, val, cfg, device="cpu", on_epoch=stop_after_two,
                checkpoint_dir=tmp_path, data_hash="h1")
    assert first.status == "stopped" and len(first.history) == 2
    resumed_model = _model(seed=99)  # different initial weights: the checkpoint must win
    resumed = fit(resumed_model, train, val, cfg, device="cpu", checkpoint_dir=tmp_path,
                  resume=tmp_path, data_hash="h1")
    assert resumed.status == "completed"
    assert _numbers(resumed.history) == _numbers(straight.history)
    assert resumed.best_epoch == straight.best_epoch
    assert _same_state(resumed.best_state, straight.best_state)
    assert _same_state(resumed_model.state_dict(), straight_model.state_dict())


def test_resume_with_another_data_hash_names_both(tmp_path):
    train, val = _windows()
    fit(_model(), train, val, _cfg(epochs=1), device="cpu", checkpoint_dir=tmp_path, data_hash="aaaa")
    with pytest.raises(DataError, match="'aaaa'.*'bbbb'"):
        fit(_model(), train, val, _cfg(epochs=2), device="cpu", resume=tmp_path, data_hash="bbbb")


def test_checkpoint_is_written_atomically_each_epoch(tmp_path, monkeypatch):
    train, val = _windows()
    seen = []
    fit(_model(), train, val, _cfg(epochs=2), device="cpu", checkpoint_dir=tmp_path,
        on_epoch=lambda e: seen.append(sorted(p.name for p in tmp_path.iterdir())))
    assert seen == [[CHECKPOINT_NAME], [CHECKPOINT_NAME]]
    payload = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    assert payload["progress"]["epoch"] == 2 and set(payload["rng"]) >= {"torch", "numpy", "python", "sampler"}

    def torn_save(obj, f, *args, **kwargs):  # a crash half-way through writing the next checkpoint
        with open(f, "wb") as handle:
            handle.write(b"torn")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError, match="disk full"):
        fit(_model(), train, val, _cfg(epochs=3), device="cpu", checkpoint_dir=tmp_path, resume=tmp_path)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_NAME], "no temporary file is left"
    assert torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)["progress"]["epoch"] == 2


def test_nan_loss_is_a_status_not_an_exception():
    train, val = _windows()
    result = fit(NaNModel(), train, val, _cfg(), device="cpu")
    assert result.status == "nan_loss"
    assert "nan" in result.message and "epoch 1" in result.message
    assert result.best_state is None and result.best_epoch == 0


def test_early_stopping_after_patience_epochs_without_progress():
    train, val = _windows()
    frozen = _cfg(epochs=10, patience=2, learning_rate=1e-12, schedule="none")
    result = fit(_model(), train, val, frozen, device="cpu")
    assert result.status == "early_stopped"
    assert len(result.history) == 3 and result.best_epoch == 1
    assert "patience 2" in result.message


def test_on_epoch_returning_true_stops_the_run():
    train, val = _windows()
    reports = []
    result = fit(_model(), train, val, _cfg(epochs=5), device="cpu",
                 on_epoch=lambda e: reports.append(e.metrics()) or True)
    assert result.status == "stopped" and len(result.history) == 1
    assert {"epoch", "train_loss", "lr", "samples_per_s", "val_macro_f1", "val_loss"} <= set(reports[0])


def test_training_never_reads_validation_labels():
    train, val = _windows()
    scrambled = dataclasses.replace(val, y=torch.zeros_like(val.y))
    a_model, b_model = _model(), _model()
    a = fit(a_model, train, val, _cfg(), device="cpu")
    b = fit(b_model, train, scrambled, _cfg(), device="cpu")
    assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]
    assert _same_state(a_model.state_dict(), b_model.state_dict())


def test_empty_split_is_a_data_error():
    train, val = _windows()
    empty = dataclasses.replace(val, ends=val.ends[:0], y=val.y[:0])
    with pytest.raises(DataError, match="val split has no windows"):
        fit(_model(), train, empty, _cfg(), device="cpu")


def test_max_eval_windows_caps_validation():
    train, val = _windows()
    result = fit(_model(), train, val, _cfg(epochs=1, max_eval_windows=50), device="cpu")
    assert sum(result.best_val["support"]) == 50


# ------------------------------------------------------------------ pieces


def test_class_weights_are_inverse_frequency_with_mean_one():
    y = torch.tensor([0] * 10 + [1] * 30 + [2] * 20)
    weights = class_weights(y)
    expected = torch.tensor([1 / 10, 1 / 30, 1 / 20])
    assert torch.allclose(weights, expected * 3 / expected.sum())
    assert math.isclose(float(weights.mean()), 1.0, rel_tol=1e-6)


def test_class_weights_give_an_absent_class_zero():
    weights = class_weights(torch.tensor([0, 0, 2, 2]))
    assert weights.tolist() == [1.0, 0.0, 1.0]


def test_focal_loss_with_gamma_zero_is_cross_entropy():
    logits, y = torch.randn(16, 3), torch.randint(0, 3, (16,))
    weight = torch.tensor([0.5, 2.0, 1.0])
    assert torch.allclose(focal_loss(logits, y, gamma=0.0), nn.functional.cross_entropy(logits, y))
    assert torch.allclose(focal_loss(logits, y, gamma=0.0, weight=weight),
                          nn.functional.cross_entropy(logits, y, weight=weight))
    assert focal_loss(logits, y, gamma=2.0) < focal_loss(logits, y, gamma=0.0)


def test_lr_factor_warms_up_linearly_then_decays_by_cosine():
    shape = [lr_factor(s, warmup=4, total=12, cosine=True) for s in range(12)]
    assert shape[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a > b for a, b in zip(shape[4:], shape[5:]))
    assert [lr_factor(s, warmup=0, total=10, cosine=False) for s in (0, 9)] == [1.0, 1.0]


def test_epoch_batches_are_seeded_capped_and_without_repeats():
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    assert epoch_steps(1000, 64, None) == 15 and epoch_steps(1000, 64, 4) == 4
    assert epoch_steps(10, 64, None) == 1
    a = epoch_batches(1000, 64, 4, gen(), torch.device("cpu"))
    b = epoch_batches(1000, 64, 4, gen(), torch.device("cpu"))
    assert len(a) == 4 and all(len(i) == 64 for i in a)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert torch.cat(a).unique().numel() == 256


def test_evaluate_and_predict_agree():
    train, val = _windows()
    model = _model()
    metrics, y_true, y_pred, probs = evaluate(model, val, device="cpu", batch_size=50)
    pred, probs2 = predict(model, val, device="cpu", batch_size=7)
    assert y_true.shape == y_pred.shape == (len(val),) and probs.shape == (len(val), 3)
    assert (pred == y_pred).all() and abs(probs - probs2).max() < 1e-5
    assert abs(probs.sum(axis=1) - 1).max() < 1e-5
    assert 0.0 <= metrics["macro_f1"] <= 1.0 and isinstance(metrics["macro_f1"], float)
    assert model.training  # evaluation restores the mode it found


def test_subsample_keeps_evenly_spaced_windows():
    _, val = _windows()
    small = subsample(val, 10)
    assert len(small) == 10 and small.ends[0] == val.ends[0] and small.ends[-1] == val.ends[-1]
    assert subsample(val, None) is val


# ------------------------------------------------------------------ backend decisions


def test_device_setup_on_cpu_is_plain_fp32_eager():
    torch.backends.cudnn.benchmark = False
    backend = device_setup(model_spec("deeplob").backend, "cpu", planned_steps=10**6)
    assert backend.autocast_dtype is None and backend.compile_mode is None
    assert not (backend.channels_last or backend.cudnn_benchmark or backend.tf32)
    assert torch.backends.cudnn.benchmark is False
    assert "not on CUDA" in " ".join(backend.notes)


def test_device_setup_honours_explicit_precision_and_compile_on_cpu():
    backend = device_setup(None, "cpu", precision="bf16", compile="max-autotune")
    assert backend.autocast_dtype is torch.bfloat16 and backend.compile_mode == "max-autotune"


@pytest.fixture
def cuda_switches(monkeypatch):
    """Restore the process-wide switches a mocked CUDA setup flips."""
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", torch.backends.cudnn.allow_tf32)
    precision = torch.get_float32_matmul_precision()
    yield
    torch.set_float32_matmul_precision(precision)


def test_device_setup_on_cuda_follows_the_model(cuda_switches):
    conv = device_setup(model_spec("deeplob").backend, "cuda")
    assert conv.autocast_dtype is torch.bfloat16 and conv.channels_last and conv.cudnn_benchmark
    assert conv.tf32 and torch.backends.cudnn.benchmark is True
    assert torch.get_float32_matmul_precision() == "high"
    rnn = device_setup(model_spec("lstm").backend, "cuda")
    assert rnn.autocast_dtype is None and not rnn.channels_last and not rnn.cudnn_benchmark
    assert torch.backends.cudnn.benchmark is False  # set both ways: no leak from the last trial
    forced = device_setup(model_spec("deeplob").backend, "cuda", precision="fp32")
    assert forced.autocast_dtype is None


def test_compile_auto_needs_a_flagged_model_and_a_long_run(cuda_switches):
    flagged = SpecBackend(compile=True)
    short = device_setup(flagged, "cuda", planned_steps=COMPILE_MIN_STEPS - 1)
    long = device_setup(flagged, "cuda", planned_steps=COMPILE_MIN_STEPS)
    unflagged = device_setup(SpecBackend(), "cuda", planned_steps=10**6)
    off = device_setup(flagged, "cuda", compile="off", planned_steps=10**6)
    assert (short.compile_mode, long.compile_mode) == (None, "default")
    assert unflagged.compile_mode is None and off.compile_mode is None


def test_cuda_graphs_auto_follows_the_model_and_yields_to_compile(cuda_switches):
    flagged = SpecBackend(cuda_graphs=True)
    assert device_setup(flagged, "cuda").cuda_graphs
    assert not device_setup(SpecBackend(), "cuda").cuda_graphs
    assert device_setup(SpecBackend(), "cuda", cuda_graphs="on").cuda_graphs
    assert not device_setup(flagged, "cuda", cuda_graphs="off").cuda_graphs
    for graphs in ("auto", "on"):
        compiled = device_setup(flagged, "cuda", compile="default", cuda_graphs=graphs)
        assert compiled.compile_mode == "default" and not compiled.cuda_graphs
        assert "compiled" in " ".join(compiled.notes)
    on_cpu = device_setup(flagged, "cpu", cuda_graphs="on")
    assert not on_cpu.cuda_graphs and "not on CUDA" in " ".join(on_cpu.notes)
    assert "cuda_graphs" in device_setup(flagged, "cuda").describe()


def test_graphed_step_is_only_made_for_graph_backends():
    train, _ = _windows()
    cfg = _cfg()
    model = create_model("lstm_tiny", train.n_features, train.window)
    plain_backend = device_setup(model_spec("lstm").backend, "cpu")
    step = make_train_step(model, cfg.step, plain_backend, None, steps_per_epoch=4, epochs=cfg.epochs)
    assert isinstance(step, TrainStep) and not isinstance(step, GraphedStep)
    graph_backend = dataclasses.replace(plain_backend, cuda_graphs=True)
    wrapped = make_train_step(model, cfg.step, graph_backend, None, steps_per_epoch=4, epochs=cfg.epochs)
    assert isinstance(wrapped, GraphedStep) and isinstance(wrapped.step, TrainStep)
    assert wrapped.backend is graph_backend
    graphed = GraphedStep(step)
    # the wrapper forwards what fit and the checkpoint read from a step
    assert graphed.optimizer is step.optimizer and graphed.scheduler is step.scheduler
    assert graphed.backend is step.backend and graphed.loss_fn is step.loss_fn
    with pytest.raises(AttributeError):
        graphed.no_such_attribute


def test_graphed_step_runs_its_warm_up_steps_eagerly_like_the_plain_step():
    """Before capture (which needs CUDA), a GraphedStep is the plain step: same losses, same
    weights, same learning rates."""
    train, _ = _windows()
    cfg = _cfg()
    losses, weights = [], []
    for wrap in (False, True):
        torch.manual_seed(0)
        model = create_model("lstm_tiny", train.n_features, train.window)
        backend = device_setup(None, "cpu")
        step = make_train_step(model, cfg.step, backend, None, steps_per_epoch=4, epochs=cfg.epochs)
        step = GraphedStep(step) if wrap else step
        idx = torch.arange(16)
        losses.append([float(step(*train.batch(idx + 16 * i))) for i in range(GRAPH_WARMUP_STEPS)])
        weights.append([p.detach().clone() for p in model.parameters()])
    assert losses[0] == losses[1]
    assert all(torch.equal(a, b) for a, b in zip(*weights))


def test_restore_turns_a_graphed_runs_tensor_learning_rate_back_into_a_float(tmp_path):
    train, val = _windows()
    cfg = _cfg(epochs=1)
    model = create_model("lstm_tiny", train.n_features, train.window)
    fit(model, train, val, cfg, device="cpu", checkpoint_dir=tmp_path)
    payload = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    payload["optimizer"]["param_groups"][0]["lr"] = torch.tensor(5e-4)
    torch.save(payload, tmp_path / "checkpoint.pt")
    resumed = fit(create_model("lstm_tiny", train.n_features, train.window), train, val,
                  dataclasses.replace(cfg, epochs=2), device="cpu", resume=tmp_path)
    assert resumed.status == "completed" and isinstance(resumed.history[-1]["lr"], float)


def test_evaluation_leaves_a_model_that_is_already_on_the_device_in_place(monkeypatch):
    """``.to()`` re-packs an RNN's weights (new addresses, which a captured CUDA graph would no
    longer train), so evaluation moves a model only when it is elsewhere."""
    from lobsearch.inference import on_device

    _, val = _windows()
    model = create_model("lstm_tiny", val.n_features, val.window)
    monkeypatch.setattr(model, "to", lambda *a, **k: pytest.fail("moved a model already there"))
    assert on_device(model, torch.device("cpu")) is model
    evaluate(model, val, device="cpu")
    monkeypatch.undo()
    moved = on_device(model, torch.device("meta"))
    assert all(p.device.type == "meta" for p in moved.parameters())


def test_device_setup_sets_cpu_threads(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    device_setup(None, "cpu", num_threads=1)
    assert calls == [1]


def test_evaluate_survives_nan_outputs():
    _, val = _windows()
    metrics, _, _, probs = evaluate(NaNModel(), val, device="cpu")
    assert "log_loss" not in metrics and "macro_f1" in metrics

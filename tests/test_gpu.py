"""GPU sharing arithmetic, out-of-memory handling and the CUDA-graph step.

The packing rule and the error paths run on a CPU; the tests marked ``gpu`` need CUDA (they run
on the device machine: ``pytest -m gpu tests/test_gpu.py``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from lobsearch.gpu import (
    CONTEXT_BYTES,
    MAX_TRIALS_PER_GPU,
    MEMORY_HEADROOM,
    MEMORY_SAFETY,
    Packing,
    StepProfile,
    heaviest,
    memory_metrics,
    out_of_memory_message,
    release_memory,
    trials_per_gpu,
)

GIB = 2**30
H100 = 80 * GIB
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _profile(mem_gib: float = 0.5, busy: float = 0.15, rate: float = 1e5, label: str = "") -> StepProfile:
    return StepProfile(int(mem_gib * GIB), busy, rate, label)


def test_an_idle_small_trial_is_packed_until_the_gpu_is_busy():
    packing = trials_per_gpu(_profile(busy=0.15), device_memory_bytes=H100, cpus_per_gpu=16, cpus_per_trial=1)
    assert packing.trials == math.ceil(1 / 0.15) == 7 == packing.by_throughput
    assert packing.gpus_per_trial == 0.1428 and 7 * packing.gpus_per_trial <= 1  # Ray keeps 1e-4
    assert "throughput" in packing.reason and "15%" in packing.reason


def test_memory_bounds_the_packing_of_big_trials():
    profile = _profile(mem_gib=20, busy=0.05)
    packing = trials_per_gpu(profile, device_memory_bytes=H100, cpus_per_gpu=16, cpus_per_trial=1)
    per_trial = 20 * GIB * MEMORY_SAFETY + CONTEXT_BYTES
    assert packing.by_memory == math.floor(MEMORY_HEADROOM * H100 / per_trial) == 2
    assert packing.trials == 2 and "memory" in packing.reason


def test_cpus_bound_the_packing_and_a_trial_always_gets_one_gpu_at_least():
    cpu_bound = trials_per_gpu(_profile(busy=0.01), device_memory_bytes=H100, cpus_per_gpu=8, cpus_per_trial=2)
    assert cpu_bound.trials == cpu_bound.by_cpus == 4 and "CPUs" in cpu_bound.reason
    huge = trials_per_gpu(_profile(mem_gib=100), device_memory_bytes=H100, cpus_per_gpu=8, cpus_per_trial=1)
    assert huge.by_memory == 0 and huge.trials == 1 and huge.gpus_per_trial == 1.0
    busy = trials_per_gpu(_profile(busy=1.0), device_memory_bytes=H100, cpus_per_gpu=8, cpus_per_trial=1)
    assert busy.trials == 1


def test_packing_never_exceeds_rays_sixteenth_of_a_gpu():
    packing = trials_per_gpu(_profile(mem_gib=0.01, busy=0.0), device_memory_bytes=H100,
                             cpus_per_gpu=64, cpus_per_trial=1)
    assert packing.trials == MAX_TRIALS_PER_GPU and packing.gpus_per_trial == 0.0625


def test_more_memory_or_a_busier_step_never_packs_more_trials():
    base = dict(device_memory_bytes=H100, cpus_per_gpu=16, cpus_per_trial=1)
    counts = [trials_per_gpu(_profile(mem_gib=m, busy=0.1), **base).trials for m in (0.5, 4, 12, 30)]
    assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1]
    counts = [trials_per_gpu(_profile(busy=b), **base).trials for b in (0.05, 0.2, 0.5, 0.9)]
    assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1]


def test_the_heaviest_profile_takes_the_worst_of_each():
    worst = heaviest([_profile(1, 0.1, 5e4, "a"), _profile(3, 0.05, 9e4, "b")])
    assert worst.peak_memory_bytes == 3 * GIB and worst.busy == 0.1 and worst.samples_per_s == 5e4
    assert worst.label == "a, b"


def test_memory_helpers_do_nothing_off_cuda():
    assert memory_metrics("cpu") == {}
    release_memory("cpu")


def test_out_of_memory_message_says_what_to_change():
    error = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")
    message = out_of_memory_message(error, "cpu", gpus_per_trial=0.125, batch_size=1024)
    assert "out of GPU memory" in message and "gpus_per_trial 0.125" in message
    assert "batch_size 1024" in message and "train.batch_size" in message
    assert "Tried to allocate 2.00 GiB" in message and "more detail" not in message
    assert "a whole GPU" in out_of_memory_message(error, "cpu", gpus_per_trial=None, batch_size=8)


class _Context:
    def get_assigned_resources(self) -> dict[str, float]:
        return {"CPU": 1.0, "GPU": 0.25}


def test_a_trial_out_of_gpu_memory_fails_alone_with_a_clear_message(monkeypatch: pytest.MonkeyPatch):
    import ray

    from lobsearch import trial
    from lobsearch.space import load_space

    def out_of_memory(*args: Any) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")

    monkeypatch.setattr(trial, "_train", out_of_memory)
    monkeypatch.setattr(trial, "_threads_from_resources", lambda asked: None)
    monkeypatch.setattr(ray, "get_runtime_context", lambda: _Context())
    space = load_space(Path(__file__).parents[1] / "search_spaces" / "smoke.yaml")
    config = {"model.name": space.families[0]}

    class AnyKey(dict):
        def __missing__(self, key: str) -> None:
            return None

    with pytest.raises(trial.TrialFailed) as caught:
        trial.run_trial(config, data=AnyKey(), space=space)
    text = str(caught.value)
    assert "out of GPU memory" in text and "gpus_per_trial 0.25" in text
    assert "Tried to allocate 8.00 GiB" in text


def test_gpus_per_trial_auto_is_zero_without_gpus_and_explicit_values_pass(monkeypatch: pytest.MonkeyPatch):
    import ray

    from lobsearch.search import Search
    from lobsearch.space import load_space

    space = load_space(Path(__file__).parents[1] / "search_spaces" / "smoke.yaml")
    assert space.spec.search.gpus_per_trial == "auto"
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": {"CPU": 2.0}}])
    search = Search(space=space, export=None, name="x", storage="/tmp", quiet=True)
    assert search._gpus_per_trial({}) == 0.0
    fixed = Search(space=_with_gpus(space, 0.5), export=None, name="x", storage="/tmp", quiet=True)
    assert fixed._gpus_per_trial({}) == 0.5


def test_gpus_per_trial_auto_packs_from_the_probe(monkeypatch: pytest.MonkeyPatch):
    """With a GPU node, auto asks the probe task and packs by the heaviest sampled config."""
    import ray

    from lobsearch import search as search_module
    from lobsearch.search import PROBE_CONFIGS, Search
    from lobsearch.space import load_space

    space = load_space(Path(__file__).parents[1] / "search_spaces" / "smoke.yaml")
    nodes = [{"Alive": True, "Resources": {"CPU": 16.0, "GPU": 1.0}}]
    monkeypatch.setattr(ray, "nodes", lambda: nodes)
    seen: dict[str, Any] = {}

    class Probe:
        def remote(self, runs: list, prepared: list) -> str:
            seen["runs"], seen["prepared"] = runs, prepared
            return "ref"

    profiles = [_profile(0.4, 0.12, 2e5, "a"), _profile(1.0, 0.2, 1e5, "b")]
    monkeypatch.setattr(search_module, "_probe_remote", lambda: Probe())
    monkeypatch.setattr(ray, "get", lambda ref, timeout=None: (profiles, H100, ["mlp: boom"]) if ref == "ref" else None)

    class AnyKey(dict):
        def __missing__(self, key: str) -> str:
            return f"prepared-{key}"

    search = Search(space=space, export=None, name="x", storage="/tmp", quiet=True)
    assert search._gpus_per_trial(AnyKey()) == 0.2  # busy 20 % -> 5 trials per GPU
    assert all(n * Packing(n, n, n, n, "").gpus_per_trial <= 1 for n in range(1, 17))
    assert len(seen["runs"]) == PROBE_CONFIGS and all(p.startswith("prepared-") for p in seen["prepared"])


def test_gpus_per_trial_auto_falls_back_to_a_whole_gpu_when_the_probe_fails(monkeypatch: pytest.MonkeyPatch):
    import ray

    from lobsearch import search as search_module
    from lobsearch.search import Search
    from lobsearch.space import load_space

    space = load_space(Path(__file__).parents[1] / "search_spaces" / "smoke.yaml")
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": {"CPU": 8.0, "GPU": 1.0}}])

    class Probe:
        def remote(self, runs: list, prepared: list) -> str:
            return "ref"

    class AnyKey(dict):
        def __missing__(self, key: str) -> str:
            return key

    monkeypatch.setattr(search_module, "_probe_remote", lambda: Probe())
    monkeypatch.setattr(ray, "cancel", lambda ref, force=False: None)
    search = Search(space=space, export=None, name="x", storage="/tmp", quiet=True)

    def timeout(ref: str, timeout: float | None = None) -> None:
        raise ray.exceptions.GetTimeoutError("took too long")

    monkeypatch.setattr(ray, "get", timeout)
    assert search._gpus_per_trial(AnyKey()) == 1.0
    monkeypatch.setattr(ray, "get", lambda ref, timeout=None: ([], H100, ["lstm_tiny: OutOfMemoryError"]))
    assert search._gpus_per_trial(AnyKey()) == 1.0


def test_library_allocation_failures_count_as_out_of_memory():
    from lobsearch.gpu import is_out_of_memory

    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))


def _with_gpus(space: Any, gpus: float) -> Any:
    from lobsearch.space import SearchSpace, SpaceFile

    raw = space.spec.model_dump(mode="python")
    raw["search"]["gpus_per_trial"] = gpus
    return SearchSpace(name=space.name, source=space.source, spec=SpaceFile.model_validate(raw))


def test_gpus_per_trial_accepts_auto_or_a_share_and_nothing_else(capsys: pytest.CaptureFixture[str]):
    from lobsearch.tune import build_parser

    parser = build_parser()
    assert parser.parse_args(["s.yaml", "--gpus-per-trial", "auto"]).gpus_per_trial == "auto"
    assert parser.parse_args(["s.yaml", "--gpus-per-trial", "0.125"]).gpus_per_trial == 0.125
    with pytest.raises(SystemExit):
        parser.parse_args(["s.yaml", "--gpus-per-trial", "half"])
    assert "'auto'" in capsys.readouterr().err


# ------------------------------------------------------------------ on a GPU


def _windows(device: str) -> Any:
    from lobsearch.data.windows import WindowSet

    g = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 98, generator=g)
    ends = torch.arange(99, 4000)
    return WindowSet(x, ends, torch.randint(0, 3, (len(ends),), generator=g), 100).to(device)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("name", ["lstm", "deeplob", "transformer_tiny", "mlp_tiny"])
def test_a_graphed_step_trains_like_the_eager_step(name: str):
    """Same model, same batches: the CUDA-graph step's losses follow the eager step's (up to
    kernel-choice rounding), and it really replays a graph after the warm-up."""
    from lobsearch.backend import device_setup, place_model
    from lobsearch.graphs import GraphedStep
    from lobsearch.models import create_model, model_spec
    from lobsearch.steps import StepSettings, make_train_step

    windows = _windows("cuda")
    losses = {}
    for graphs in ("off", "on"):
        backend = device_setup(model_spec(name).backend, "cuda", cuda_graphs=graphs, compile="off")
        torch.manual_seed(0)
        model = place_model(create_model(name, 98, 100, **({"dropout": 0.0} if "lstm" in name else {})), backend)
        if "transformer" in name or "mlp" in name:
            model.eval()  # no dropout: the two runs must see the same function
        step = make_train_step(model, StepSettings(learning_rate=1e-3), backend, None,
                               steps_per_epoch=100, epochs=10)
        g = torch.Generator().manual_seed(1)
        out = []
        for _ in range(12):
            idx = torch.randint(0, len(windows), (128,), generator=g).cuda()
            out.append(float(step(*windows.batch(idx))))
        losses[graphs] = out
        if graphs == "on":
            assert isinstance(step, GraphedStep) and step.graph is not None, step.note
    assert all(math.isfinite(v) for v in losses["on"])
    assert losses["on"] == pytest.approx(losses["off"], rel=0.05, abs=0.02)


@pytest.mark.gpu
@needs_cuda
def test_fit_on_cuda_with_graphs_reports_memory_and_learns():
    from lobsearch.backend import device_setup
    from lobsearch.loop import FitSettings, fit
    from lobsearch.models import create_model, model_spec

    windows = _windows("cuda")
    cfg = FitSettings(epochs=2, batch_size=256, steps_per_epoch=10, patience=None)
    backend = device_setup(model_spec("lstm").backend, "cuda")
    result = fit(create_model("lstm", 98, 100), windows, windows, cfg, device="cuda", backend=backend)
    assert result.status == "completed" and result.backend.cuda_graphs
    assert memory_metrics("cuda")["gpu_mem_mb"] > 0


@pytest.mark.gpu
@needs_cuda
def test_a_graphed_lstm_keeps_training_across_epochs_and_evaluations():
    """Evaluation between epochs must not move the weights the graph trains: with graphs on and
    off, three epochs of the same LSTM end close, and the weights change in every epoch."""
    from lobsearch.backend import device_setup
    from lobsearch.loop import FitSettings, fit
    from lobsearch.models import create_model, model_spec

    windows = _windows("cuda")
    results, weights = {}, {}
    for graphs in ("off", "on"):
        cfg = FitSettings(epochs=3, batch_size=128, steps_per_epoch=20, patience=None)
        backend = device_setup(model_spec("lstm").backend, "cuda", cuda_graphs=graphs)
        torch.manual_seed(0)
        model = create_model("lstm", 98, 100, dropout=0.0)
        seen = []
        results[graphs] = fit(model, windows, windows, cfg, device="cuda", backend=backend,
                              on_epoch=lambda e: seen.append(next(model.parameters()).detach().clone()))
        assert all(not torch.equal(a, b) for a, b in zip(seen, seen[1:])), graphs
        weights[graphs] = seen[-1]
    losses = {g: [h["train_loss"] for h in r.history] for g, r in results.items()}
    assert losses["on"] == pytest.approx(losses["off"], rel=0.05)
    assert torch.allclose(weights["on"], weights["off"], atol=5e-2)


@pytest.mark.gpu
@needs_cuda
def test_probe_step_measures_memory_busy_time_and_throughput(tmp_path: Path):
    from lobsearch.config import RunConfig
    from lobsearch.data.pipeline import prepare
    from lobsearch.gpu import probe_step
    from lobsearch.synth import write_synthetic_export

    export = write_synthetic_export(tmp_path / "export", days=4, rows=2000, seed=0)
    run = RunConfig.model_validate({"model": {"name": "lstm"}, "train": {"batch_size": 256}})
    profile = probe_step(run, prepare(export, run.data.prep(), engine="local"), steps=10)
    assert profile.peak_memory_bytes > 0 and 0 < profile.busy <= 1 and profile.samples_per_s > 0

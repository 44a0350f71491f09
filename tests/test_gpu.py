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


def test_memory_helpers_do_nothing_off_cuda(monkeypatch: pytest.MonkeyPatch):
    touched: list[str] = []

    def recorder(name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> int:
            touched.append(name)
            return 2**20

        return call

    for name in ("empty_cache", "reset_peak_memory_stats", "max_memory_reserved", "max_memory_allocated"):
        monkeypatch.setattr(torch.cuda, name, recorder(name))
    assert memory_metrics("cpu") == {}
    release_memory("cpu")
    release_memory(torch.device("cpu"))
    assert touched == [], "a CPU device never reaches torch.cuda"
    # the control: a CUDA device does reach it (the recorders stand in for the GPU)
    assert memory_metrics("cuda") == {"gpu_mem_mb": 1.0, "gpu_mem_allocated_mb": 1.0}
    release_memory("cuda")
    assert touched == ["max_memory_reserved", "max_memory_allocated", "empty_cache", "reset_peak_memory_stats"]


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


def _decide(setting: Any, nodes: list[dict[str, float]], outcome: Any = None, **options: Any) -> tuple[float, list[str], int]:
    """``decide_gpus_per_trial`` with a probe that returns ``outcome``: (GPUs, lines said, probes run)."""
    from lobsearch.gpu import decide_gpus_per_trial

    said: list[str] = []
    probes: list[int] = []

    def probe() -> Any:
        probes.append(1)
        return outcome

    gpus = decide_gpus_per_trial(setting, nodes, probe=probe, say=said.append,
                                 **{"cpus_per_trial": 1.0, "autoscaling": False, **options})
    return gpus, said, len(probes)


def test_gpus_per_trial_auto_is_zero_without_gpus_and_explicit_values_pass():
    assert _decide("auto", [{"CPU": 2.0}]) == (0.0, ["gpus_per_trial auto: no GPU in the cluster, trials run on CPUs"], 0)
    gpus, said, probes = _decide("auto", [{"CPU": 2.0}], autoscaling=True)
    assert gpus == 0.0 and "--gpus-per-trial" in said[0] and probes == 0
    assert _decide(0.5, [{"CPU": 16.0, "GPU": 1.0}]) == (0.5, [], 0)
    assert _decide(2, []) == (2.0, [], 0)


def test_gpus_per_trial_auto_packs_from_the_probe():
    """With a GPU node, auto runs the probe once and packs by the heaviest sampled config."""
    from lobsearch.gpu import ProbeOutcome

    profiles = (_profile(0.4, 0.12, 2e5, "a"), _profile(1.0, 0.2, 1e5, "b"))
    outcome = ProbeOutcome(profiles, H100, ("mlp: boom",))
    gpus, said, probes = _decide("auto", [{"CPU": 16.0, "GPU": 1.0}, {"CPU": 4.0}], outcome)
    assert gpus == 0.2 and probes == 1  # busy 20 % -> 5 trials per GPU
    assert any("mlp: boom" in line for line in said) and said[-1].startswith("gpus_per_trial auto -> 0.2")
    assert all(n * Packing(n, n, n, n, "").gpus_per_trial <= 1 for n in range(1, 17))
    few_cpus, _, _ = _decide("auto", [{"CPU": 2.0, "GPU": 1.0}], outcome)
    assert few_cpus == 0.5  # the node's 2 CPUs per GPU hold only 2 one-CPU trials


def test_gpus_per_trial_auto_falls_back_to_a_whole_gpu_when_the_probe_fails():
    from lobsearch.gpu import ProbeOutcome

    node = [{"CPU": 8.0, "GPU": 1.0}]
    gpus, said, _ = _decide("auto", node, ProbeOutcome(error="GetTimeoutError: took too long"))
    assert gpus == 1.0 and "took too long" in said[-1]
    gpus, said, _ = _decide("auto", node, ProbeOutcome((), H100, ("lstm_tiny: OutOfMemoryError",)))
    assert gpus == 1.0 and "no sampled configuration could be measured" in said[-1]


def test_library_allocation_failures_count_as_out_of_memory():
    from lobsearch.gpu import is_out_of_memory

    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))

"""GPU sharing: how many trials one GPU holds, from what a trial's step measures on it.

Small LOB models leave most of a GPU idle: a step of a 64-wide LSTM is a few hundred short
kernels, and the GPU waits between them for the host. Several trials on one GPU (Ray's
fractional GPUs) fill those gaps. How many is a measurement, not a constant:

- *throughput*: a trial alone keeps the GPU busy a fraction ``busy`` of its wall time (kernel
  time over step time); about ``ceil(1 / busy)`` trials fill it, and more only queue;
- *memory*: each trial holds its peak reserved memory plus a CUDA context; together they must
  fit in ``MEMORY_HEADROOM`` of the device;
- *CPUs*: every trial needs its own CPUs on the GPU's node.

``probe_step`` measures a configuration's step on a GPU (``search.gpus_per_trial: auto`` runs it
on a few sampled configurations before the search starts, in a Ray task holding one GPU),
``trials_per_gpu`` turns the heaviest measurement into a packing, and
``decide_gpus_per_trial`` makes the whole decision from plain values (no Ray here).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MEMORY_HEADROOM = 0.9
"""Share of a GPU's memory that packed trials may plan to use together."""

CONTEXT_BYTES = 600 * 2**20
"""Device memory of one process's CUDA context and library handles, outside torch's allocator
(about 500 MiB with cuDNN and cuBLAS loaded on an H100; rounded up)."""

MEMORY_SAFETY = 1.25
"""Peak memory measured in a short probe, times this: later epochs, evaluation and allocator
fragmentation take more than the probe saw."""

MAX_TRIALS_PER_GPU = 16
"""Ray packs at most this many trials on one GPU (1/16 GPU each)."""

PROBE_CONFIGS = 3
"""Sampled configurations ``gpus_per_trial: auto`` measures; the heaviest decides."""


@dataclass(frozen=True)
class StepProfile:
    """One training configuration's step on a GPU, measured alone.

    peak_memory_bytes: torch's peak reserved device memory of the run (model, optimizer state,
    the split's rows, activations), without the CUDA context; busy: kernel time over wall time
    of a step, in (0, 1]; samples_per_s: training windows per second; label: what was measured.
    """

    peak_memory_bytes: int
    busy: float
    samples_per_s: float
    label: str = ""


@dataclass(frozen=True)
class Packing:
    """How many trials share one GPU, and why: ``gpus_per_trial`` is what Ray is asked for."""

    trials: int
    by_throughput: int
    by_memory: int
    by_cpus: int
    reason: str

    @property
    def gpus_per_trial(self) -> float:
        """1 / trials, rounded down to Ray's 1e-4 resolution so ``trials`` of them fit in one GPU."""
        return math.floor(10_000 / self.trials) / 10_000


def trials_per_gpu(
    profile: StepProfile, *, device_memory_bytes: int, cpus_per_gpu: float, cpus_per_trial: float
) -> Packing:
    """Trials per GPU: the fewest of what throughput, memory and CPUs allow, at least 1.

    >>> p = StepProfile(peak_memory_bytes=400 * 2**20, busy=0.15, samples_per_s=1e5)
    >>> trials_per_gpu(p, device_memory_bytes=80 * 2**30, cpus_per_gpu=16, cpus_per_trial=1).trials
    7
    """
    busy = min(1.0, max(profile.busy, 1e-3))
    by_throughput = math.ceil(1.0 / busy - 1e-9)
    per_trial = profile.peak_memory_bytes * MEMORY_SAFETY + CONTEXT_BYTES
    by_memory = math.floor(MEMORY_HEADROOM * device_memory_bytes / per_trial)
    by_cpus = math.floor(cpus_per_gpu / cpus_per_trial + 1e-9)
    trials = max(1, min(by_throughput, by_memory, by_cpus, MAX_TRIALS_PER_GPU))
    limits = {"throughput": by_throughput, "memory": by_memory, "CPUs": by_cpus,
              "Ray's 1/16": MAX_TRIALS_PER_GPU}
    bound = min(limits, key=limits.get)
    reason = (
        f"{trials} trial(s) per GPU, set by {bound}: one trial keeps the GPU {busy:.0%} busy "
        f"({by_throughput} fill it), needs {_gib(per_trial)} with its CUDA context "
        f"({by_memory} fit in {MEMORY_HEADROOM:.0%} of {_gib(device_memory_bytes)}), and "
        f"{cpus_per_trial:g} CPU(s) ({by_cpus} fit in the node's {cpus_per_gpu:g} per GPU)"
    )
    return Packing(trials, by_throughput, by_memory, by_cpus, reason)


def heaviest(profiles: list[StepProfile]) -> StepProfile:
    """The profile a packing must survive: the most memory and the busiest step of any."""
    return StepProfile(
        peak_memory_bytes=max(p.peak_memory_bytes for p in profiles),
        busy=max(p.busy for p in profiles),
        samples_per_s=min(p.samples_per_s for p in profiles),
        label=", ".join(p.label for p in profiles),
    )


@dataclass(frozen=True)
class ProbeOutcome:
    """What the probe of a few sampled configurations on one GPU found.

    profiles: one per configuration measured; device_memory_bytes: the GPU's memory; failures:
    one line per configuration that could not be measured; error: why the probe itself did not
    finish (a timeout, its worker died), None when it did.
    """

    profiles: tuple[StepProfile, ...] = ()
    device_memory_bytes: int = 0
    failures: tuple[str, ...] = ()
    error: str | None = None


def decide_gpus_per_trial(
    setting: float | str,
    nodes: list[dict[str, float]],
    *,
    cpus_per_trial: float,
    autoscaling: bool,
    probe: Callable[[], ProbeOutcome],
    say: Callable[[str], None],
) -> float:
    """The GPUs each trial asks Ray for: ``setting`` itself when it is a number; for ``auto``, 0
    when no node in ``nodes`` (the alive nodes' resources) has a GPU, else the packing that
    ``probe()`` measures on one GPU (``trials_per_gpu`` of the heaviest profile, on the node with
    the most GPUs), and 1 when the probe fails or measures nothing. Says each decision.
    """
    if setting != "auto":
        return float(setting)
    gpu_nodes = [n for n in nodes if n.get("GPU")]
    if not gpu_nodes:
        hint = (" (no GPU node is up yet: if the autoscaler adds GPU nodes, give "
                "--gpus-per-trial, or keep one GPU node up with min_workers)") if autoscaling else ""
        say(f"gpus_per_trial auto: no GPU in the cluster, trials run on CPUs{hint}")
        return 0.0
    say(f"gpus_per_trial auto: measuring {PROBE_CONFIGS} sampled configurations on one GPU")
    found = probe()
    if found.error is not None:
        say(f"gpus_per_trial auto -> 1: the probe did not finish ({found.error}); one trial per GPU")
        return 1.0
    for failure in found.failures:
        say(f"  probe skipped a configuration: {failure}")
    if not found.profiles:
        say("gpus_per_trial auto -> 1: no sampled configuration could be measured; one trial per GPU")
        return 1.0
    node = max(gpu_nodes, key=lambda r: r["GPU"])
    packing = trials_per_gpu(
        heaviest(list(found.profiles)), device_memory_bytes=found.device_memory_bytes,
        cpus_per_gpu=node.get("CPU", 1) / node["GPU"], cpus_per_trial=cpus_per_trial,
    )
    for profile in found.profiles:
        say(f"  {profile.label}: {profile.samples_per_s:,.0f} samples/s alone, GPU busy "
            f"{profile.busy:.0%}, peak {profile.peak_memory_bytes / 2**20:,.0f} MiB")
    say(f"gpus_per_trial auto -> {packing.gpus_per_trial:g}: {packing.reason}")
    return packing.gpus_per_trial


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


# --------------------------------------------------------------------------- measuring on a GPU


def memory_metrics(device: Any) -> dict[str, float]:
    """Peak device memory of this process so far, in MiB (empty off CUDA): reserved (what the
    process holds from the GPU) and allocated (what its tensors used)."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return {}
    return {
        "gpu_mem_mb": torch.cuda.max_memory_reserved(device) / 2**20,
        "gpu_mem_allocated_mb": torch.cuda.max_memory_allocated(device) / 2**20,
    }


def release_memory(device: Any) -> None:
    """Give cached device memory back, so a reused trial process does not hold the last trial's
    peak while another trial on the same GPU needs it; reset the peak counters."""
    import gc

    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)


OUT_OF_MEMORY_MARKS = ("out of memory", "CUDNN_STATUS_ALLOC_FAILED", "CUBLAS_STATUS_ALLOC_FAILED")
"""How a failed GPU allocation reads when a library, not torch's allocator, hits it."""


def is_out_of_memory(error: BaseException) -> bool:
    """torch's OutOfMemoryError, or a cuDNN / cuBLAS allocation failure raised as RuntimeError."""
    import torch

    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and any(mark in str(error) for mark in OUT_OF_MEMORY_MARKS)


def out_of_memory_message(error: BaseException, device: Any, *, gpus_per_trial: float | None,
                          batch_size: int) -> str:
    """What a trial that ran out of GPU memory says: where, how much, and what to change."""
    import torch

    device = torch.device(device)
    share = f"gpus_per_trial {gpus_per_trial:g}" if gpus_per_trial else "a whole GPU"
    try:
        free, total = torch.cuda.mem_get_info(device)
        peak = torch.cuda.max_memory_reserved(device)
        where = f"this trial held {_gib(peak)} at its peak; {_gib(free)} of {_gib(total)} free now"
    except Exception:  # the device may be unusable after the error
        where = "device memory figures unavailable"
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return (
        f"out of GPU memory on {device} ({share}, batch_size {batch_size}): {where}. Lower "
        "train.batch_size or the model's size, or give each trial more of a GPU "
        f"(search.gpus_per_trial). torch said: {first}"
    )


def probe_step(run: Any, prepared: Any, *, device: Any = "cuda", steps: int = 30) -> StepProfile:
    """Measure one run config's training step alone on ``device`` (a GPU).

    Builds the run as a trial does (``recipe.build_run``: its real windows and model, both splits
    on the device, so their memory counts), runs the warm-up steps (and CUDA graph capture) the
    loop would, then times ``steps`` steps ending in a host sync and, in a second pass under
    torch's profiler, sums their kernel time; one evaluation of the validation windows (at
    ``eval_batch_size``) counts towards the peak memory.
    """
    import torch

    from lobsearch.backend import place_model
    from lobsearch.graphs import GRAPH_WARMUP_STEPS
    from lobsearch.inference import evaluate
    from lobsearch.loop import subsample
    from lobsearch.recipe import build_run, fit_settings
    from lobsearch.steps import make_train_step

    device = torch.device(device)
    torch.cuda.reset_peak_memory_stats(device)
    built = build_run(run, prepared, device=device)
    train, val = built.train.to(device), subsample(built.val, run.train.max_eval_windows).to(device)
    model = place_model(built.model, built.backend)
    batch = min(run.train.batch_size, len(train))
    step = make_train_step(model, fit_settings(run.train).step, built.backend, None,
                           steps_per_epoch=10**4, epochs=run.train.epochs)
    generator = torch.Generator(device=device).manual_seed(0)

    def run_steps(n: int) -> None:
        for _ in range(n):
            idx = torch.randint(0, len(train), (batch,), device=device, generator=generator)
            step(*train.batch(idx))

    run_steps(GRAPH_WARMUP_STEPS + 3)
    torch.cuda.synchronize(device)
    started = time.perf_counter()
    run_steps(steps)
    torch.cuda.synchronize(device)
    wall_us = (time.perf_counter() - started) * 1e6
    kernel_us = _kernel_time_us(lambda: run_steps(steps), device)
    evaluate(model, val, device=device, batch_size=run.train.eval_batch_size, backend=built.backend)
    peak = torch.cuda.max_memory_reserved(device)
    label = f"{run.model.name} batch {batch} window {run.data.window}"
    return StepProfile(peak, min(1.0, kernel_us / wall_us), steps * batch / wall_us * 1e6, label)


def _kernel_time_us(work: Any, device: Any) -> float:
    """Total GPU kernel time (microseconds) of ``work``, from torch's profiler."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        work()
        torch.cuda.synchronize(device)
    total = 0.0
    for event in prof.key_averages():
        total += getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0.0)
    return total

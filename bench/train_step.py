"""Training-step throughput: lobsearch's step against a bare PyTorch loop, in the same process.

    python bench/train_step.py                  # CPU: lstm and deeplob at batch 64 and 256
    python bench/train_step.py --device cuda    # adds batch 1024, bf16 rows and graphs on/off

lobsearch's side is the code ``loop.fit`` runs each epoch: ``epoch_batches`` (seeded order),
``train_batches`` (``WindowSet.batch`` gathers windows on the device, ``TrainStep``: autocast
as the backend decides, class-weighted cross-entropy, gradient clipping, AdamW, LR schedule,
loss summed on the device). The bare loop is what a person would write by hand: random window
ends by ``torch.randint``, windows gathered by index from the same day tensor, the same model,
``F.cross_entropy``, ``torch.optim.Adam``, under PyTorch's default switches (each side sets
its own process-wide switches before it runs). Both sides run the same shapes; a bf16 row
autocasts on both sides. Rounds rotate the order of the sides and the medians are reported
(ratio: median of the per-round ratios), so a busy machine penalizes all sides alike; on a CPU shared with other work, ``--threads 1 --clock cpu`` measures CPU seconds
instead of wall time. Target: ratio >= 0.9.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from lobsearch.backend import apply_backend, device_setup, place_model
from lobsearch.data.windows import WindowSet
from lobsearch.steps import StepSettings, class_weights, epoch_batches, make_train_step, train_batches
from lobsearch.models import create_model, model_spec

MODELS = {"lstm": {"hidden_size": 64, "num_layers": 2}, "deeplob": {}}
ROWS, WINDOW, FEATURES = 60_000, 100, 98
"""One day of ROWS rows holds ROWS - WINDOW + 1 windows: more than the largest timed chunk
(30 steps x batch 1024), so every timed step trains on a full batch."""


def day_windows(device: torch.device) -> WindowSet:
    """One synthetic day (ROWS, FEATURES) and every window of WINDOW rows in it, on ``device``."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(ROWS, FEATURES, generator=g)
    ends = torch.arange(WINDOW - 1, ROWS)
    y = torch.randint(0, 3, (len(ends),), generator=g)
    return WindowSet(x, ends, y, WINDOW).to(device)


def lobsearch_runner(name: str, windows: WindowSet, batch: int, precision: str, device: torch.device,
                     **train: str) -> Callable[[int], int]:
    """``run(steps)``: that many steps of fit's inner loop, ending in its one host sync; returns
    the windows trained on (``epoch_batches`` caps a step count at the windows there are).

    ``train`` overrides ``device_setup``'s choices (``cuda_graphs="off"``, ``compile="default"``);
    the backend is what ``device_setup`` decides for the model, as in a trial. ``run.step`` is the
    step object (its ``note`` says whether a CUDA graph was captured).
    """
    backend = device_setup(model_spec(name).backend, device, precision=precision, **{"compile": "off", **train})
    torch.manual_seed(0)
    model = place_model(create_model(name, FEATURES, WINDOW, **MODELS[name]), backend)
    step = make_train_step(model, StepSettings(), backend, class_weights(windows.y).to(device),
                           steps_per_epoch=10_000, epochs=1000)
    generator = torch.Generator().manual_seed(0)

    def run(steps: int) -> int:
        apply_backend(backend)
        batches = epoch_batches(len(windows), batch, steps, generator, device)
        float(train_batches(step, windows, batches))
        return sum(len(idx) for idx in batches)

    run.step, run.backend = step, backend  # type: ignore[attr-defined]
    return run


def pytorch_defaults() -> None:
    """PyTorch's own switches: no cuDNN autotune, cuDNN may use TF32, matmuls in full fp32."""
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.allow_tf32 = True
    torch.set_float32_matmul_precision("highest")


def bare_runner(name: str, windows: WindowSet, batch: int, precision: str, device: torch.device
                ) -> Callable[[int], int]:
    """``run(steps)``: a hand-written loop over random windows gathered from the day tensor."""
    torch.manual_seed(0)
    model = create_model(name, FEATURES, WINDOW, **MODELS[name]).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, ends, y = windows.x, windows.ends, windows.y
    back = torch.arange(WINDOW - 1, -1, -1, device=device)
    dtype = torch.bfloat16 if precision == "bf16" else None

    def run(steps: int) -> int:
        if device.type == "cuda":
            pytorch_defaults()
        for _ in range(steps):
            idx = torch.randint(0, len(ends), (batch,), device=device)
            xb, yb = x[ends[idx, None] - back], y[idx]
            optimizer.zero_grad()
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                loss = F.cross_entropy(model(xb).float(), yb)
            loss.backward()
            optimizer.step()
        loss.item()
        return steps * batch

    return run


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
"""``cpu`` counts this process's CPU seconds: on a CPU shared with other work it measures the
step's cost without the waits for a core (use it with --threads 1; wall time is what to report
on a machine of one's own, and the only valid clock on CUDA)."""


def samples_per_s(run: Callable[[int], int], steps: int, clock: Callable[[], float]) -> float:
    """Windows per second of ``run(steps)``, counting the windows it says it trained on."""
    started = clock()
    samples = run(steps)
    return samples / (clock() - started)


def compare(runners: dict[str, Callable[[int], int]], steps: int, warmup: int,
            rounds: int, clock: Callable[[], float]) -> dict[str, tuple[float, float]]:
    """Per runner: (median samples/s, median per-round ratio to the first runner, the reference).

    A round runs every side back to back, the order rotating each round, so load from other
    processes mostly hits all sides of a round; the medians ignore the rest.
    """
    for run in runners.values():
        run(warmup)
    names = list(runners)
    rates: dict[str, list[float]] = {n: [] for n in names}
    for i in range(rounds):
        for name in names[i % len(names):] + names[: i % len(names)]:
            rates[name].append(samples_per_s(runners[name], steps, clock))
    reference = rates[names[0]]
    return {
        n: (statistics.median(r), statistics.median([a / b for a, b in zip(r, reference)]))
        for n, r in rates.items()
    }


def measure(name: str, batch: int, precision: str, device: torch.device, windows: WindowSet,
            steps: int, warmup: int, rounds: int, clock: Callable[[], float]
            ) -> tuple[float, float, float]:
    """Median samples/s of lobsearch and of the bare loop, and the median per-round ratio."""
    result = compare({"bare": bare_runner(name, windows, batch, precision, device),
                      "lobsearch": lobsearch_runner(name, windows, batch, precision, device)},
                     steps, warmup, rounds, clock)
    return result["lobsearch"][0], result["bare"][0], result["lobsearch"][1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--steps", type=int,
                        help="timed steps per side and round (default 4 on CPU, 50 on CUDA)")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--clock", choices=list(CLOCKS), default="wall",
                        help="wall time, or this process's CPU time (see CLOCKS)")
    args = parser.parse_args()
    if args.clock == "cpu" and args.device == "cuda":
        parser.error("--clock cpu does not measure GPU work; use wall time on CUDA")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    steps = args.steps or (50 if cuda else 4)
    batches = (64, 256, 1024) if cuda else (64, 256)
    precisions = ("fp32", "bf16") if cuda else ("fp32",)
    windows = day_windows(device)
    where = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__} on {where}; T={WINDOW} F={FEATURES}; {steps} steps x "
          f"{args.rounds} rounds (medians); {args.clock} clock")
    print(f"{'model':<8} {'batch':>5} {'precision':<9} {'lobsearch/s':>12} {'bare/s':>10} {'ratio':>6}")
    for name in args.models:
        for batch in batches:
            for precision in precisions:
                ours, bare, ratio = measure(name, batch, precision, device, windows, steps,
                                            warmup=max(2, steps // 5), rounds=args.rounds,
                                            clock=CLOCKS[args.clock])
                print(f"{name:<8} {batch:>5} {precision:<9} {ours:>12,.0f} {bare:>10,.0f} "
                      f"{ratio:>6.2f}", flush=True)


if __name__ == "__main__":
    main()

"""Training-step throughput: lobsearch's step against a bare PyTorch loop, in the same process.

    python bench/train_step.py                  # CPU: lstm and deeplob at batch 64 and 256
    python bench/train_step.py --device cuda    # adds batch 1024 and bf16 rows

lobsearch's side is the code ``loop.fit`` runs each epoch: ``epoch_batches`` (seeded order),
``train_batches`` (``WindowSet.batch`` gathers windows on the device, ``TrainStep``: autocast
as the backend decides, class-weighted cross-entropy, gradient clipping, AdamW, LR schedule,
loss summed on the device). The bare loop is what a person would write by hand: random window
ends by ``torch.randint``, windows gathered by index from the same day tensor, the same model,
``F.cross_entropy``, ``torch.optim.Adam``. Both sides run the same shapes under the same
backend switches (bf16 rows autocast on both sides). Rounds alternate between the two sides
and the medians are reported (ratio: median of the per-round ratios), so a busy machine penalizes
both alike; on a CPU shared with other work, ``--threads 1 --clock cpu`` measures CPU seconds
instead of wall time. Target: ratio >= 0.9.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from lobsearch.config import TrainConfig
from lobsearch.data.windows import WindowSet
from lobsearch.loop import (
    class_weights, device_setup, epoch_batches, make_train_step, place_model, train_batches,
)
from lobsearch.models import create_model, model_spec

MODELS = {"lstm": {"hidden_size": 64, "num_layers": 2}, "deeplob": {}}
ROWS, WINDOW, FEATURES = 20_000, 100, 98


def day_windows(device: torch.device) -> WindowSet:
    """One synthetic day (ROWS, FEATURES) and every window of WINDOW rows in it, on ``device``."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(ROWS, FEATURES, generator=g)
    ends = torch.arange(WINDOW - 1, ROWS)
    y = torch.randint(0, 3, (len(ends),), generator=g)
    return WindowSet(x, ends, y, WINDOW).to(device)


def lobsearch_runner(name: str, windows: WindowSet, batch: int, precision: str, device: torch.device
                     ) -> Callable[[int], None]:
    """``run(steps)``: that many steps of fit's inner loop, ending in its one host sync."""
    cfg = TrainConfig(batch_size=batch, precision=precision, compile="off", epochs=1000)
    backend = device_setup(model_spec(name).backend, cfg, device)
    torch.manual_seed(0)
    model = place_model(create_model(name, FEATURES, WINDOW, **MODELS[name]), backend)
    step = make_train_step(model, cfg, backend, class_weights(windows.y).to(device), 10_000)
    generator = torch.Generator().manual_seed(0)

    def run(steps: int) -> None:
        batches = epoch_batches(len(windows), batch, steps, generator, device)
        float(train_batches(step, windows, batches))

    return run


def bare_runner(name: str, windows: WindowSet, batch: int, precision: str, device: torch.device
                ) -> Callable[[int], None]:
    """``run(steps)``: a hand-written loop over random windows gathered from the day tensor."""
    cfg = TrainConfig(batch_size=batch, precision=precision, compile="off")
    backend = device_setup(model_spec(name).backend, cfg, device)
    torch.manual_seed(0)
    model = place_model(create_model(name, FEATURES, WINDOW, **MODELS[name]), backend)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, ends, y = windows.x, windows.ends, windows.y
    back = torch.arange(WINDOW - 1, -1, -1, device=device)
    dtype = backend.autocast_dtype

    def run(steps: int) -> None:
        for _ in range(steps):
            idx = torch.randint(0, len(ends), (batch,), device=device)
            xb, yb = x[ends[idx, None] - back], y[idx]
            optimizer.zero_grad()
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                loss = F.cross_entropy(model(xb).float(), yb)
            loss.backward()
            optimizer.step()
        loss.item()

    return run


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
"""``cpu`` counts this process's CPU seconds: on a CPU shared with other work it measures the
step's cost without the waits for a core (use it with --threads 1; wall time is what to report
on a machine of one's own, and the only valid clock on CUDA)."""


def samples_per_s(run: Callable[[int], None], steps: int, batch: int,
                  clock: Callable[[], float]) -> float:
    started = clock()
    run(steps)
    return steps * batch / (clock() - started)


def measure(name: str, batch: int, precision: str, device: torch.device, windows: WindowSet,
            steps: int, warmup: int, rounds: int, clock: Callable[[], float]
            ) -> tuple[float, float, float]:
    """Median samples/s of lobsearch and of the bare loop over ``rounds`` rounds, and the median
    of the per-round ratios. A round runs both sides back to back (order alternating), so load
    from other processes mostly hits both sides of a round; the medians ignore the rest."""
    ours = lobsearch_runner(name, windows, batch, precision, device)
    bare = bare_runner(name, windows, batch, precision, device)
    ours(warmup)
    bare(warmup)
    a, b = [], []
    for i in range(rounds):
        pair = [(ours, a), (bare, b)] if i % 2 == 0 else [(bare, b), (ours, a)]
        for run, out in pair:
            out.append(samples_per_s(run, steps, batch, clock))
    ratios = [x / y for x, y in zip(a, b)]
    return statistics.median(a), statistics.median(b), statistics.median(ratios)


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

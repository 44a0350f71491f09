"""Everything measured on a GPU, in one run: training steps, DeepLOB's speed-ups, packed searches.

    PYTHONUNBUFFERED=1 python bench/gpu.py --out $OUT [--budget 480]

(a) lobsearch's training step against the bare loop (bench/train_step.py's two sides) for lstm
    and deeplob at batch 64, 256 and 1024, fp32 and bf16, with lobsearch's CUDA graphs on (its
    default) and off;
(b) DeepLOB at batch 1024: each thing lobsearch does to make it fast, one at a time (bf16,
    channels-last and cuDNN autotune; CUDA graphs; torch.compile, whose compile time is
    reported as the warm-up), and the validation macro-F1 of a short training with the default against the
    fp32 eager loop on the same synthetic export (the same model function, the same accuracy);
(c) real searches (``python -m lobsearch.tune``) of LSTM trials at 1, 0.5, 0.25 and 0.125 GPU per
    trial (as many trials as fit at once) and at ``auto``, with CUDA graphs and, for 8 and 4
    trials, without (``PACKINGS``): aggregate training samples/s across
    the concurrent trials (the sum of each trial's median epoch rate, and all trials' training
    windows over the span from the first trial's start to the last one's end) and GPU memory
    per trial;
(d) the ten costliest kernels of DeepLOB's default step (torch's profiler).

Sections stop starting once ``--budget`` seconds have passed. It prints a short table last and
writes every figure to OUT/gpu.json (OUT/deeplob_profile.txt for (d)).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import bare_runner, compare, day_windows, lobsearch_runner  # noqa: E402

STARTED = time.monotonic()
FIGURES: dict[str, Any] = {"sections": {}}


def left(budget: float) -> float:
    return budget - (time.monotonic() - STARTED)


def say(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:6.1f}s] {message}", flush=True)


# --------------------------------------------------------------------------- (a) training steps


def training_steps(device: torch.device, budget: float, rounds: int) -> list[dict[str, Any]]:
    windows = day_windows(device)
    rows = []
    for name in ("lstm", "deeplob"):
        for batch in (64, 256, 1024):
            for precision in ("fp32", "bf16"):
                if left(budget) < 0:
                    say("(a) out of budget; rows skipped")
                    return rows
                steps = 60 if batch == 64 else 30
                runners = {
                    "bare": bare_runner(name, windows, batch, precision, device),
                    "lobsearch": lobsearch_runner(name, windows, batch, precision, device),
                    "no_graphs": lobsearch_runner(name, windows, batch, precision, device, cuda_graphs="off"),
                }
                result = compare(runners, steps, warmup=8, rounds=rounds, clock=time.perf_counter)
                row = {"model": name, "batch": batch, "precision": precision,
                       "bare": result["bare"][0], "lobsearch": result["lobsearch"][0],
                       "ratio": result["lobsearch"][1], "no_graphs": result["no_graphs"][0],
                       "no_graphs_ratio": result["no_graphs"][1],
                       "backend": runners["lobsearch"].backend.describe(),
                       "graph_note": getattr(runners["lobsearch"].step, "note", "")}
                rows.append(row)
                say(f"(a) {name} {batch} {precision}: bare {row['bare']:,.0f}/s, lobsearch "
                    f"{row['lobsearch']:,.0f}/s ({row['ratio']:.2f}x), graphs off {row['no_graphs']:,.0f}/s "
                    f"{row['graph_note']}")
                del runners
                torch.cuda.empty_cache()
    return rows


# --------------------------------------------------------------------------- (b) DeepLOB


DEEPLOB_VARIANTS = {
    "bf16 + channels-last + cuDNN autotune (eager)": {"cuda_graphs": "off"},
    "+ CUDA graph (lobsearch's default)": {},
    "fp32 + CUDA graph": {"precision": "fp32"},
    "bf16 + compile default (what compile auto picks for long runs)": {"compile": "default"},
    "bf16 + compile reduce-overhead (the compiler's CUDA graphs)": {"compile": "reduce-overhead"},
}


def deeplob_variants(device: torch.device, budget: float, rounds: int) -> list[dict[str, Any]]:
    windows = day_windows(device)
    batch, steps = 1024, 20
    bare = bare_runner("deeplob", windows, batch, "fp32", device)
    rows = []
    for label, overrides in DEEPLOB_VARIANTS.items():
        if left(budget) < (150 if "compile" in label else 20):
            say(f"(b) out of budget; {label!r} skipped")
            continue
        overrides = dict(overrides)
        precision = overrides.pop("precision", "bf16")
        ours = lobsearch_runner("deeplob", windows, batch, precision, device, **overrides)
        started = time.perf_counter()
        ours(8)  # warm-up: compiles, autotunes and captures
        torch.cuda.synchronize(device)
        warmup_s = time.perf_counter() - started
        result = compare({"bare": bare, "variant": ours}, steps, warmup=2, rounds=rounds,
                         clock=time.perf_counter)
        row = {"variant": label, "samples_per_s": result["variant"][0], "bare": result["bare"][0],
               "ratio": result["variant"][1], "warmup_s": warmup_s,
               "graph_note": getattr(ours.step, "note", "")}
        rows.append(row)
        say(f"(b) {label}: {row['samples_per_s']:,.0f}/s = {row['ratio']:.2f}x bare "
            f"({row['bare']:,.0f}/s); warm-up {warmup_s:.1f} s {row['graph_note']}")
        del ours
        torch._dynamo.reset()
        torch.cuda.empty_cache()
    return rows


def deeplob_accuracy(export: Path, device: torch.device) -> dict[str, Any]:
    """Val macro-F1 of DeepLOB trained the same way with lobsearch's default backend and with
    the fp32 eager loop (graphs off), on the same export and seed."""
    from lobsearch.config import RunConfig
    from lobsearch.data.pipeline import prepare
    from lobsearch.recipe import build_run, fit_run

    out = {}
    for label, train in (("fp32 eager", {"precision": "fp32", "cuda_graphs": "off"}), ("default", {})):
        run = RunConfig.model_validate({
            "data": {"window": 100, "horizon": 20},
            "model": {"name": "deeplob"},
            "train": {"epochs": 3, "batch_size": 1024, "steps_per_epoch": 150, "patience": None,
                      "max_eval_windows": 30000, "learning_rate": 1e-3, **train},
        })
        built = build_run(run, prepare(export, run.data.prep(), engine="local"), device=device)
        started = time.perf_counter()
        result = fit_run(built)
        out[label] = {"val_macro_f1": result.best_val["macro_f1"], "samples_per_s": result.samples_per_s,
                      "seconds": time.perf_counter() - started, "backend": built.backend.describe()}
        say(f"(b) accuracy, {label}: val macro-F1 {out[label]['val_macro_f1']:.4f}, "
            f"{result.samples_per_s:,.0f} samples/s ({built.backend.describe()})")
    return out


# --------------------------------------------------------------------------- (c) packed searches


PACK_SPACE = """\
name: gpu-pack
objective: {metric: val_macro_f1}
fixed:
  data: {horizon: 20, stride: 1, window: 100, features: full}
  train: {epochs: 4, batch_size: 256, steps_per_epoch: 600, max_eval_windows: 5000, patience: null,
          cuda_graphs: GRAPHS}
params:
  train.learning_rate: {type: float, low: 3.0e-4, high: 3.0e-3, log: true}
models:
  lstm:
    fixed: {hidden_size: 64, num_layers: 2, dropout: 0.0}
search: {scheduler: none, cpus_per_trial: 1, seed: 0}
tracking: {wandb: disabled}
"""


PACKINGS = (("1", "auto"), ("0.125", "auto"), ("0.125", "off"), ("auto", "auto"), ("0.25", "auto"),
            ("0.5", "auto"), ("0.25", "off"))
"""(GPU per trial, train.cuda_graphs) of each packed search, the most telling first: one graphed
trial alone, eight graphed, eight eager (graphs replace the launch gaps that packing fills)."""


def packed_searches(export: Path, work: Path, budget: float) -> list[dict[str, Any]]:
    storage = work / f"runs-{time.strftime('%Y%m%d-%H%M%S')}"  # never resume an earlier run
    rows = []
    for share, graphs in PACKINGS:
        if left(budget) < 45:
            say(f"(c) out of budget; {share} GPU per trial, graphs {graphs}, skipped")
            continue
        space = work / f"gpu-pack-{graphs}.yaml"
        space.write_text(PACK_SPACE.replace("GRAPHS", f'"{graphs}"'))
        trials = 8 if share == "auto" else round(1 / float(share))
        name = f"pack-{share}-graphs-{graphs}"
        command = [sys.executable, "-m", "lobsearch.tune", str(space), "--data", str(export),
                   "--gpus-per-trial", share, "--num-samples", str(trials), "--max-concurrent", str(trials),
                   "--name", name, "--storage", str(storage), "--wandb", "disabled"]
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, timeout=max(60, left(budget) + 60))
        wall = time.perf_counter() - started
        log = done.stdout + done.stderr
        (work / f"{name}.log").write_text(log)
        row = {"gpus_per_trial": share, "cuda_graphs": graphs, "trials": trials, "wall_s": wall,
               "rc": done.returncode,
               **_trial_figures(storage / name)}
        row["auto_lines"] = [line for line in log.splitlines() if "gpus_per_trial auto" in line or "busy" in line]
        rows.append(row)
        say(f"(c) {share} GPU/trial x {trials}, graphs {graphs}: aggregate {row.get('aggregate', 0):,.0f} "
            f"samples/s (wall {row.get('aggregate_wall') or 0:,.0f}), "
            f"per trial {row.get('per_trial', 0):,.0f}/s, memory {row.get('gpu_mem_mb', 0):,.0f} MiB, "
            f"rc {done.returncode}, {wall:.0f} s")
        if done.returncode:
            say(log[-3000:])
    return rows


def _trial_figures(folder: Path) -> dict[str, Any]:
    """From each trial's result.json lines: its median epoch training rate (epochs 2+, after
    warm-up), its peak GPU memory, and its span in time; ``aggregate`` sums the trials' rates,
    ``aggregate_wall`` divides all trials' training windows by the span of all of them."""
    rates, memory, starts, ends, samples = [], [], [], [], 0
    for result in sorted(folder.glob("*/result.json")):
        reports = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        if not reports:
            continue
        steady = [r["samples_per_s"] for r in reports if r.get("epoch", 0) >= 2] or \
                 [r["samples_per_s"] for r in reports]
        rates.append(statistics.median(steady))
        memory += [r["gpu_mem_mb"] for r in reports if "gpu_mem_mb" in r]
        samples += sum(r.get("train_samples", 0) for r in reports)
        starts.append(reports[0]["timestamp"] - reports[0]["time_total_s"])
        ends.append(reports[-1]["timestamp"])
    if not rates:
        return {}
    span = max(ends) - min(starts)
    return {"aggregate": sum(rates), "aggregate_wall": samples / span if span > 0 else None,
            "per_trial": statistics.median(rates), "trials_reported": len(rates),
            "gpu_mem_mb": max(memory) if memory else None}


# --------------------------------------------------------------------------- (d) profile


def deeplob_profile(device: torch.device, out: Path) -> None:
    from torch.profiler import ProfilerActivity, profile

    windows = day_windows(device)
    run = lobsearch_runner("deeplob", windows, 1024, "bf16", device, cuda_graphs="off")
    run(6)
    torch.cuda.synchronize(device)
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        run(5)
        torch.cuda.synchronize(device)
    try:
        table = prof.key_averages().table(sort_by="self_device_time_total", row_limit=25)
    except Exception:  # older torch names it after CUDA
        table = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=25)
    (out / "deeplob_profile.txt").write_text(table)
    print("\n".join(table.splitlines()[:16]))


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/bench"), help="where gpu.json goes")
    parser.add_argument("--budget", type=float, default=480,
                        help="seconds after which no section (or packed search) starts")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sections", default="abcd", help="which sections to run (default abcd)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("no CUDA device: this benchmark needs a GPU")
    device = torch.device("cuda")
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(os.environ.get("TMPDIR", "/tmp")) / "lobsearch-gpu-bench"
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("LOBSEARCH_CACHE", str(work / "cache"))
    FIGURES["device"] = torch.cuda.get_device_name(device)
    FIGURES["torch"] = torch.__version__
    say(f"{FIGURES['device']}, torch {torch.__version__}")
    export = None
    if "b" in args.sections or "c" in args.sections:
        from lobsearch.synth import write_synthetic_export

        export = work / "export"
        if not export.is_dir() or not any(export.iterdir()):
            write_synthetic_export(export, days=20, rows=50_000, seed=0)
        say(f"synthetic export: {export}")
    sections = {
        "a": lambda: training_steps(device, args.budget, args.rounds),
        "b": lambda: {"variants": deeplob_variants(device, args.budget, args.rounds),
                      "accuracy": deeplob_accuracy(export, device)},
        "d": lambda: deeplob_profile(device, args.out),
        "c": lambda: packed_searches(export, work, args.budget),
    }
    for key in "acbd":
        if key not in args.sections:
            continue
        try:
            FIGURES["sections"][key] = sections[key]()
        except Exception as error:  # one broken section must not cost the others' figures
            import traceback

            traceback.print_exc()
            FIGURES["sections"][key] = {"error": repr(error)}
        (args.out / "gpu.json").write_text(json.dumps(FIGURES, indent=2, default=str))
    summary()


def summary() -> None:
    sections = FIGURES["sections"]
    print(f"\n{FIGURES['device']}, torch {FIGURES['torch']}, {time.monotonic() - STARTED:.0f} s")
    if isinstance(sections.get("a"), list):
        print(f"{'model':<8}{'batch':>6} {'prec':<5}{'bare/s':>10}{'lobsearch/s':>12}{'ratio':>6}{'no graphs':>10}")
        for r in sections["a"]:
            print(f"{r['model']:<8}{r['batch']:>6} {r['precision']:<5}{r['bare']:>10,.0f}"
                  f"{r['lobsearch']:>12,.0f}{r['ratio']:>6.2f}{r['no_graphs_ratio']:>10.2f}")
    b = sections.get("b")
    if isinstance(b, dict):
        for r in b.get("variants", []):
            print(f"deeplob 1024 {r['variant']:<55}{r['samples_per_s']:>9,.0f}/s {r['ratio']:>5.2f}x "
                  f"warm-up {r['warmup_s']:.0f}s")
        for label, r in b.get("accuracy", {}).items():
            print(f"deeplob accuracy {label:<12} val macro-F1 {r['val_macro_f1']:.4f}")
    for r in sections.get("c", []) if isinstance(sections.get("c"), list) else []:
        print(f"search {r['gpus_per_trial']:>5} GPU/trial x{r['trials']} graphs {r['cuda_graphs']:<4}: "
              f"aggregate {r.get('aggregate', 0):>9,.0f}/s "
              f"(wall {r.get('aggregate_wall') or 0:>9,.0f}/s) "
              f"per trial {r.get('per_trial', 0):>8,.0f}/s mem {r.get('gpu_mem_mb') or 0:>6,.0f} MiB rc {r['rc']}")


if __name__ == "__main__":
    main()

"""Preprocessing a windowed export: lobsearch's Ray Data ``prepare`` against plain numpy.

    python bench/windowed.py --out /tmp/windowed.json     # 20 days x 1,500 windows x 100 x 98, 3 rounds

The export is what the upstream exporter writes at stride 10: per day a ``_sequences.npy``
(windows, T, 98) float32 whose consecutive windows overlap by T - stride rows, one signed int8
label row per window, forward prices, metadata, manifest and ``export_config.toml``. It is
written once by ``lobsearch.synth.write_synthetic_export(fmt="windowed")`` into
``--export-dir`` and reused while its manifest says the same size, layout and seed. synth cuts
(rows - T) // stride + 1 windows from a day of ``rows`` rows, so a day of ``--windows`` W
windows is simulated with rows = T + (W - 1) * stride (15,090 rows for the default 1,500). At the
default size the sequences are 20 x 1,500 x 100 x 98 x 4 B = 1.18 GB, the month of a liquid
stock.

Measurements, each in its own process (this script with ``--worker``), rounds in rotated order,
medians reported; what ``bench/preprocess.py`` does for a flat export, with its functions
(``TreeSampler``, ``worker_ray``, ``compare_outputs``, ``_gate``, ``_settle``) imported, not copied:

- ``numpy``: the plain single-process reference below (``windowed_reference``). Per day
  ``np.load(mmap_mode="r")`` of the sequences, the day's contiguous rows recovered once (window
  0, then the last ``stride`` rows of every later window: T + (W-1)*stride rows, float32), the
  three gates, Chan moments of the passing rows of the training days in float64; then every day
  recovered again, z-scored in float64 with the training statistics (gate/categorical/version
  columns kept, clip at 10) and saved as float32 ``x``, int8 ``labels`` (each window's label,
  +1, on its end row, -1 on the others), bool ``row_ok`` and, where lobsearch's cache holds
  them (``pipeline.ARRAYS``), the raw float32 ``quotes`` (MID_PRICE, SPREAD) and the ``forward``
  exit prices (empty at stride < T): what the cache holds.
- ``ray-2`` (and ``ray-1`` with ``--cpus 1 2``): ``bench/preprocess.py``'s ``worker_ray``:
  ``ray.init(num_cpus=N)`` (timed apart, not counted), ``prepare(engine="ray")`` into a fresh
  cache folder (``cold``: the first Ray Data run of the session, with its start-up), then into
  another fresh folder (``warm``).
- ``auto-2``: the same with ``prepare``'s default engine (``auto``, what a search runs:
  ``pipeline.choose_engine``); the table names the engine it chose. The targets are this line's.

Reported: seconds, exported windows per second, ratio to the reference, CPU seconds and peak RSS
and PSS of the worker's whole process tree (for Ray: driver, raylet, GCS, agents, workers;
sampled every 0.1 s and 1 s by ``preprocess.TreeSampler``); the bytes of the export, of the
prepared cache and their ratio. The reference's output and lobsearch's are compared file by
file, bit for bit (round 1). Every measured step starts after ``SETTLE_S`` of quiet with the
previous steps' outputs deleted and flushed (``preprocess._settle``; ``--settle`` changes it),
and with the export's files read once, so that it finds them in the page cache
(``preprocess.PAGE_CACHE``; ``--page-cache as-is`` leaves them as they are).

Targets (2-core machine): lobsearch's default on 2 CPUs >= 1.0x the reference's windows/s, cold and warm;
the prepared cache <= 0.15x the export's bytes (it holds the recovered rows, about 1/stride of
the windows); peak RSS of the process tree <= 2 GiB.

``--smoke-search`` then runs ``python -m lobsearch.tune search_spaces/lstm.yaml --smoke --data
EXPORT --wandb disabled`` on the export (its runs and prepared cache in a temporary folder) and
reports its exit status and wall time.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _load_preprocess():
    """bench/preprocess.py as a module (bench/ is no package): its functions are reused here."""
    name = "lobsearch_bench_preprocess"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().with_name("preprocess.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


pre = _load_preprocess()
GIB = pre.GIB
TARGET_RATIO = 1.0
TARGET_CACHE_SHARE = 0.15
TARGET_RSS_GIB = 2.0
KEPT_COLUMNS = (92, 93, 94, 96, 97)
"""BOOK_VALID, TIME_REGIME, MBO_READY, INVALIDITY_DELTA, SCHEMA_VERSION: never scaled or clipped."""
CLIP = 10.0
QUOTE_COLUMNS = (40, 41)
"""MID_PRICE and SPREAD: the raw quotes a prepared day keeps beside x (where lobsearch's cache holds them)."""
REFERENCE_ARRAYS = ("x", "labels", "row_ok", "quotes", "forward")
"""The per-day arrays the reference can write."""


def cache_arrays() -> tuple[str, ...]:
    """The arrays lobsearch's cache holds per day (``pipeline.ARRAYS``), which the reference writes
    too. Raises RuntimeError for one the reference does not know, rather than compare less."""
    from lobsearch.data.pipeline import ARRAYS

    unknown = [a for a in ARRAYS if a not in REFERENCE_ARRAYS]
    if unknown:
        raise RuntimeError(f"lobsearch's cache holds {unknown}, which this reference does not write: extend it")
    return tuple(ARRAYS)


# ---------------------------------------------------------------- the plain numpy reference


def _windowed_days(export: Path) -> list[tuple[str, str, Path]]:
    """(split, date, sequences path) of every day, chronological."""
    days = [(split, p.name[:8], p) for split in ("train", "val", "test")
            for p in (export / split).glob("*_sequences.npy")]
    return sorted(days, key=lambda d: d[1])


def _stride(path: Path) -> int:
    """The stride the day's metadata states."""
    return int(json.loads(path.with_name(f"{path.name[:8]}_metadata.json").read_text())["stride"])


def recovered_rows(sequences: np.ndarray, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """(W, T, F) windows -> ((R, F) rows in the file's dtype, (W,) end row of each window).

    stride < T: window 0, then the last ``stride`` rows of each later window, copied once into
    one array (R = T + (W-1)*stride); else the windows one after another (R = W*T).
    """
    count, width, n_features = sequences.shape
    pitch = min(stride, width)
    ends = width - 1 + pitch * np.arange(count, dtype=np.int64)
    if stride >= width:
        return np.array(sequences.reshape(count * width, n_features)), ends
    rows = np.empty((width + (count - 1) * stride, n_features), dtype=sequences.dtype)
    rows[:width] = sequences[0]
    rows[width:].reshape(count - 1, stride, n_features)[...] = sequences[1:, width - stride:]
    return rows, ends


def _day_rows(path: Path) -> tuple[np.ndarray, np.ndarray, int]:
    """(rows (R, F) float32, window end rows (W,), windows) of one day, from its memory map."""
    sequences = np.load(path, mmap_mode="r")
    rows, ends = recovered_rows(sequences, _stride(path))
    return rows, ends, sequences.shape[0]


def window_exits(path: Path, count: int) -> np.ndarray:
    """The exit prices lobsearch keeps for a day whose windows do not overlap: its forward prices
    from column k (the metadata's ``forward_prices.smoothing_window_offset``); (0, 0) where the
    windows overlap (the recovered rows give the exits)."""
    meta = json.loads(path.with_name(f"{path.name[:8]}_metadata.json").read_text())
    if meta["stride"] < np.load(path, mmap_mode="r").shape[1]:
        return np.empty((0, 0))
    forward = np.load(path.with_name(f"{path.name[:8]}_forward_prices.npy"))
    assert forward.shape[0] == count
    return forward[:, meta["forward_prices"]["smoothing_window_offset"]:]


def _train_moments(days: list[tuple[str, str, Path]]) -> tuple[int, np.ndarray, np.ndarray]:
    """Chan-combined count, mean and m2 (float64) of the passing rows of the training days."""
    count, mean, m2 = 0, None, None
    for split, _, path in days:
        if split != "train":
            continue
        rows, _, _ = _day_rows(path)
        passing = rows[pre._gate(rows)].astype(np.float64)
        n, day_mean = passing.shape[0], passing.mean(axis=0)
        day_m2 = ((passing - day_mean) ** 2).sum(axis=0)
        if count == 0:
            count, mean, m2 = n, day_mean, day_m2
            continue
        total = count + n
        delta = day_mean - mean
        mean = mean + delta * (n / total)
        m2 = m2 + day_m2 + delta * delta * (count * n / total)
        count = total
    return count, mean, m2


def windowed_reference(export: Path, out: Path, arrays: tuple[str, ...] = ("x", "labels", "row_ok")) -> dict:
    """Recover, gate, fit train-only z-scores and write every day as lobsearch's cache holds it:
    the ``arrays`` of each day (``cache_arrays()``) as ``<order>_<split>_<date>_<array>.npy``.

    Returns the rows written and the exported windows read.
    """
    days = _windowed_days(export)
    count, mean, m2 = _train_moments(days)
    std = np.sqrt(m2 / count)
    std = np.where(std <= 1e-10 * np.abs(mean), 1.0, std)
    scaled = np.ones(mean.shape[0], dtype=bool)
    scaled[list(KEPT_COLUMNS)] = False
    shift, scale, bound = np.where(scaled, mean, 0.0), np.where(scaled, std, 1.0), np.where(scaled, CLIP, np.inf)
    rows = windows = 0
    for i, (split, date, path) in enumerate(days):
        day, ends, count = _day_rows(path)
        ok = pre._gate(day)
        x = day.astype(np.float64)
        x -= shift
        x /= scale
        np.clip(x, -bound, bound, out=x)
        signed = np.load(path.with_name(f"{date}_labels.npy")).reshape(count, -1)
        labels = np.full((x.shape[0], signed.shape[1]), -1, dtype=np.int8)
        labels[ends] = signed.astype(np.int8) + 1
        written = {"x": x.astype(np.float32), "labels": labels, "row_ok": ok}
        if "quotes" in arrays:
            written["quotes"] = day[:, list(QUOTE_COLUMNS)]
        if "forward" in arrays:
            written["forward"] = window_exits(path, count)
        for name in arrays:
            np.save(out / f"{i:04d}_{split}_{date}_{name}.npy", written[name])
        rows, windows = rows + x.shape[0], windows + count
    return {"rows": rows, "windows": windows}


# ---------------------------------------------------------------- workers and measuring them


def worker_numpy(export: Path, scratch: Path) -> dict:
    out = scratch / "numpy"
    out.mkdir()
    arrays = cache_arrays()
    started = time.time()
    done = windowed_reference(export, out, arrays)
    return {"phases": {"run": [started, time.time()]}, **done, "output": str(out)}


def measure(kind: str, export: Path, scratch: Path) -> dict:
    """One measurement in a child process (this script with ``--worker``), its tree sampled by
    ``preprocess.TreeSampler``: phases, seconds, per phase (and ``before`` the measured step) the
    tree's memory peaks and CPU seconds, and the bytes of its output."""
    result_file = scratch / f"{kind}.json"
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--export-dir", str(export),
               "--scratch", str(scratch), "--result", str(result_file), "--settle", str(pre.SETTLE_S),
               "--page-cache", "warm" if pre.PAGE_CACHE else "as-is"]
    load = os.getloadavg()[0]
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    sampler = pre.TreeSampler(child.pid)
    sampler.start()
    _, stderr = child.communicate()
    sampler.done.set()
    sampler.join()
    if child.returncode != 0:
        raise RuntimeError(f"worker {kind} failed (exit {child.returncode}):\n{stderr[-3000:]}")
    result = json.loads(result_file.read_text())
    phases = result["phases"]
    result["seconds"] = {name: end - start for name, (start, end) in phases.items()}
    result["tree"] = {name: sampler.peak(start, end) for name, (start, end) in phases.items()}
    result["tree"]["before"] = sampler.peak(0, (phases["cold"] if "cold" in phases else phases["run"])[0])
    result["load_average_1min_before"] = load
    result["output_bytes"] = folder_bytes(Path(result["output"]))
    return result


def folder_bytes(folder: Path) -> int:
    """Bytes of every file under ``folder``."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# ---------------------------------------------------------------- the export, rounds and the table


def rows_per_day(windows: int, window: int, stride: int) -> int:
    """Rows synth simulates for a day of ``windows`` windows: it cuts (rows - T) // stride + 1."""
    return window + (windows - 1) * stride


def ensure_export(folder: Path, days: int, windows: int, window: int, stride: int, seed: int) -> dict:
    """Reuse the windowed export in ``folder`` when its manifest matches, else write it (into a
    temporary folder beside it, renamed into place when complete). Returns facts about it."""
    from lobsearch.synth import write_synthetic_export

    rows = rows_per_day(windows, window, stride)
    manifest = folder / "dataset_manifest.json"
    wanted = {"days": days, "rows": rows, "seed": seed, "format": "windowed", "sequence_length": window,
              "stride": stride, "schema_version": "3.0"}
    if manifest.is_file():
        stated = json.loads(manifest.read_text())
        found = {**{k: stated.get(k) for k in wanted}, **{k: stated.get("generator", {}).get(k)
                                                          for k in ("days", "rows", "seed")}}
        if found != wanted:
            sys.exit(f"{folder}: holds another export ({found}); pass a new --export-dir")
    elif folder.exists():
        sys.exit(f"{folder}: exists without a dataset_manifest.json (an interrupted write?); remove it "
                 "or pass a new --export-dir")
    else:
        print(f"writing the windowed export into {folder} (once): {days} days x {windows:,} windows "
              f"({rows:,} rows) x {window} x 98 float32, stride {stride} ...", flush=True)
        folder.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        try:
            write_synthetic_export(partial, days=days, rows=rows, seed=seed, fmt="windowed", window=window,
                                   stride=stride, schema="3.0")
            partial.chmod(0o755)
            os.rename(partial, folder)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    return export_facts(folder)


def export_facts(folder: Path) -> dict:
    """Shape, layout, bytes and splits of a windowed export, from its headers."""
    files = sorted(folder.glob("*/*_sequences.npy"))
    shapes = [np.load(f, mmap_mode="r").shape for f in files]
    stride = _stride(files[0])
    count, width, n_features = shapes[0]
    rows = [width + (s[0] - 1) * stride if stride < width else s[0] * width for s in shapes]
    return {
        "path": str(folder), "days": len(files), "windows": sum(s[0] for s in shapes),
        "windows_per_day": count, "window": width, "stride": stride, "columns": n_features,
        "dtype": str(np.load(files[0], mmap_mode="r").dtype), "rows_recovered": sum(rows),
        "sequences_bytes": sum(f.stat().st_size for f in files),
        "export_bytes": sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()),
        "days_per_split": {s: len(list((folder / s).glob("*_sequences.npy"))) for s in ("train", "val", "test")},
    }


def run_rounds(export: Path, rounds: int, kinds: tuple[str, ...]) -> tuple[dict[str, list[dict]], dict]:
    """``rounds`` of every measurement in ``kinds`` (numpy first), in a rotated order; plus, in
    round 1 (where numpy runs first), each Ray measurement's output compared with numpy's."""
    runs: dict[str, list[dict]] = {kind: [] for kind in kinds}
    checks: dict[str, dict] = {}
    for r in range(rounds):
        order = kinds[r % len(kinds):] + kinds[:r % len(kinds)]
        with tempfile.TemporaryDirectory(prefix="lobsearch-bench-windowed-") as scratch:
            for kind in order:
                pre._settle()
                folder = Path(scratch) / kind
                folder.mkdir()
                result = measure(kind, export, folder)
                runs[kind].append(result)
                timings = ", ".join(f"{k} {v:.2f} s" for k, v in result["seconds"].items())
                print(f"round {r + 1} {kind} (load {result['load_average_1min_before']:.1f}): {timings}", flush=True)
                if r == 0 and kind == "numpy":  # kept for the comparisons below
                    continue
                if r == 0:
                    checks[kind] = pre.compare_outputs(Path(runs["numpy"][0]["output"]), Path(result["output"]))
                shutil.rmtree(folder)
            if r == 0:
                shutil.rmtree(Path(scratch) / "numpy", ignore_errors=True)
    return runs, checks


def summarize(runs: dict[str, list[dict]], facts: dict) -> dict:
    """Medians per line of the table, the byte counts, and the targets."""
    lines = {"numpy reference, 1 process": ("numpy", "run")}
    for kind in (k for k in runs if k != "numpy"):
        for phase in ("cold", "warm"):
            lines[pre.measurement_label(kind, phase, runs[kind])] = (kind, phase)
    base = statistics.median(r["seconds"]["run"] for r in runs["numpy"])
    table = {}
    for label, (kind, phase) in lines.items():
        seconds = statistics.median(r["seconds"][phase] for r in runs[kind])
        table[label] = {
            "kind": kind, "phase": phase, "seconds": seconds, "windows_per_s": facts["windows"] / seconds,
            "rows_per_s": facts["rows_recovered"] / seconds, "ratio_vs_numpy": base / seconds,
            "peak_rss_gib": statistics.median(r["tree"][phase]["rss"] for r in runs[kind]) / GIB,
            "peak_pss_gib": pre._median_or_none([r["tree"][phase]["pss"] for r in runs[kind]], GIB),
            "processes": max(r["tree"][phase]["processes"] for r in runs[kind]),
            "cpu_s": statistics.median(r["tree"][phase]["cpu_s"] for r in runs[kind]),
        }
    ray = [k for k in runs if k != "numpy"]
    cache = max(r["output_bytes"] for r in runs[ray[-1]]) if ray else None
    return {
        "table": table,
        "ray_init_s": {k: statistics.median(r["seconds"]["ray.init"] for r in runs[k]) for k in ray},
        "bytes": {"export": facts["export_bytes"], "sequences": facts["sequences_bytes"], "prepared_cache": cache,
                  "numpy_output": runs["numpy"][0]["output_bytes"],
                  "cache_vs_export": None if cache is None else cache / facts["export_bytes"],
                  "cache_vs_sequences": None if cache is None else cache / facts["sequences_bytes"]},
        "per_round_ratio": {label: [n["seconds"]["run"] / r["seconds"][phase]
                                    for n, r in zip(runs["numpy"], runs[kind])]
                            for label, (kind, phase) in lines.items() if kind != "numpy"},
    }


def targets(summary: dict) -> dict:
    """Each target of the default engine's 2-CPU lines: the value and whether it is met."""
    found = {}
    for label, row in summary["table"].items():
        if row["kind"] == "auto-2":
            found[f"{label}: throughput >= {TARGET_RATIO:.1f}x numpy"] = (row["ratio_vs_numpy"],
                                                                          row["ratio_vs_numpy"] >= TARGET_RATIO)
            found[f"{label}: peak RSS <= {TARGET_RSS_GIB:.1f} GiB"] = (row["peak_rss_gib"],
                                                                      row["peak_rss_gib"] <= TARGET_RSS_GIB)
    share = summary["bytes"]["cache_vs_export"]
    if share is not None:
        found[f"prepared cache <= {TARGET_CACHE_SHARE:.2f}x the export's bytes"] = (share, share <= TARGET_CACHE_SHARE)
    return {name: {"value": value, "met": bool(met)} for name, (value, met) in found.items()}


def print_tables(summary: dict, facts: dict, checks: dict, rounds: int, smoke: dict | None) -> None:
    print(f"\nexport: {facts['days']} days x {facts['windows_per_day']:,} windows x {facts['window']} x "
          f"{facts['columns']} {facts['dtype']}, stride {facts['stride']} ({facts['sequences_bytes'] / 1e9:.2f} GB of "
          f"sequences, {facts['export_bytes'] / 1e9:.2f} GB in all), splits {facts['days_per_split']}; "
          f"{facts['windows']:,} windows, {facts['rows_recovered']:,} rows recovered; medians of {rounds} round(s); "
          f"{os.cpu_count()} CPUs here; export read into the page cache before each step: {'yes' if pre.PAGE_CACHE else 'no'}\n")
    print("| run | seconds | windows/s | x numpy | CPU s | peak RSS | peak PSS | processes |")
    print("|---|---|---|---|---|---|---|---|")
    for label, row in summary["table"].items():
        pss = "n/a" if row["peak_pss_gib"] is None else f"{row['peak_pss_gib']:.2f} GiB"
        print(f"| {label} | {row['seconds']:.2f} | {row['windows_per_s']:,.0f} | {row['ratio_vs_numpy']:.2f} | "
              f"{row['cpu_s']:.1f} | {row['peak_rss_gib']:.2f} GiB | {pss} | {row['processes']} |")
    b = summary["bytes"]
    print("\n| bytes | size | x export |")
    print("|---|---|---|")
    print(f"| export, every file | {b['export'] / 1e9:.3f} GB | 1.000 |")
    print(f"| export, _sequences.npy | {b['sequences'] / 1e9:.3f} GB | {b['sequences'] / b['export']:.3f} |")
    if b["prepared_cache"] is not None:
        print(f"| lobsearch prepared cache | {b['prepared_cache'] / 1e9:.3f} GB | {b['cache_vs_export']:.3f} |")
    print(f"| numpy reference output | {b['numpy_output'] / 1e9:.3f} GB | {b['numpy_output'] / b['export']:.3f} |")
    inits = ", ".join(f"{k} {v:.1f} s" for k, v in summary["ray_init_s"].items())
    print(f"\nray.init (not counted above): {inits}")
    for kind, check in checks.items():
        print(f"outputs of round 1, numpy vs lobsearch {kind} ({check['files']} files): "
              f"{'identical' if check['identical'] else 'DIFFERENT'}")
    for label, ratios in summary["per_round_ratio"].items():
        print(f"per round, {label} vs that round's reference: {', '.join(f'{x:.2f}x' for x in ratios)}")
    for name, target in targets(summary).items():
        print(f"target {name}: {'met' if target['met'] else 'MISSED'} ({target['value']:.3f})")
    if smoke is not None:
        print_smoke(smoke)


def print_smoke(smoke: dict) -> None:
    print(f"smoke search ({smoke['command']}): exit {smoke['exit_code']} in {smoke['seconds']:.1f} s")
    if smoke["exit_code"] != 0:
        print(smoke["output_tail"])


# ---------------------------------------------------------------- the smoke search


def smoke_search(export: Path, timeout_s: float) -> dict:
    """``python -m lobsearch.tune search_spaces/lstm.yaml --smoke --data EXPORT --wandb disabled``
    from the repository root, its runs (``--storage``) and its prepared cache
    (``LOBSEARCH_CACHE``) in a temporary folder: exit status, wall seconds and output tail."""
    with tempfile.TemporaryDirectory(prefix="lobsearch-bench-smoke-") as scratch:
        command = [sys.executable, "-m", "lobsearch.tune", "search_spaces/lstm.yaml", "--smoke", "--data",
                   str(export), "--wandb", "disabled", "--storage", str(Path(scratch) / "runs")]
        env = {**os.environ, "LOBSEARCH_CACHE": str(Path(scratch) / "cache"), "RAY_USAGE_STATS_ENABLED": "0"}
        print(f"smoke search: {' '.join(command[1:])} ...", flush=True)
        started = time.time()
        try:
            done = subprocess.run(command, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s)
            code, output = done.returncode, done.stdout + done.stderr
        except subprocess.TimeoutExpired as exc:
            code, output = None, f"timed out after {timeout_s:.0f} s\n{exc.stdout or ''}{exc.stderr or ''}"
        seconds = time.time() - started
    return {"command": "python " + " ".join(command[1:]), "exit_code": code, "seconds": seconds,
            "output_tail": output[-3000:] if isinstance(output, str) else str(output)[-3000:]}


# ---------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--export-dir", type=Path, default=Path("/tmp/lobsearch-bench-windowed"))
    parser.add_argument("--days", type=int, default=20)
    parser.add_argument("--windows", type=int, default=1500, help="windows per day (default: 1500)")
    parser.add_argument("--window", type=int, default=100, help="T, rows per window (default: 100)")
    parser.add_argument("--stride", type=int, default=10, help="rows between window starts (default: 10)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of measurements; 0: none (default: 3)")
    parser.add_argument("--cpus", type=int, nargs="+", choices=(1, 2), default=[2],
                        help="Ray CPUs of the lobsearch measurements (default: 2)")
    parser.add_argument("--settle", type=float, default=pre.SETTLE_S,
                        help=f"seconds of quiet before each measured step (default: {pre.SETTLE_S:g})")
    pre.add_page_cache_option(parser)
    parser.add_argument("--smoke-search", action="store_true",
                        help="also run the lstm.yaml smoke search on the export and report its exit status and time")
    parser.add_argument("--smoke-timeout", type=float, default=1800.0)
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    parser.add_argument("--worker", choices=("numpy", "ray-1", "ray-2", "auto-2"), help=argparse.SUPPRESS)
    parser.add_argument("--scratch", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    pre.SETTLE_S = args.settle  # read by preprocess._settle, here and in the workers
    export = args.export_dir.expanduser().resolve()
    pre.use_page_cache(export, args.page_cache)
    if args.worker:
        if args.worker == "numpy":
            run = worker_numpy(export, args.scratch)
        else:
            engine, cpus = args.worker.split("-")
            run = pre.worker_ray(export, args.scratch, int(cpus), engine)
        args.result.write_text(json.dumps(run))
        return 0
    if args.days < 1 or args.windows < 2 or args.window < 2 or args.stride < 1:
        parser.error("need --days >= 1, --windows >= 2, --window >= 2 and --stride >= 1")
    pre._import_psutil()
    facts = ensure_export(export, args.days, args.windows, args.window, args.stride, args.seed)
    figures = {"export": facts, "command": " ".join([Path(sys.executable).name, *sys.argv]),
               "page_cache": args.page_cache, "load_average_before": os.getloadavg()}
    if args.rounds > 0:
        kinds = ("numpy", *(f"ray-{c}" for c in sorted(set(args.cpus))), "auto-2")
        runs, checks = run_rounds(export, args.rounds, kinds)
        summary = summarize(runs, facts)
        figures.update(summary=summary, targets=targets(summary), outputs_identical=checks, runs=runs)
    smoke = smoke_search(export, args.smoke_timeout) if args.smoke_search else None
    figures.update(smoke_search=smoke, load_average_after=os.getloadavg())
    if args.rounds > 0:
        print_tables(figures["summary"], facts, figures["outputs_identical"], args.rounds, smoke)
    elif smoke is not None:
        print_smoke(smoke)
    if args.out:
        args.out.write_text(json.dumps(figures, indent=1))
        print(f"figures written to {args.out}")
    failed = [name for name, check in figures.get("outputs_identical", {}).items() if not check["identical"]]
    return 1 if failed or (smoke is not None and smoke["exit_code"] != 0) else 0


if __name__ == "__main__":
    sys.exit(main())

"""Preprocessing throughput and memory: lobsearch's Ray Data pipeline against plain numpy.

    python bench/preprocess.py --out /tmp/preprocess.json     # 40 days x 50,000 rows x 98, 3 rounds

The export (float64 on disk, 1.57 GB at the default size) is written once by
``lobsearch.synth.write_synthetic_export`` into ``--export-dir`` and reused while its manifest
says the same days, rows and seed.

Each measurement runs in its own process (this script with ``--worker``), so the peaks and
caches of one never reach the next:

- ``numpy``: the plain single-process reference written below (``numpy_reference``): per day
  ``np.load``, the three gates, Chan moments of the passing rows of the training days, then every
  day z-scored in float64 with the training statistics (gate/categorical/version columns kept,
  clip at 10) and saved as float32 ``x``, int8 ``labels``, bool ``row_ok`` and the raw
  (MID_PRICE, SPREAD) ``quotes`` npy files, and the empty ``forward`` one (a flat day's exits are
  its rows).
- ``ray-1`` / ``ray-2``: ``ray.init(num_cpus=1 or 2)``, then ``prepare(engine="ray")`` into a
  fresh cache folder (``cold``: the first Ray Data run of the session, so it includes starting
  and importing the Ray Data workers), then once more into another fresh folder (``warm``).
  ``ray.init`` itself is timed apart and not counted.
- ``auto-2``: the same with ``prepare``'s default engine (``auto``, as a search prepares:
  ``pipeline.choose_engine`` picks Ray Data or this process per call); the table names the
  engine it chose.

Throughput is the export's rows divided by the seconds of the measured step. Memory is sampled
from this process over the worker's whole process tree (the worker and every descendant: for Ray
the raylet, GCS, agents and every Ray worker process) with psutil: the peak of the summed RSS
(shared pages counted once per process that maps them; every 0.1 s) and of the summed PSS (shared
pages divided among their processes: the tree's actual footprint; every 1 s, see TreeSampler). The reference's and
lobsearch's outputs are compared bit for bit. Rounds alternate the order of the measurements,
and medians are reported, because this machine is shared. Each measurement's outputs are
deleted once measured (round 1 keeps numpy's for the comparison; ``cold``'s are deleted before
``warm``), and each measured step starts after its predecessors' writes are flushed and their
freed pages are gone (``_settle``): otherwise a step's cost for writing its 0.8 GB of outputs
would depend on how recently another step deleted its own (0.15 against 1.5 CPU-s here). Then
the export's files are read once, so that every step finds the export in the page cache
(``PAGE_CACHE``; ``--page-cache as-is`` leaves them as they are).

Targets (2-core machine): lobsearch at 2 CPUs >= 1.0x the reference's rows/s; lobsearch's peak
RSS <= 1.5 x the float32 size of the largest split + 1.5 GiB.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

GIB = 1024**3
SAMPLE_S = 0.1
PSS_EVERY = 10
MEASUREMENTS = ("numpy", "ray-1", "ray-2", "auto-2")


# ---------------------------------------------------------------- the plain numpy reference


def _gate(x: np.ndarray) -> np.ndarray:
    """(N,) bool: BOOK_VALID >= 0.5, MBO_READY >= 0.5 and INVALIDITY_DELTA == 0."""
    return (x[:, 92] >= 0.5) & (x[:, 94] >= 0.5) & (x[:, 96] == 0)


def _day_paths(export: Path) -> list[tuple[str, str, Path]]:
    """(split, date, features path) of every day, chronological."""
    days = [(split, p.name[:8], p) for split in ("train", "val", "test")
            for p in (export / split).glob("*_features.npy")]
    return sorted(days, key=lambda d: d[1])


def _train_moments(days: list[tuple[str, str, Path]]) -> tuple[int, np.ndarray, np.ndarray]:
    """Chan-combined count, mean and m2 of the passing rows of the training days."""
    count, mean, m2 = 0, None, None
    for split, _, path in days:
        if split != "train":
            continue
        x = np.load(path)
        rows = x[_gate(x)]
        n, day_mean = rows.shape[0], rows.mean(axis=0)
        day_m2 = ((rows - day_mean) ** 2).sum(axis=0)
        if count == 0:
            count, mean, m2 = n, day_mean, day_m2
            continue
        total = count + n
        delta = day_mean - mean
        mean = mean + delta * (n / total)
        m2 = m2 + day_m2 + delta * delta * (count * n / total)
        count = total
    return count, mean, m2


def numpy_reference(export: Path, out: Path) -> int:
    """Gate, fit train-only z-scores and write every day as lobsearch does; returns rows done."""
    days = _day_paths(export)
    count, mean, m2 = _train_moments(days)
    std = np.sqrt(m2 / count)
    std = np.where(std <= 1e-10 * np.abs(mean), 1.0, std)
    scaled = np.ones(mean.shape[0], dtype=bool)
    scaled[[92, 93, 94, 96, 97]] = False
    shift, scale, bound = np.where(scaled, mean, 0.0), np.where(scaled, std, 1.0), np.where(scaled, 10.0, np.inf)
    rows = 0
    for i, (split, date, path) in enumerate(days):
        x = np.load(path)
        ok = _gate(x)
        quotes = np.ascontiguousarray(x[:, [40, 41]])  # raw MID_PRICE and SPREAD, kept for evaluation
        x -= shift
        x /= scale
        np.clip(x, -bound, bound, out=x)
        labels = np.load(path.with_name(f"{date}_labels.npy")).astype(np.int8) + 1
        stem = out / f"{i:04d}_{split}_{date}"
        np.save(f"{stem}_x.npy", x.astype(np.float32))
        np.save(f"{stem}_labels.npy", labels)
        np.save(f"{stem}_row_ok.npy", ok)
        np.save(f"{stem}_quotes.npy", quotes)
        np.save(f"{stem}_forward.npy", np.empty((0, 0)))  # a flat day's exits are its rows
        rows += x.shape[0]
    return rows


# ---------------------------------------------------------------- workers (one per measurement)


def worker_numpy(export: Path, scratch: Path) -> dict:
    out = scratch / "numpy"
    out.mkdir()
    started = time.time()
    rows = numpy_reference(export, out)
    return {"phases": {"run": [started, time.time()]}, "rows": rows, "output": str(out)}


def worker_ray(export: Path, scratch: Path, cpus: int, engine: str = "ray") -> dict:
    """``ray.init(num_cpus=cpus)``, then a cold and a warm ``prepare(engine=engine)``."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    from lobsearch.config import PrepConfig
    from lobsearch.data.pipeline import prepare, prepared_root

    started = time.time()
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    phases, engines = {"ray.init": [started, time.time()]}, {}
    for phase in ("cold", "warm"):
        if phase == "warm":
            shutil.rmtree(scratch / f"ray-{cpus}-cold")
        _settle()
        begun = time.time()
        prepared = prepare(export, PrepConfig(), cache_dir=scratch / f"ray-{cpus}-{phase}", engine=engine)
        phases[phase], engines[phase] = [begun, time.time()], prepared.engine
        rows, key = sum(d.num_samples for days in prepared.splits.values() for d in days), prepared.key
        del prepared  # its memory maps would keep the deleted files' pages in the page cache
    ray.shutdown()
    return {"phases": phases, "rows": rows, "engines": engines,
            "output": str(prepared_root(scratch / f"ray-{cpus}-warm") / key)}


def measurement_label(kind: str, phase: str, runs: list[dict]) -> str:
    """The table's name of a ``ray-N`` or ``auto-N`` measurement's phase: the engine that ran it."""
    engine, cpus = kind.split("-")
    cpus_text = f"{cpus} CPU{'s' * (cpus != '1')}"
    if engine == "ray":
        return f"lobsearch Ray Data, {cpus_text}, {phase}"
    chosen = sorted({r["engines"][phase] for r in runs})
    return f"lobsearch default (auto: {' / '.join(chosen)}), {cpus_text}, {phase}"


# ---------------------------------------------------------------- measuring a worker's process tree


class TreeSampler(threading.Thread):
    """Samples a process and its descendants every SAMPLE_S seconds: summed RSS, process count,
    and the CPU seconds (user + system) the tree has used so far (an exited process keeps what it
    had used when last seen); every PSS_EVERY-th sample also the summed PSS. PSS needs
    /proc/PID/smaps, whose reading costs about 1.2 ms of CPU per Ray process and holds that
    process's memory-map lock: read every 0.1 s it slowed the Ray side measurably, the
    one-process reference hardly at all."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        import psutil

        self.psutil, self.root = psutil, psutil.Process(pid)
        self.samples: list[tuple[float, int, int, int, float]] = []  # (time, rss, pss, processes, cpu)
        self.cpu: dict[int, float] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except self.psutil.Error:
                break
            with_pss = len(self.samples) % PSS_EVERY == 0
            rss = pss = n = 0
            for proc in procs:
                try:
                    info = proc.memory_full_info() if with_pss else proc.memory_info()
                    cpu = proc.cpu_times()
                except self.psutil.Error:
                    continue
                rss, pss, n = rss + info.rss, pss + (info.pss if with_pss else 0), n + 1
                self.cpu[proc.pid] = cpu.user + cpu.system
            self.samples.append((time.time(), rss, pss if with_pss else -1, n, sum(self.cpu.values())))
            self.done.wait(SAMPLE_S)

    def peak(self, start: float, end: float) -> dict:
        """Peaks of memory and the CPU seconds used between ``start`` and ``end`` (time.time())."""
        inside = [s for s in self.samples if start <= s[0] <= end] or self.samples[-1:]
        before = [s[4] for s in self.samples if s[0] <= start] or [0.0]
        pss = [s[2] for s in inside if s[2] >= 0]  # None: the step was shorter than PSS_EVERY samples
        return {"rss": max(s[1] for s in inside), "pss": max(pss) if pss else None,
                "processes": max(s[3] for s in inside), "cpu_s": inside[-1][4] - before[-1]}


def _import_psutil() -> None:
    """psutil, from the environment or from the copy Ray ships (``import ray`` puts it on the path)."""
    try:
        import psutil  # noqa: F401
    except ImportError:
        import ray  # noqa: F401
        import psutil  # noqa: F401


def measure(kind: str, export: Path, scratch: Path) -> dict:
    """Run one measurement in a child process: its phases, rows, and per phase (and ``before`` the
    measured step) the tree's memory peaks and CPU seconds."""
    result_file = scratch / f"{kind}.json"
    command = [sys.executable, __file__, "--worker", kind, "--export-dir", str(export), "--scratch", str(scratch),
               "--result", str(result_file), "--page-cache", "warm" if PAGE_CACHE else "as-is"]
    load = os.getloadavg()[0]
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    sampler = TreeSampler(child.pid)
    sampler.start()
    _, stderr = child.communicate()
    sampler.done.set()
    sampler.join()
    if child.returncode != 0:
        raise RuntimeError(f"worker {kind} failed (exit {child.returncode}):\n{stderr[-3000:]}")
    result = json.loads(result_file.read_text())
    result["seconds"] = {name: end - start for name, (start, end) in result["phases"].items()}
    result["tree"] = {name: sampler.peak(start, end) for name, (start, end) in result["phases"].items()}
    result["load_average_1min_before"] = load
    phases = result["phases"]
    result["tree"]["before"] = sampler.peak(0, (phases["cold"] if "cold" in phases else phases["run"])[0])
    return result


# ---------------------------------------------------------------- the export, rounds and the table


def ensure_export(folder: Path, days: int, rows: int, seed: int) -> dict:
    """Reuse the export in ``folder`` when its manifest matches, else write it. Returns facts about it."""
    from lobsearch.synth import write_synthetic_export

    manifest = folder / "dataset_manifest.json"
    wanted = {"days": days, "rows": rows, "seed": seed}
    if manifest.is_file():
        generator = json.loads(manifest.read_text()).get("generator", {})
        if {k: generator.get(k) for k in wanted} != wanted:
            sys.exit(f"{folder}: holds another export ({generator}); pass a new --export-dir")
    else:
        print(f"writing the synthetic export into {folder} (once) ...", flush=True)
        write_synthetic_export(folder, days=days, rows=rows, seed=seed)
    files = list(folder.glob("*/*_features.npy"))
    splits = {s: len(list((folder / s).glob("*_features.npy"))) for s in ("train", "val", "test")}
    first = np.load(files[0], mmap_mode="r")
    return {"path": str(folder), "days": len(files), "rows_per_day": rows, "columns": first.shape[1],
            "dtype": str(first.dtype), "bytes": sum(f.stat().st_size for f in files), "days_per_split": splits}


def compare_outputs(reference: Path, lobsearch: Path) -> dict:
    """Whether every x, labels, row_ok and quotes array of the two outputs is identical."""
    names = sorted(p.name for p in reference.glob("*.npy"))
    same = names == sorted(p.name for p in lobsearch.glob("*.npy"))
    for name in names if same else []:
        same = same and np.array_equal(np.load(reference / name), np.load(lobsearch / name))
    return {"files": len(names), "identical": bool(same)}


def run_rounds(export: Path, rounds: int) -> tuple[dict[str, list[dict]], dict]:
    """``rounds`` of every measurement, in a rotated order; plus the output comparison of round 1."""
    runs: dict[str, list[dict]] = {kind: [] for kind in MEASUREMENTS}
    check = {}
    for r in range(rounds):
        order = MEASUREMENTS[r % len(MEASUREMENTS):] + MEASUREMENTS[:r % len(MEASUREMENTS)]
        with tempfile.TemporaryDirectory(prefix="lobsearch-bench-") as scratch:
            for kind in order:
                _settle()
                folder = Path(scratch) / kind
                folder.mkdir()
                result = measure(kind, export, folder)
                runs[kind].append(result)
                timings = ", ".join(f"{k} {v:.2f} s" for k, v in result["seconds"].items())
                print(f"round {r + 1} {kind} (load {result['load_average_1min_before']:.1f}): {timings}", flush=True)
                if r == 0 and kind == "numpy":  # round 1 compares it with every lobsearch output
                    continue
                if r == 0:
                    check[kind] = compare_outputs(Path(runs["numpy"][0]["output"]), Path(result["output"]))
                shutil.rmtree(folder)
            shutil.rmtree(Path(scratch) / "numpy", ignore_errors=True)
    return runs, check


PAGE_CACHE: Path | None = None
"""The export whose files ``_settle`` reads once before each measured step (None: left as they
are), so that every step finds the export in the page cache. This VM pages out files idle for
about a minute (DAMON reclaim), so otherwise a step's time depended on how long ago another step
had read the export: the reference once took 27.7 s instead of 9.9 s, reading a 4.7 GB export
from disk, and 9.5 s instead of 0.45 s on the windowed export. The other fair state, every step
reading the export from disk, cannot be had here: the files' pages can be dropped from this
machine's page cache (``posix_fadvise`` DONTNEED), but the host caches the disk too, so a step
that reads the export soon after another one reads it from the host's memory (0.3 s for 236 MB,
against 9.5 s for the whole export read cold; measured)."""

SETTLE_S = 10.0
"""Seconds of quiet before each measured step. On this machine (a VM), 3-6 s after files are
deleted (their pages are, by all appearances, handed back to the host), writing 0.8 GB of files
costs 1.4-1.6 CPU-s instead of 0.15-0.2 (measured). Every step thus writes into pages the page
cache must newly take, as a first cache on a quiet machine does, whatever ran before it."""


def _settle() -> None:
    """Flush what the previous steps wrote (their outputs are deleted by then) and wait SETTLE_S,
    so that every measured step starts from the same state of the machine's memory; then read
    the ``PAGE_CACHE`` export's files once."""
    os.sync()
    time.sleep(SETTLE_S)
    if PAGE_CACHE is not None:
        read_into_page_cache(PAGE_CACHE)


def read_into_page_cache(folder: Path) -> None:
    """Every file under ``folder`` read once, through one 16 MiB buffer."""
    buffer = bytearray(16 << 20)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        with open(path, "rb", buffering=0) as handle:
            while handle.readinto(buffer):
                pass


def summarize(runs: dict[str, list[dict]], facts: dict) -> dict:
    """Medians per row of the table, the targets and whether they are met."""
    rows = runs["numpy"][0]["rows"]
    lines = {"numpy reference, 1 process": ("numpy", "run")}
    for kind in MEASUREMENTS[1:]:
        for phase in ("cold", "warm"):
            lines[measurement_label(kind, phase, runs[kind])] = (kind, phase)
    base = statistics.median(r["seconds"]["run"] for r in runs["numpy"])
    table = {}
    for label, (kind, phase) in lines.items():
        seconds = statistics.median(r["seconds"][phase] for r in runs[kind])
        table[label] = {
            "kind": kind, "phase": phase, "seconds": seconds, "rows_per_s": rows / seconds, "ratio_vs_numpy": base / seconds,
            "peak_rss_gib": statistics.median(r["tree"][phase]["rss"] for r in runs[kind]) / GIB,
            "peak_pss_gib": _median_or_none([r["tree"][phase]["pss"] for r in runs[kind]], GIB),
            "processes": max(r["tree"][phase]["processes"] for r in runs[kind]),
            "cpu_s": statistics.median(r["tree"][phase]["cpu_s"] for r in runs[kind]),
        }
    largest = max(facts["days_per_split"].values()) * facts["rows_per_day"] * facts["columns"] * 4
    memory_target = (1.5 * largest + 1.5 * GIB) / GIB
    ray_init = statistics.median(r["seconds"]["ray.init"] for r in runs["ray-2"])
    return {"table": table, "rows": rows, "ray_init_s": ray_init, "memory_target_gib": memory_target,
            "largest_split_float32_gib": largest / GIB}


def _median_or_none(values: list, unit: float) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) / unit if known else None


def _gib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}G"


def print_table(summary: dict, facts: dict, check: dict, rounds: int) -> None:
    print(f"\nexport: {facts['days']} days x {facts['rows_per_day']:,} rows x {facts['columns']} columns, "
          f"{facts['dtype']} on disk ({facts['bytes'] / 1e9:.2f} GB), splits {facts['days_per_split']}; "
          f"{summary['rows']:,} rows; medians of {rounds} round(s); {os.cpu_count()} CPUs here; "
          f"export read into the page cache before each step: {'yes' if PAGE_CACHE else 'no'}")
    header = (f"{'':38} {'seconds':>8} {'rows/s':>10} {'x numpy':>8} {'CPU s':>6} "
              f"{'peak RSS':>9} {'peak PSS':>9} {'procs':>5}")
    print(header + "\n" + "-" * len(header))
    for label, row in summary["table"].items():
        print(f"{label:38} {row['seconds']:8.2f} {row['rows_per_s']:10,.0f} {row['ratio_vs_numpy']:8.2f} {row['cpu_s']:6.1f} "
              f"{row['peak_rss_gib']:8.2f}G {_gib(row['peak_pss_gib']):>9} {row['processes']:5d}")
    identical = ", ".join(f"{kind} {c['identical']} ({c['files']} files)" for kind, c in check.items())
    print(f"ray.init (not counted above): {summary['ray_init_s']:.1f} s. Outputs of round 1 identical to numpy's: "
          f"{identical}")
    print(f"targets: lobsearch 2 CPUs >= 1.00x numpy rows/s; peak RSS <= 1.5 x {summary['largest_split_float32_gib']:.2f} GiB "
          f"(largest split, float32) + 1.5 GiB = {summary['memory_target_gib']:.2f} GiB")
    for label, row in summary["table"].items():
        if row["kind"] == "numpy" or not row["kind"].endswith("-2"):
            continue
        print(f"  {label}: throughput {'met' if row['ratio_vs_numpy'] >= 1.0 else 'MISSED'} ({row['ratio_vs_numpy']:.2f}x), "
              f"memory {'met' if row['peak_rss_gib'] <= summary['memory_target_gib'] else 'MISSED'} "
              f"({row['peak_rss_gib']:.2f} GiB RSS)")


def add_page_cache_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--page-cache", choices=("warm", "as-is"), default="warm",
                        help="the export's files before each measured step: read once, so that the step finds "
                             "them in the page cache (warm, the default), or left as they are (as-is)")


def use_page_cache(export: Path, state: str) -> None:
    """Set ``PAGE_CACHE`` for ``_settle`` (here and, through ``--page-cache``, in the workers)."""
    global PAGE_CACHE
    PAGE_CACHE = export if state == "warm" else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--export-dir", type=Path, default=Path("/tmp/lobsearch-bench-export"))
    parser.add_argument("--days", type=int, default=40)
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    add_page_cache_option(parser)
    parser.add_argument("--worker", choices=MEASUREMENTS, help=argparse.SUPPRESS)
    parser.add_argument("--scratch", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    export = args.export_dir.expanduser().resolve()
    use_page_cache(export, args.page_cache)
    if args.worker:
        if args.worker == "numpy":
            run = worker_numpy(export, args.scratch)
        else:
            engine, cpus = args.worker.split("-")
            run = worker_ray(export, args.scratch, int(cpus), engine)
        args.result.write_text(json.dumps(run))
        return 0
    _import_psutil()
    facts = ensure_export(export, args.days, args.rows, args.seed)
    load_before = os.getloadavg()
    runs, check = run_rounds(export, args.rounds)
    summary = summarize(runs, facts)
    print_table(summary, facts, check, args.rounds)
    if args.out:
        figures = {"export": facts, "summary": summary, "outputs_identical": check, "runs": runs,
                   "page_cache": args.page_cache,
                   "load_average_before": load_before, "load_average_after": os.getloadavg(),
                   "command": " ".join([Path(sys.executable).name, *sys.argv])}
        args.out.write_text(json.dumps(figures, indent=1))
        print(f"figures written to {args.out}")
    return 0 if all(c["identical"] for c in check.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

"""How a normalized day reaches its cache file: whole day in memory + ``np.save`` against
lobsearch's chunk-by-chunk stream (``normalize.normalized_chunks`` into ``pipeline._write_npy``).

    python bench/write_path.py --rounds 2      # the export bench/preprocess.py writes

One process normalizes every day of the export with the statistics of its first day and writes
it into a fresh folder, one way per pass; the ways alternate, and each pass starts after the
previous pass's files are deleted, flushed and 10 s of quiet (as in ``bench/preprocess.py``, so
that every pass writes into pages the page cache must newly take). Reports CPU and wall seconds
per pass and the ratio, and checks that both ways wrote the same bytes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lobsearch.data.gating import gate_rows
from lobsearch.data.normalize import day_moments, norm_stats, normalize_day, normalized_chunks
from lobsearch.data.pipeline import _write_npy

SETTLE_S = 10.0
SCHEMA = 2.1


def whole_day(features: np.ndarray, stats, row_ok: np.ndarray, path: Path) -> None:
    np.save(path, normalize_day(features, stats, schema_version=SCHEMA, row_ok=row_ok))


def streamed(features: np.ndarray, stats, row_ok: np.ndarray, path: Path) -> None:
    _write_npy(path, features.shape, normalized_chunks(features, stats, schema_version=SCHEMA, row_ok=row_ok))


WAYS = {"whole day + np.save": whole_day, "chunks streamed": streamed}


def one_pass(way, days: list[Path], stats, folder: Path) -> tuple[float, float]:
    """CPU and wall seconds to write every day ``way``."""
    cpu, wall = time.process_time(), time.perf_counter()
    for i, path in enumerate(days):
        features = np.load(path, mmap_mode="r")
        way(features, stats, gate_rows(features).row_ok, folder / f"{i:04d}_x.npy")
    return time.process_time() - cpu, time.perf_counter() - wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--export-dir", type=Path, default=Path("/tmp/lobsearch-bench-export"))
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    days = sorted(args.export_dir.glob("*/*_features.npy"))
    if not days:
        sys.exit(f"{args.export_dir}: no *_features.npy files (run bench/preprocess.py once to write the export)")
    first = np.load(days[0], mmap_mode="r")
    stats = norm_stats(day_moments(first, gate_rows(first).row_ok, SCHEMA))
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in WAYS}
    with tempfile.TemporaryDirectory(prefix="lobsearch-write-path-") as scratch:
        kept: dict[str, Path] = {}
        for r in range(args.rounds):
            for name, way in WAYS.items():
                os.sync()
                time.sleep(SETTLE_S)
                folder = Path(scratch) / f"{r}-{len(kept)}"
                folder.mkdir()
                results[name].append(one_pass(way, days, stats, folder))
                print(f"round {r + 1} {name}: {results[name][-1][0]:.2f} CPU-s, {results[name][-1][1]:.2f} s", flush=True)
                if r == 0:
                    kept[name] = folder
                else:
                    shutil.rmtree(folder)
            if r == 0:
                a, b = (kept[name] for name in WAYS)
                same = all((a / f.name).read_bytes() == f.read_bytes() for f in sorted(b.iterdir()))
                for folder in kept.values():
                    shutil.rmtree(folder)
    print(f"\n{len(days)} days, medians of {args.rounds} round(s); files identical: {same}")
    cpu = {name: statistics.median(c for c, _ in runs) for name, runs in results.items()}
    for name, runs in results.items():
        print(f"{name:22} {cpu[name]:6.2f} CPU-s {statistics.median(w for _, w in runs):6.2f} s")
    base, ours = cpu.values()
    print(f"chunks streamed: {base / ours:.2f}x less CPU than whole day + np.save")
    return 0


if __name__ == "__main__":
    sys.exit(main())

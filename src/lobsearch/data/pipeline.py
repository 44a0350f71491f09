"""The Ray Data part: shard day files across workers, gate and normalize them, cache the result.

One Ray Dataset row per day file, consecutive days grouped into a few blocks per CPU, so days
spread over the cluster's workers. Two passes:

1. per day (on the workers), only for the days whose statistics the mode needs (mode ``train``:
   the training days): load, gate, count rows and windows dropped per gate and the label
   balance, and compute Chan partial moments of the passing rows. The partials are combined on
   the driver (a few KB per day), so training statistics never need the rows themselves in one
   place;
2. per day (on the workers): normalize with the statistics that day uses (mode ``train``: those
   of the training days only), and, for the days pass 1 did not read, count what pass 1 counts
   (a day pass 1 read is neither counted nor scanned again). A worker that sees the cache folder
   (same node, or shared storage) writes the float32 rows there itself, chunk by chunk as they
   are normalized, then the labels, the gate mask and the raw MID_PRICE and SPREAD of each row
   (for trading metrics; 16 bytes a row at most); otherwise they travel back to the driver.

A windowed day is prepared as the rows its ``layout.WindowLayout`` lays out (its contiguous rows,
recovered once, or its independent windows one after another), and the layout travels with the
day, so that trials cut windows only where exported windows end. Columns the export already
normalized (``days.exported_normalization``) are left as they are; ``prepared.json`` lists every
column as z-scored, export-normalized or left raw on purpose.

Every task's result travels pickled, and a DataError raised on a worker is raised again on the
driver as itself. The output of a prep config is cached under a key that hashes the export's
files (name, size, mtime) and the config. The cache is written to a temporary folder and
renamed into place, so an interrupted write never looks complete; a file lock makes concurrent
requests compute it once. Trials receive ``Prepared`` through the object store
(``tune.with_parameters``), never a path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import pickle
import shutil
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lobsearch.contract import QUOTE_COLUMNS, FeatureIndex
from lobsearch.data.claims import EXPORT_CONFIG_NAME, MANIFEST_NAME
from lobsearch.data.days import (
    DataWarning,
    DayFile,
    Export,
    LabelRule,
    discover_export,
    load_day,
    raw_metadata_note,
    rows_bytes,
)
from lobsearch.data.gating import (
    RULES,
    GateResult,
    gate_rows,
    window_gate_counts,
    window_ok,
)
from lobsearch.data.layout import WindowLayout
from lobsearch.data.manifest import ManifestDays
from lobsearch.data.normalize import (
    DROP,
    Moments,
    NormStats,
    day_moments,
    normalize_day,
    normalized_chunks,
    stats_for_days,
)
from lobsearch.errors import DataError, unknown_choice

if TYPE_CHECKING:
    from lobsearch.config import PrepConfig

PIPELINE_VERSION = "5"
"""Bumped when the prepared arrays change meaning, so old caches miss."""

REPORT_WINDOW = 100
"""Window size (stride 1) for which the gate report counts the windows of a flat day dropped per
rule; on a windowed day it counts the exported windows."""

BLOCKS_PER_CPU = 2
"""Blocks (Ray Data tasks) per cluster CPU, each holding consecutive days (one day per block when
there are fewer days): enough to balance the load, few enough that Ray Data's cost per task (tens
of ms on a small machine, as much as a day's work) stays small."""

FREE_CPU_WAIT_S = 2.0
"""How long the cluster must show no free CPU before the data tasks run without one."""

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class PreparedDay:
    """One day ready for windowing: x (N, F) float32 normalized, labels (N, H) int8 with -1 for
    none, row_ok (N,) bool (passes the enabled gates); layout: a windowed day's exported windows
    among those rows (``layout.WindowLayout``), None for a flat day; quotes: (N, 2) raw
    MID_PRICE and SPREAD of each row (USD, the export's float dtype), for trading metrics, None
    when the export has no raw ones (``raw_quotes``); forward: (M, maxH + 1) float64 exit mids of
    a day whose M windows do not overlap (``window_exits``), None where the rows serve."""

    date: str
    split: str
    x: np.ndarray
    labels: np.ndarray
    row_ok: np.ndarray
    layout: WindowLayout | None = None
    quotes: np.ndarray | None = None
    forward: np.ndarray | None = None

    @property
    def num_samples(self) -> int:
        return int(self.x.shape[0])

    @property
    def mid(self) -> np.ndarray | None:
        """(N,) raw MID_PRICE in USD, None without quotes."""
        return None if self.quotes is None else self.quotes[:, 0]

    @property
    def spread(self) -> np.ndarray | None:
        """(N,) raw SPREAD (ask minus bid) in USD, None without quotes."""
        return None if self.quotes is None else self.quotes[:, 1]


@dataclass(frozen=True, eq=False)
class Prepared:
    """Every split of one export under one prep config; ``label_strategy`` names the classes of
    its labels (``contract.STRATEGY_CLASS_NAMES``); ``quotes_note`` says why some day has no raw
    quotes (``PreparedDay.quotes``), None when every day has them."""

    key: str
    horizons: tuple[int, ...]
    n_features: int
    splits: dict[str, list[PreparedDay]]
    stats: NormStats | None
    gate_report: dict[str, Any]
    label_strategy: str = "tlob"
    quotes_note: str | None = None
    from_cache: bool = field(default=False, compare=False)
    engine: str = field(default="cache", compare=False)

    def stats_digest(self) -> str:
        """Hash of the normalization statistics (checkpoints record what they were trained on)."""
        if self.stats is None:
            return "none"
        digest = hashlib.sha256(self.stats.mean.tobytes() + self.stats.std.tobytes()).hexdigest()
        return digest[:16]

    def summary(self) -> str:
        parts = []
        for split, days in self.splits.items():
            rows = sum(d.num_samples for d in days)
            parts.append(f"{split} {len(days)} days / {rows:,} rows")
        dropped = self.gate_report.get("totals", {}).get("rows_dropped", 0)
        gone = len(self.gate_report.get("days_skipped_by_export", [])) + self.gate_report.get("days_skipped_unnamed", 0)
        skipped = f"; {gone} day(s) not exported, as its manifest says (see the gate report)" if gone else ""
        return ", ".join(parts) + f"; {dropped:,} rows fail the gates" + skipped


CACHE_ENV = "LOBSEARCH_CACHE"
"""Environment variable naming the cache folder (prepared data, the demo export)."""


def cache_root(folder: str | Path | None = None) -> Path:
    """The cache folder, absolute and created if missing: ``folder``, else ``$LOBSEARCH_CACHE``,
    else ``~/.cache/lobsearch``. On a cluster point it at shared storage.

    Raises DataError naming where the path came from (the argument, the variable or the default)
    when it is not a folder, cannot be created, or cannot be written.
    """
    path, where, fix = _cache_choice(folder)
    problem = _folder_problem(path)
    if problem:
        raise DataError(f"{where}: {problem}; {fix} lobsearch can create and write")
    return path


def _cache_choice(folder: str | Path | None) -> tuple[Path, str, str]:
    """(absolute path, how a message names it, how to choose another) of the cache folder."""
    if folder:
        path = Path(folder).expanduser().resolve()
        return path, f"cache folder {path}", "pass a folder"
    if os.environ.get(CACHE_ENV):
        path = Path(os.environ[CACHE_ENV]).expanduser().resolve()
        return path, f"{CACHE_ENV}={path}", f"point {CACHE_ENV} at a folder"
    path = (Path.home() / ".cache" / "lobsearch").resolve()
    return path, f"default cache folder {path}", f"set {CACHE_ENV} to a folder"


def _folder_problem(path: Path) -> str | None:
    """Why ``path`` cannot be a folder lobsearch writes, or None; creates it (and parents) when missing."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        return "not a directory (a file is there)"
    except NotADirectoryError:
        blocker = next(parent for parent in path.parents if parent.exists())
        return f"cannot be created ({blocker} is a file)"
    except OSError as exc:
        return f"cannot be created ({exc.strerror}: {exc.filename})"
    if not os.access(path, os.W_OK | os.X_OK):
        return "not writable"
    return None


def cache_key(export: Export, prep: PrepConfig) -> str:
    """Hash of the pipeline version, the export's files, which split each day is in (a
    walk-forward fold moves days between splits, ``folds.fold_export``) and the prep config."""
    assignment = ",".join(f"{day.split}:{day.date}" for day in export.days())
    text = f"{PIPELINE_VERSION}|{export.fingerprint()}|{assignment}|{prep.digest()}"
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def label_rule(prep: PrepConfig) -> LabelRule:
    """The smoothed-return rule used when labels are computed from MID_PRICE."""
    labels = prep.labels
    return LabelRule(horizons=tuple(labels.horizons), smoothing=labels.smoothing, threshold=float(labels.threshold),
                     threshold_bps=None if labels.threshold_bps is None else float(labels.threshold_bps))


# ---------------------------------------------------------------- the per-day steps (pure)


@dataclass(frozen=True)
class DaySteps:
    """What the per-day steps read from a PrepConfig, as plain values: the pure steps take no
    config objects, and a worker unpickles a few numbers."""

    book_valid: bool
    mbo_ready: bool
    invalidity: bool
    last_row: bool
    mode: str
    clip: float
    labels: str
    rule: LabelRule


def day_steps(prep: PrepConfig) -> DaySteps:
    """The per-day settings of ``prep``."""
    g = prep.gates
    return DaySteps(book_valid=g.book_valid, mbo_ready=g.mbo_ready, invalidity=g.invalidity, last_row=g.last_row,
                    mode=prep.normalization.mode, clip=float(prep.normalization.clip), labels=prep.labels.source,
                    rule=label_rule(prep))


def _load(day_file: DayFile, steps: DaySteps, check_data: bool = True) -> Any:
    """Load one day with labels from the export (``file``, ``auto``: its labels file, else its
    regression labels) or computed from MID_PRICE (``computed``, or ``auto`` without either);
    ``check_data`` as ``days.load_day`` takes it. Raises DataError when labels cannot be had."""
    source = steps.labels
    if source == "file" and day_file.labels is None and day_file.regression_labels is None:
        raise DataError(f"{day_file.features}: no labels file beside it, and labels.source is 'file' "
                        "(use 'auto' or 'computed' to compute labels from MID_PRICE)")
    if source == "computed":
        day_file = dataclasses.replace(day_file, labels=None, regression_labels=None)
    # rows that pass the gates are checked for NaN/inf by day_moments and normalized_chunks
    day = load_day(day_file, rule=steps.rule, check_finite=False, check_data=check_data)
    if day.labels is None:
        raise DataError(f"{day_file.features}: no labels file, and too few columns to compute labels "
                        f"from the book (found {day.features.shape[1]}, need 40)")
    return day


def _gates(day: Any, steps: DaySteps) -> Any:
    return gate_rows(day.features, book_valid=steps.book_valid, mbo_ready=steps.mbo_ready,
                     invalidity=steps.invalidity)


def windows_dropped(gates: GateResult, ends: np.ndarray, window: int, *, last_row: bool = False) -> dict[str, int]:
    """Windows of ``window`` rows ending at ``ends`` (M,) dropped per rule, plus ``total`` (by
    any rule), as ``gating.window_gate_counts`` counts them at its own candidate ends."""

    def dropped(ok: np.ndarray) -> int:
        return int(ends.size - np.count_nonzero(window_ok(ok, ends, window, last_row=last_row)))

    counts = dict.fromkeys(RULES, 0)
    counts.update({name: dropped(ok) for name, ok in gates.rule_ok.items()})
    counts["total"] = dropped(gates.row_ok)
    return counts


def _windows_report(day: Any, gates: GateResult, last_row: bool) -> dict[str, int]:
    """Windows dropped per rule: REPORT_WINDOW rows at stride 1 on a flat day, the exported
    windows on a windowed day."""
    if day.layout is None:
        return window_gate_counts(gates, REPORT_WINDOW, 1, last_row=last_row)
    return windows_dropped(gates, day.layout.ends(), day.layout.window, last_row=last_row)


def _day_report(day_file: DayFile, day: Any, gates: Any, steps: DaySteps) -> dict[str, Any]:
    """What the gate report says of one day: rows and windows dropped per rule
    (``_windows_report``), label counts per horizon (class indices 0, 1, 2 of its label strategy;
    all rows), its label strategy, window layout and shape."""
    windows = _windows_report(day, gates, steps.last_row)
    # class indices 0..2 counted in bins 1..3; bin 0 takes MISSING_LABEL (-1)
    balance = [np.bincount(col + 1, minlength=4)[1:].tolist() for col in np.asarray(day.labels).T]
    return {
        "split": day_file.split,
        "date": day_file.date,
        "rows": day.num_samples,
        "rows_dropped": gates.dropped,
        "failed": gates.failed,
        "windows_dropped": windows,
        "label_balance": dict(zip(map(str, day.horizons), balance)),
        "horizons": list(day.horizons),
        "label_strategy": day.label_strategy,
        "layout": None if day.layout is None else day.layout.to_json(),
        "n_features": int(day.features.shape[1]),
        "normalized": bool(day.normalized),
        "normalized_columns": np.flatnonzero(day.normalized_columns).tolist(),
        "normalization_note": day.normalization_note,
        "quotes_note": quotes_note(day.features.shape[1], day.normalized_columns, day.layout, _has_exits(day)),
    }


def _has_exits(day: Any) -> bool:
    """Whether a loaded day's forward prices can stand in for its missing exit rows."""
    return day.forward_prices is not None and day.forward_base is not None


def quotes_note(n_features: int, normalized_columns: np.ndarray, layout: WindowLayout | None = None,
                forward: bool = False) -> str | None:
    """Why a day of ``n_features`` columns has no raw MID_PRICE and SPREAD to trade at, or None.

    normalized_columns: (F,) bool, the columns the export already normalized (a normalized
    price is no price); layout: a windowed day's, whose windows must overlap for its rows to be
    one series of the day (a position's exit row h rows later must be a row of the data), unless
    ``forward``: the day has forward prices, which give the exits (``window_exits``).
    """
    if n_features <= FeatureIndex.SPREAD:
        return (f"the export has {n_features} columns, so no MID_PRICE and SPREAD (columns "
                f"{int(FeatureIndex.MID_PRICE)} and {int(FeatureIndex.SPREAD)})")
    normalized = [int(c) for c in QUOTE_COLUMNS if normalized_columns[c]]
    if normalized:
        return f"the export normalized column(s) {normalized} (MID_PRICE, SPREAD): no raw prices to trade at"
    if layout is not None and not layout.overlapping and layout.count > 1 and not forward:
        return (f"the export's windows do not overlap (stride {layout.stride} >= T = {layout.window}) and it "
                "has no _forward_prices.npy: a day's rows are not one series, so a position's exit row is not "
                "in the data")
    return None


def raw_quotes(features: np.ndarray, normalized_columns: np.ndarray, layout: WindowLayout | None = None,
               forward: bool = False) -> np.ndarray:
    """(N, 2) raw MID_PRICE and SPREAD of (N, F) ``features``, USD, in their float dtype
    (float32 or float64; another becomes float64); (N, 0) when ``quotes_note`` finds none."""
    if quotes_note(features.shape[1], normalized_columns, layout, forward) is not None:
        return np.empty((features.shape[0], 0), dtype=np.float32)
    dtype = features.dtype if features.dtype in (np.float32, np.float64) else np.float64
    return np.ascontiguousarray(features[:, list(QUOTE_COLUMNS)], dtype=dtype)


FORWARD_RTOL = 1e-6
"""How far a forward price at a window's end may lie from MID_PRICE of its last row, relative:
float32 rounding of the features (6e-8) and nothing more."""


def window_exits(day: Any, quotes: np.ndarray, row_ok: np.ndarray) -> np.ndarray:
    """(M, maxH + 1) float64 exit mids of a day whose M exported windows do not overlap: the
    export's forward prices from column k (the window's end; column h is h rows of the day
    later, NaN past its end), which ``trading.WindowExits`` reads where no row h rows later is in
    the data. (0, 0) for every other day (rows serve, or no quotes to trade at).

    quotes: the day's ``raw_quotes``; row_ok: (N,) its gate mask. Column 0 must be MID_PRICE of
    each window's last row (within FORWARD_RTOL, on rows that pass the gates): otherwise the file
    belongs to other windows, a DataError naming it, the window and both prices.
    """
    layout = day.layout
    if layout is None or layout.overlapping or not _has_exits(day) or quotes.shape[1] == 0:
        return np.empty((0, 0), dtype=np.float64)
    exits = np.array(day.forward_prices[:, day.forward_base:], dtype=np.float64)
    ends = layout.ends()
    mid = quotes[ends, 0].astype(np.float64)
    checked = row_ok[ends] & np.isfinite(mid) & (mid > 0)
    wrong = checked & ~np.isclose(exits[:, 0], mid, rtol=FORWARD_RTOL, atol=0.0)
    if wrong.any():
        j = int(np.flatnonzero(wrong)[0])
        raise DataError(f"{getattr(day.forward_prices, 'filename', day.source)}: "
                        f"window {j}: forward price at its end (column {day.forward_base}) is {exits[j, 0]!r}, but "
                        f"MID_PRICE of its last row is {mid[j]!r} (rule: column k of _forward_prices.npy is the "
                        f"mid at the window's end; {int(wrong.sum())} of {len(ends)} windows disagree)")
    return exits


def _naming(day_file: DayFile, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, with the day's file named in any DataError it raises."""
    try:
        return fn(*args, **kwargs)
    except DataError as error:
        raise DataError(f"{day_file.features}: {error}") from None


def day_partials(day_file: DayFile, steps: DaySteps) -> dict[str, Any]:
    """Pass 1 for one day: its report plus ``moments``, the Chan partials (count, mean (F,),
    m2 (F,)) of its passing rows; no rows for a day already normalized or with mode none."""
    day = _load(day_file, steps)
    gates = _gates(day, steps)
    if day.normalized or steps.mode == "none":
        moments = Moments.empty(day.features.shape[1])
    else:
        moments = _naming(day_file, day_moments, day.features, gates.row_ok, day.schema_version)
    return {**_day_report(day_file, day, gates, steps), "moments": (moments.count, moments.mean, moments.m2)}


def day_arrays(day_file: DayFile, steps: DaySteps, stats: NormStats | None, seen: bool = False,
               into: Path | None = None) -> dict[str, Any]:
    """Pass 2 for one day: its report plus x (N, F) float32 normalized with ``stats`` (only cast
    for a day already normalized), labels (N, H) int8, row_ok (N,) bool and quotes (N, 2) or
    (N, 0) (``raw_quotes``).

    ``seen``: pass 1 loaded this day (its files unchanged since, as the cache key says): its report
    is left out (pass 1 has it) and the scans of ``load_day(check_data=False)`` are not repeated.
    With ``into`` (a path stem in the cache folder) the arrays are written to
    ``<into>_<array>.npy`` instead, x chunk by chunk as it is normalized (see
    ``normalize.normalized_chunks``), and only the report is returned.
    """
    day = _load(day_file, steps, check_data=not seen)
    gates = _gates(day, steps)
    features, day_stats = day.features, None if day.normalized else leaving_out(stats, day.normalized_columns)
    options = {"schema_version": None if day.normalized else day.schema_version, "clip": steps.clip,
               "row_ok": gates.row_ok}
    labels = np.ascontiguousarray(day.labels, dtype=np.int8)
    quotes = raw_quotes(features, day.normalized_columns, day.layout, _has_exits(day))
    forward = window_exits(day, quotes, gates.row_ok)
    report = {} if seen else _day_report(day_file, day, gates, steps)
    if into is None:
        x = _naming(day_file, normalize_day, features, day_stats, **options)
        return {**report, "x": x, "labels": labels, "row_ok": gates.row_ok, "quotes": quotes, "forward": forward}
    _naming(day_file, lambda: _write_npy(Path(f"{into}_x.npy"), features.shape,
                                         normalized_chunks(features, day_stats, **options)))
    np.save(f"{into}_labels.npy", labels)
    np.save(f"{into}_row_ok.npy", gates.row_ok)
    np.save(f"{into}_quotes.npy", quotes)
    np.save(f"{into}_forward.npy", forward)
    return report


def leaving_out(stats: NormStats | None, columns: np.ndarray) -> NormStats | None:
    """``stats`` that leave the (F,) bool ``columns`` (already normalized by the export) unscaled."""
    if stats is None or not columns.any():
        return stats
    return NormStats(stats.mean, stats.std, stats.scaled & ~columns)


def _write_npy(path: Path, shape: tuple[int, ...], chunks: Iterator[np.ndarray]) -> None:
    """Write consecutive row chunks (any float dtype) as the float32 .npy file ``path`` of
    ``shape``, through one small float32 buffer. The file appears only once complete: it is
    written as ``<path>.partial``, which is removed if the chunks raise or fall short of shape."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
              "shape": tuple(shape)}
    partial = path.with_name(path.name + ".partial")
    buffer, rows = None, 0
    try:
        with open(partial, "wb") as handle:
            np.lib.format.write_array_header_1_0(handle, header)
            for chunk in chunks:
                if buffer is None or buffer.shape[0] < chunk.shape[0]:
                    buffer = np.empty(chunk.shape, dtype=np.float32)
                part = buffer[: chunk.shape[0]]
                np.copyto(part, chunk, casting="same_kind")
                handle.write(part.data)
                rows += chunk.shape[0]
        if rows != shape[0]:
            raise ValueError(f"{path}: {rows} rows written, the header says {shape[0]}")
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------- engines

ARRAYS = ("x", "labels", "row_ok", "quotes", "forward")
"""The arrays of a prepared day, each saved as ``<name>_<array>.npy`` (quotes (N, 0) when the
day has none, forward (0, 0) where its rows give the exits)."""


@dataclass(frozen=True)
class _Task:
    """One day for one pass: its position among every day of the export, and extra arguments."""

    order: int
    day: DayFile
    args: tuple = ()

    @property
    def name(self) -> str:
        """The stem of the day's array files in the cache folder (sorts chronologically)."""
        return f"{self.order:04d}_{self.day.split}_{self.day.date}"


def _day_files(export: Export) -> list[DayFile]:
    """Every day of the export in chronological order, splits interleaved by date."""
    files = [f for split in ("train", "val", "test") for f in export.splits.get(split, ())]
    return sorted(files, key=lambda f: f.date)


def _save_arrays(result: dict[str, Any], out: Path, name: str) -> dict[str, Any]:
    """Write the day's arrays into ``out``; returns the result without them."""
    for part in ARRAYS:
        np.save(out / f"{name}_{part}.npy", result[part])
    return {k: v for k, v in result.items() if k not in ARRAYS}


def _run_task(fn: Callable[..., dict], task: _Task, steps: DaySteps, out: str | None
              ) -> dict | DataError:
    """``fn`` on one day, here or on a worker: its result, or the DataError it raised (returned,
    so that it reaches the driver as itself). ``out`` is the cache folder of a step that writes
    arrays (``day_arrays``): when this process sees it (same node, or storage every node
    mounts), the arrays are written there and never travel."""
    try:
        if out is not None and os.path.isdir(out):
            return fn(task.day, steps, *task.args, into=Path(out) / task.name)
        return fn(task.day, steps, *task.args)
    except DataError as error:
        return error


def _outcome(result: dict | DataError) -> dict:
    """The result of a task, or its DataError raised here."""
    if isinstance(result, DataError):
        raise result
    return result


Mapper = Callable[[Callable[..., dict], list[_Task], DaySteps, "Path | None"], Iterator[tuple[_Task, dict]]]
"""An engine: runs a per-day step on every task, yielding (task, result) in task order."""


def _local_map(fn: Callable[..., dict], tasks: list[_Task], steps: DaySteps, out: Path | None
               ) -> Iterator[tuple[_Task, dict]]:
    """The engine ``local``: every task in this process, one after another."""
    for task in tasks:
        yield task, _outcome(_run_task(fn, task, steps, None if out is None else str(out)))


def _ray_map(fn: Callable[..., dict], tasks: list[_Task], steps: DaySteps, out: Path | None
             ) -> Iterator[tuple[_Task, dict]]:
    """Run ``fn`` on every task as a Ray Data map, one row per day (consecutive days grouped into
    BLOCKS_PER_CPU blocks per CPU), streaming results back in order. Tasks and results travel
    pickled (exact, and no Arrow type guessing).

    On a multi-node cluster the day files travel through the object store (a worker on another
    node has no path to the driver's disk) unless ``LOBSEARCH_SHARED_EXPORT=1`` says the export
    is on storage every node mounts at the same path.
    """
    import ray
    import ray.data

    if not tasks:
        return
    start_ray()
    blobs = [ray.put(_day_bytes(t.day)) for t in tasks] if _ship_files() else None
    folder = None if out is None else str(out)

    def apply(row: dict) -> dict:
        task = pickle.loads(row["task"])
        if blobs is None:
            return {"pos": row["pos"], "result": pickle.dumps(_run_task(fn, task, steps, folder))}
        with tempfile.TemporaryDirectory(prefix="lobsearch-day-") as local:
            day_file = _write_day(ray.get(blobs[row["pos"]]), task.day, Path(local))
            shipped = dataclasses.replace(task, day=day_file)
            return {"pos": row["pos"], "result": pickle.dumps(_run_task(fn, shipped, steps, folder))}

    items = [{"pos": i, "task": pickle.dumps(task)} for i, task in enumerate(tasks)]
    blocks = min(len(items), BLOCKS_PER_CPU * max(1, int(ray.cluster_resources().get("CPU", 1))))
    with _data_context():
        dataset = ray.data.from_items(items, override_num_blocks=blocks)
        for row in dataset.map(apply, **_data_resources()).iter_rows():
            yield tasks[row["pos"]], _outcome(pickle.loads(row["result"]))


_WARMED: set[str] = set()
_WARM_UP_TASKS: list[Any] = []


def _warm_up_ray_data() -> None:
    """Start, without waiting, what the first Ray Data run of a Ray session would otherwise start
    one thing after another: Ray Data's stats actor (each dataset blocks on it for an id) and the
    imports of Ray Data and this module in the workers that will run the day tasks. Once per
    session; skipped when no CPU is free (trials hold them all and the tasks would only queue).

    Measured on 2 CPUs, 40 days x 50,000 rows: it takes about 2 s off the first ``prepare``
    after ``ray.init``; later ones are not affected.
    """
    import ray

    context = ray.get_runtime_context()
    session = f"{context.gcs_address}/{context.get_job_id()}"
    if session in _WARMED:
        return
    _WARMED.add(session)
    _WARM_UP_TASKS.clear()  # any left belong to an earlier session
    free = int(ray.available_resources().get("CPU", 0))
    if free < 1:
        return
    importer = ray.remote(num_cpus=1, max_retries=0)(_import_data_modules)
    _WARM_UP_TASKS[:] = [importer.remote() for _ in range(min(free, WARM_UP_WORKERS))]
    try:  # this import takes the driver about 0.5 s, while the workers import theirs
        from ray.data._internal.stats import get_or_create_stats_actor

        get_or_create_stats_actor()  # created in the background; Ray Data finds it by name
    except Exception as error:  # an internal of Ray Data: without it, only the speed-up is lost
        log.debug("no Ray Data stats actor warm-up: %s", error)


WARM_UP_WORKERS = 8
"""At most this many workers import Ray Data ahead of the first dataset."""

WARM_UP_WAIT_S = 10.0
"""How long the first dataset waits for the warm-up's tasks (about 1 s of imports) before it
counts free CPUs; tasks still waiting for a CPU then are cancelled."""


def _import_data_modules() -> None:
    import ray.data  # noqa: F401

    import lobsearch.data.pipeline  # noqa: F401


def start_ray(address: str | None = None) -> None:
    """Join the running Ray or the cluster at ``address``, else start a local one sized to this
    machine (no dashboard); workers' output is kept off the driver's console."""
    import ray

    if not ray.is_initialized():
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False)
    logging.getLogger("ray.data").setLevel(logging.WARNING)


@contextlib.contextmanager
def _data_context() -> Iterator[None]:
    """Ray Data settings for the pipeline's datasets, restored afterwards: output in order, no
    progress bars, and no per-operator resource reservation. Reservation keeps a one-operator map
    on a small cluster to about one task in flight (measured on 2 CPUs: 0.9 tasks in flight with
    it, 1.7 without), so the days would be prepared one at a time."""
    import ray.data

    context = ray.data.DataContext.get_current()
    options = context.execution_options
    saved = (context.enable_progress_bars, context.op_resource_reservation_enabled, options.preserve_order)
    context.enable_progress_bars, context.op_resource_reservation_enabled = False, False
    options.preserve_order = True
    try:
        yield
    finally:
        context.enable_progress_bars, context.op_resource_reservation_enabled, options.preserve_order = saved


def _ship_files() -> bool:
    """True on a multi-node cluster whose export is not declared shared."""
    import ray

    if os.environ.get("LOBSEARCH_SHARED_EXPORT") == "1":
        return False
    return sum(1 for node in ray.nodes() if node.get("Alive")) > 1


_DAY_PARTS = ("features", "labels", "metadata", "horizons", "regression_labels", "forward_prices")
"""The DayFile fields naming a day's own files."""
_EXPORT_PARTS = {"manifest": MANIFEST_NAME, "config": EXPORT_CONFIG_NAME}
"""The export's files that every day is read with."""


def _day_bytes(day_file: DayFile) -> dict[str, bytes | None]:
    """The raw bytes of one day's files and of its export's manifest and export config."""
    paths = {key: getattr(day_file, key) for key in _DAY_PARTS}
    for key, name in _EXPORT_PARTS.items():
        path = day_file.export_root / name
        paths[key] = path if path.is_file() else None
    return {k: (None if p is None else Path(p).read_bytes()) for k, p in paths.items()}


def _write_day(blob: dict[str, bytes | None], day_file: DayFile, folder: Path) -> DayFile:
    """Lay one shipped day out as a one-day export under ``folder``; returns its DayFile."""
    split_dir = folder / "export" / day_file.split
    split_dir.mkdir(parents=True)
    for key, name in _EXPORT_PARTS.items():
        if blob[key] is not None:
            (folder / "export" / name).write_bytes(blob[key])
    moved = {}
    for key in _DAY_PARTS:
        source = getattr(day_file, key)
        if source is not None:
            moved[key] = split_dir / Path(source).name
            moved[key].write_bytes(blob[key])
    return dataclasses.replace(day_file, **moved)


def _data_resources() -> dict[str, Any]:
    """CPUs a data task asks for: one when the cluster has one free, else none.

    Trials that hold every CPU would otherwise starve Ray Data's tasks forever (they wait for a
    CPU that never frees); with none free the tasks run beside the trials, two at a time. The
    cluster's view of free CPUs lags behind tasks that just ended (seen right after the first
    pass), so "none free" must hold for FREE_CPU_WAIT_S before it is believed.
    """
    import ray
    import ray.data

    if _WARM_UP_TASKS:  # their CPUs are about to be free again, not held by trials
        _, pending = ray.wait(_WARM_UP_TASKS, num_returns=len(_WARM_UP_TASKS), timeout=WARM_UP_WAIT_S)
        for ref in pending:  # never started: trials took their CPUs first
            ray.cancel(ref)
        _WARM_UP_TASKS.clear()
    deadline = time.monotonic() + FREE_CPU_WAIT_S
    while ray.available_resources().get("CPU", 0) < 1:
        if time.monotonic() > deadline:
            log.warning("every CPU in the Ray cluster is held (by trials?): data tasks run beside them, 2 at a time")
            return {"num_cpus": 0, "compute": ray.data.TaskPoolStrategy(size=2)}
        time.sleep(0.1)
    return {"num_cpus": 1}


# ---------------------------------------------------------------- driver


def prepare(
    export: Export | str | Path,
    prep: PrepConfig,
    *,
    cache_dir: str | Path | None = None,
    engine: str = "auto",
) -> Prepared:
    """Gate and normalize every day of ``export`` under ``prep``; cached, computed once per key.

    ``engine`` is ``ray`` (Ray Data; uses the running Ray, or starts a local one), ``local``
    (the same steps in this process) or ``auto`` (``choose_engine``: Ray Data where it is
    expected to finish first). The result lives in ``prepared_root(cache_dir) / key``; its
    ``engine`` says which ran (``cache`` when it was there). Raises DataError for a bad export or
    unusable data (naming the file).
    """
    if engine not in ENGINES:
        raise DataError(f"engine: {unknown_choice('engine', engine, ENGINES)}")
    export = export if isinstance(export, Export) else discover_export(export)
    key = cache_key(export, prep)
    root = prepared_root(cache_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / key
    if (final / "prepared.json").is_file():
        return load_prepared(final, from_cache=True)
    with _lock(root / f"{key}.lock"):
        if (final / "prepared.json").is_file():
            return load_prepared(final, from_cache=True)
        if engine == "auto":
            engine = choose_engine(export)
        if engine == "ray":
            start_ray()
            _warm_up_ray_data()
        _clear_stale(root, key)
        tmp = root / f"{key}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            _compute(export, prep, key, tmp, _ray_map if engine == "ray" else _local_map)
            os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dataclasses.replace(load_prepared(final), engine=engine)


ENGINES = ("auto", "ray", "local")

LOCAL_BYTES_PER_S = 1.0e9
"""Feature bytes (``days.rows_bytes``) one process prepares per second, and LOCAL_S_PER_DAY its
cost per day (files opened, checks, five array files written): on a 2-core machine a flat export
of 40 days x 50,000 float64 rows (1.57 GB) took 1.1-2.2 s, a windowed one of 20 days x 1,500
windows at stride 10 (0.12 GB of rows) 0.3-0.45 s (docs/benchmarks.md); the estimate errs
towards Ray Data."""
LOCAL_S_PER_DAY = 0.012

RAY_DATA_START_S = 2.0
"""Seconds the first Ray Data prepare of a Ray session costs beyond its days' work (its stats
and coordinator actors, the workers' imports: 1.8 s measured on 2 CPUs); RAY_DATA_RUN_S each
later one (two datasets, scheduled one after the other: 0.3-0.5 s); RAY_START_S ``ray.init``
where no Ray runs yet (2.2-2.4 s)."""
RAY_DATA_RUN_S = 0.4
RAY_START_S = 2.3


def choose_engine(export: Export) -> str:
    """``ray`` where Ray Data is expected to prepare ``export`` sooner than this process, else
    ``local``: with W the estimated seconds of the days' work in one process (LOCAL_S_PER_DAY a
    day plus their ``rows_bytes`` at LOCAL_BYTES_PER_S) and n the free CPUs of the running Ray
    (this machine's CPUs when none runs), Ray Data takes about W / n plus its fixed cost, so it
    runs when W (1 - 1/n) exceeds that cost. A month of a liquid stock (1.2 GB of windows at
    stride 10) is about 0.4 s of work: distributing it costs more than it saves."""
    days = export.days()
    work = LOCAL_S_PER_DAY * len(days) + sum(rows_bytes(day) for day in days) / LOCAL_BYTES_PER_S
    fixed, cpus = _ray_data_cost()
    engine = "ray" if cpus > 1 and work * (1 - 1 / cpus) > fixed else "local"
    log.info("prepare %s: %s (days' work about %.1f s in one process; Ray Data on %d CPUs adds about %.1f s)",
             export.root, engine, work, cpus, fixed)
    return engine


def _ray_data_cost() -> tuple[float, int]:
    """(fixed seconds a Ray Data prepare adds now, CPUs it would get)."""
    import ray

    if not ray.is_initialized():
        return RAY_START_S + RAY_DATA_START_S, os.cpu_count() or 1
    context = ray.get_runtime_context()
    started = f"{context.gcs_address}/{context.get_job_id()}" in _WARMED
    return (RAY_DATA_RUN_S if started else RAY_DATA_START_S), int(ray.available_resources().get("CPU", 0))


def prepared_root(cache_dir: str | Path | None = None) -> Path:
    """The folder holding one sub-folder per cache key: ``cache_dir``, else ``cache_root()/prepared``."""
    return Path(cache_dir).expanduser().resolve() if cache_dir else cache_root() / "prepared"


def _needs_moments(mode: str, day_file: DayFile) -> bool:
    """Whether pass 1 must read this day: mode train reads training days only, none reads none."""
    return mode in ("per_day", "prior_days") or (mode == "train" and day_file.split == "train")


def _compute(export: Export, prep: PrepConfig, key: str, out: Path, mapper: Mapper) -> None:
    """Both passes over the days of ``export``; writes the arrays and ``prepared.json`` into ``out``.

    Pass 1 reads only the days whose moments the mode needs (mode train: the training days).
    Raises DataError when the mode leaves no day.
    """
    files = _day_files(export)
    mode = prep.normalization.mode
    needed = [_Task(i, f) for i, f in enumerate(files) if _needs_moments(mode, f)]
    steps = day_steps(prep)
    first = {task.order: result for task, result in mapper(day_partials, needed, steps, None)}
    per_day, stats = _day_stats(files, first, prep)
    tasks = [_Task(i, f, (per_day[i], i in first)) for i, f in enumerate(files) if per_day[i] is not DROP]
    if not tasks:
        raise DataError(f"{export.root}: normalization mode {mode!r} leaves none of its {len(files)} days "
                        f"(prior_days is {prep.normalization.prior_days}; it must be below the number of days)")
    second = {}
    for task, result in mapper(day_arrays, tasks, steps, out):
        second[task.order] = _save_arrays(result, out, task.name) if "x" in result else result
    reports = [{**first.get(i, {}), **second.get(i, {})} for i in range(len(files))]  # pass 1's when seen
    _check_consistent(reports, files)
    exported = _exported_normalization(reports, files)
    stats = leaving_out(stats, exported)
    _note_raw_metadata(export, reports)
    dropped = [_dropped(files[i], i, prep) for i in range(len(files)) if per_day[i] is DROP]
    manifest = {
        "key": key,
        "prep": prep.model_dump(mode="json"),
        "export": str(export.root),
        "horizons": reports[0]["horizons"],
        "label_strategy": reports[0]["label_strategy"],
        "quotes_note": next((r["quotes_note"] for r in reports if r["quotes_note"]), None),
        "n_features": reports[0]["n_features"],
        "days": [{"name": t.name, "split": t.day.split, "date": t.day.date, "layout": reports[t.order]["layout"]}
                 for t in tasks],
        "stats": None if stats is None else {k: getattr(stats, k).tolist() for k in ("mean", "std", "scaled")},
        "columns": column_scaling(stats, exported, reports[0]["n_features"]),
        "gate_report": gate_report(reports, dropped, export.skipped),
    }
    (out / "gate_report.json").write_text(json.dumps(manifest["gate_report"], indent=1))
    (out / "prepared.json").write_text(json.dumps(manifest))


def _day_stats(files: list[DayFile], first: dict[int, dict], prep: PrepConfig) -> tuple[list, NormStats | None]:
    """The statistics each day uses (NormStats, None or DROP) and, in mode train, the training
    statistics. A mode whose days are all already normalized becomes ``none``; under per_day an
    already-normalized day passes through (None) rather than being dropped."""
    norm = prep.normalization
    mode = "none" if first and all(r["normalized"] for r in first.values()) else norm.mode
    width = next((r["n_features"] for r in first.values()), 0)
    empty = Moments.empty(width)
    moments = [(f.split, Moments(*first[i]["moments"]) if i in first else empty) for i, f in enumerate(files)]
    per_day = stats_for_days(mode, moments, norm.prior_days, normalize_dt=norm.normalize_dt)
    if mode == "per_day":
        per_day = [None if first[i]["normalized"] else s for i, s in enumerate(per_day)]
    return per_day, (per_day[0] if mode == "train" else None)


def _dropped(day_file: DayFile, order: int, prep: PrepConfig) -> dict[str, str]:
    """The gate report's entry for a day that its normalization mode cannot serve."""
    k = prep.normalization.prior_days
    if prep.normalization.mode == "prior_days" and order < k:
        reason = f"prior_days: one of the first {k} days"
    elif prep.normalization.mode == "prior_days":
        reason = f"prior_days: no rows pass the gates in the {k} days before it"
    else:
        reason = "per_day: no rows pass the gates"
    return {"split": day_file.split, "date": day_file.date, "reason": reason}


def _check_consistent(partials: list[dict], files: list[DayFile]) -> None:
    """Every day has the horizons, label strategy and feature count of the first; raises
    DataError naming both days' files."""
    for field_name in ("horizons", "label_strategy", "n_features"):
        first = partials[0][field_name]
        for p, f in zip(partials, files):
            if p[field_name] != first:
                raise DataError(
                    f"{f.features}: {field_name} {p[field_name]!r}, but {files[0].features} has {first!r} "
                    f"(rule: every day of an export has the same {field_name})"
                )


def _exported_normalization(reports: list[dict], files: list[DayFile]) -> np.ndarray:
    """(F,) bool columns the export normalized in the days it did not normalize whole: the same
    in every such day (their statistics are shared). Raises DataError naming two days that differ."""
    partial = [(r, f) for r, f in zip(reports, files) if not r["normalized"]]
    columns = np.zeros(reports[0]["n_features"], dtype=bool)
    if partial:
        columns[partial[0][0]["normalized_columns"]] = True
    for report, file in partial[1:]:
        if report["normalized_columns"] != partial[0][0]["normalized_columns"]:
            raise DataError(f"{file.features}: the export normalized columns {_spans(report['normalized_columns'])}, "
                            f"but in {partial[0][1].features} columns {_spans(partial[0][0]['normalized_columns'])} "
                            "(rule: the days of an export that are not normalized whole share their normalized columns)")
    return columns


def _spans(columns: list[int]) -> str:
    """Ascending column indices as ranges: [0, 1, 2, 5] -> '0-2, 5'; [] -> 'none'."""
    runs: list[list[int]] = []
    for c in columns:
        if runs and c == runs[-1][1] + 1:
            runs[-1][1] = c
        else:
            runs.append([c, c])
    return ", ".join(f"{a}-{b}" if b > a else f"{a}" for a, b in runs) or "none"


def _note_raw_metadata(export: Export, reports: list[dict]) -> None:
    """One DataWarning per export for metadata that claims normalization on raw values."""
    note = raw_metadata_note(export.root, [r["normalization_note"] for r in reports])
    if note:
        warnings.warn(DataWarning(note), stacklevel=3)


def column_scaling(stats: NormStats | None, exported: np.ndarray, n_features: int) -> dict[str, list[int]]:
    """Every column of the prepared days under one heading: ``z_scored`` (with the prepared
    statistics), ``export_normalized`` (by the exporter, left as it is) or ``left_raw`` (on
    purpose: gate, categorical and version columns, DT_SECONDS without normalize_dt, every column
    under mode none or of a day normalized whole)."""
    scaled = np.zeros(n_features, dtype=bool) if stats is None else stats.scaled
    return {
        "z_scored": np.flatnonzero(scaled).tolist(),
        "export_normalized": np.flatnonzero(exported).tolist(),
        "left_raw": np.flatnonzero(~scaled & ~exported).tolist(),
    }


def gate_report(partials: list[dict], dropped_days: list[dict], skipped: ManifestDays | None = None
                ) -> dict[str, Any]:
    """Per day and rule, rows dropped by the gates, plus totals and label balance per split;
    ``days_dropped``: days the normalization mode cannot serve; ``days_skipped_by_export``: the
    days the manifest says were not exported (``manifest.SkippedDay.to_json``), and
    ``days_skipped_unnamed`` those a bare count of its leaves unnamed."""
    days = [
        {
            "split": p["split"],
            "date": p["date"],
            "rows": p["rows"],
            "rows_kept": p["rows"] - p["rows_dropped"],
            "rows_dropped": p["failed"],
            "windows_dropped": p["windows_dropped"],
            "label_balance": p["label_balance"],
        }
        for p in partials
    ]
    totals = {"rows": sum(p["rows"] for p in partials), "rows_dropped": sum(p["rows_dropped"] for p in partials)}
    for rule in partials[0]["failed"]:
        totals[rule] = sum(p["failed"][rule] for p in partials)
    skipped = skipped or ManifestDays()
    return {"days": days, "totals": totals, "days_dropped": dropped_days, "report_window": REPORT_WINDOW,
            "days_skipped_by_export": [s.to_json() for s in skipped.skipped], "days_skipped_unnamed": skipped.unnamed}


def load_prepared(folder: Path, *, from_cache: bool = False) -> Prepared:
    """Open a cached prep (arrays memory-mapped, read-only)."""
    manifest = json.loads((folder / "prepared.json").read_text())
    splits: dict[str, list[PreparedDay]] = {}
    for day in manifest["days"]:
        arrays = {part: np.load(folder / f"{day['name']}_{part}.npy", mmap_mode="r") for part in ARRAYS}
        if arrays["quotes"].shape[1] == 0:
            arrays["quotes"] = None
        if arrays["forward"].shape[0] == 0:
            arrays["forward"] = None
        layout = WindowLayout.from_json(day["layout"])
        splits.setdefault(day["split"], []).append(PreparedDay(day["date"], day["split"], **arrays, layout=layout))
    stats = manifest["stats"]
    return Prepared(
        key=manifest["key"],
        horizons=tuple(manifest["horizons"]),
        n_features=manifest["n_features"],
        splits=splits,
        stats=None if stats is None else NormStats(*(np.asarray(stats[k]) for k in ("mean", "std", "scaled"))),
        gate_report=manifest["gate_report"],
        label_strategy=manifest["label_strategy"],
        quotes_note=manifest["quotes_note"],
        from_cache=from_cache,
    )


class _lock:
    """An exclusive file lock: one process computes a cache key while the others wait. The empty
    ``<key>.lock`` file stays in the cache: removing it while another process waits on it would
    let a third lock a new file and compute the same key at once."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> None:
        self.handle = open(self.path, "w")
        fcntl.flock(self.handle, fcntl.LOCK_EX)

    def __exit__(self, *exc: Any) -> None:
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()


def _clear_stale(root: Path, key: str) -> None:
    """Remove what an interrupted run of ``key`` left (we hold the lock): its temporary folders,
    and a ``key`` folder without ``prepared.json`` (written by hand or by an older version)."""
    for stale in root.glob(f"{key}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    if (root / key).exists():
        shutil.rmtree(root / key, ignore_errors=True)

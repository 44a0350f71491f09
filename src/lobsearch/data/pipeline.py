"""The Ray Data part: shard day files across workers, gate and normalize them, cache the result.

One Ray Dataset block per day file, so days spread over the cluster's workers. Two passes:

1. per day (on the workers): load, gate, and compute Chan partial moments of the passing rows,
   plus gate counts and label balance. The partials are combined on the driver (a few KB per
   day), so training statistics never need the rows themselves in one place;
2. per day (on the workers): normalize with the statistics that day uses (mode ``train``: those
   of the training days only) and return float32 rows, labels and the gate mask.

The output of a prep config is cached under a key that hashes the export's files (name, size,
mtime) and the config. The cache is written to a temporary folder and renamed into place, so an
interrupted write never looks complete; a file lock makes concurrent requests compute it once.
Trials receive ``Prepared`` through the object store (``tune.with_parameters``), never a path.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lobsearch.config import PrepConfig
from lobsearch.data.days import DayFile, Export, LabelRule, discover_export, load_day
from lobsearch.data.gating import gate_rows, window_gate_counts
from lobsearch.data.normalize import DROP, Moments, NormStats, day_moments, normalize_day, stats_for_days
from lobsearch.errors import DataError

PIPELINE_VERSION = "1"
"""Bumped when the prepared arrays change meaning, so old caches miss."""

REPORT_WINDOW = 100
"""Window size (stride 1) for which the gate report counts windows dropped per rule."""

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class PreparedDay:
    """One day ready for windowing: x (N, F) float32 normalized, labels (N, H) int8 with -1 for
    none, row_ok (N,) bool (passes the enabled gates)."""

    date: str
    split: str
    x: np.ndarray
    labels: np.ndarray
    row_ok: np.ndarray

    @property
    def num_samples(self) -> int:
        return int(self.x.shape[0])


@dataclass(frozen=True, eq=False)
class Prepared:
    """Every split of one export under one prep config."""

    key: str
    horizons: tuple[int, ...]
    n_features: int
    splits: dict[str, list[PreparedDay]]
    stats: NormStats | None
    gate_report: dict[str, Any]
    from_cache: bool = field(default=False, compare=False)

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
        return ", ".join(parts) + f"; {dropped:,} rows fail the gates"


def cache_root() -> Path:
    """``$LOBSEARCH_CACHE`` or ``~/.cache/lobsearch``; on a cluster point it at shared storage."""
    return Path(os.environ.get("LOBSEARCH_CACHE") or Path.home() / ".cache" / "lobsearch").resolve()


def cache_key(export: Export, prep: PrepConfig) -> str:
    text = f"{PIPELINE_VERSION}|{export.fingerprint()}|{prep.digest()}"
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def label_rule(prep: PrepConfig) -> LabelRule:
    """The smoothed-return rule used when labels are computed from MID_PRICE."""
    labels = prep.labels
    return LabelRule(horizons=tuple(labels.horizons), smoothing=labels.smoothing, threshold=float(labels.threshold))


# ---------------------------------------------------------------- the per-day steps (pure)


def _load(day_file: DayFile, prep: PrepConfig) -> Any:
    """Load one day with labels from its file (``file``, ``auto``) or computed (``computed``, or
    ``auto`` without a labels file). Raises DataError when labels cannot be had."""
    source = prep.labels.source
    if source == "file" and day_file.labels is None:
        raise DataError(f"{day_file.features}: no labels file beside it, and labels.source is 'file' "
                        "(use 'auto' or 'computed' to compute labels from MID_PRICE)")
    if source == "computed":
        day_file = dataclasses.replace(day_file, labels=None)
    day = load_day(day_file, rule=label_rule(prep))
    if day.labels is None:
        raise DataError(f"{day_file.features}: no labels file, and too few columns to compute labels "
                        f"from the book (found {day.features.shape[1]}, need 40)")
    return day


def _gates(day: Any, prep: PrepConfig) -> Any:
    g = prep.gates
    return gate_rows(day.features, book_valid=g.book_valid, mbo_ready=g.mbo_ready, invalidity=g.invalidity)


def day_partials(day_file: DayFile, prep: PrepConfig) -> dict[str, Any]:
    """Pass 1 for one day: moments of the passing rows, gate counts and label balance."""
    day = _load(day_file, prep)
    gates = _gates(day, prep)
    if day.normalized or prep.normalization.mode == "none":
        moments = Moments.empty(day.features.shape[1])
    else:
        moments = day_moments(day.features, gates.row_ok, day.schema_version)
    windows = window_gate_counts(gates, REPORT_WINDOW, 1, last_row=prep.gates.last_row)
    balance = [np.bincount(col[col >= 0], minlength=3).tolist() for col in np.asarray(day.labels).T]
    return {
        "split": day_file.split,
        "date": day_file.date,
        "rows": day.num_samples,
        "rows_dropped": gates.dropped,
        "failed": gates.failed,
        "windows_dropped": windows,
        "label_balance": dict(zip(map(str, day.horizons), balance)),
        "horizons": list(day.horizons),
        "n_features": int(day.features.shape[1]),
        "normalized": bool(day.normalized),
        "moments": (moments.count, moments.mean, moments.m2),
    }


def day_arrays(day_file: DayFile, prep: PrepConfig, stats: NormStats | None) -> dict[str, Any]:
    """Pass 2 for one day: normalized float32 rows, int8 labels and the gate mask."""
    day = _load(day_file, prep)
    gates = _gates(day, prep)
    x = normalize_day(
        day.features,
        None if day.normalized else stats,
        schema_version=None if day.normalized else day.schema_version,
        clip=float(prep.normalization.clip),
        row_ok=gates.row_ok,
    )
    return {
        "split": day_file.split,
        "date": day_file.date,
        "x": x,
        "labels": np.ascontiguousarray(day.labels, dtype=np.int8),
        "row_ok": gates.row_ok,
    }


# ---------------------------------------------------------------- engines


def _day_files(export: Export) -> list[DayFile]:
    """Every day of the export in chronological order, splits interleaved by date."""
    files = [f for split in ("train", "val", "test") for f in export.splits.get(split, ())]
    return sorted(files, key=lambda f: f.date)


def _local_map(fn: Callable[..., dict], files: list[DayFile], **kwargs: Any) -> Iterator[dict]:
    for i, day_file in enumerate(files):
        yield {"order": i, **fn(day_file, **{k: (v[i] if k == "stats" else v) for k, v in kwargs.items()})}


def _ray_map(fn: Callable[..., dict], files: list[DayFile], **kwargs: Any) -> Iterator[dict]:
    """Run ``fn`` on every day as a Ray Data map, one block per day, streaming rows back in order.

    On a multi-node cluster the day files travel through the object store (a worker on another
    node has no path to the driver's disk) unless ``LOBSEARCH_SHARED_EXPORT=1`` says the export
    is on storage every node mounts at the same path.
    """
    import ray
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.execution_options.preserve_order = True
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    items = [{"order": i, "day": day_file} for i, day_file in enumerate(files)]
    stats = kwargs.pop("stats", None)
    stats_ref = ray.put(stats) if stats is not None else None
    blobs = [ray.put(_day_bytes(f)) for f in files] if _ship_files() else None

    def apply(row: dict) -> dict:
        extra = {"stats": ray.get(stats_ref)[row["order"]]} if stats_ref is not None else {}
        if blobs is None:
            return {"order": row["order"], **fn(row["day"], **kwargs, **extra)}
        with tempfile.TemporaryDirectory(prefix="lobsearch-day-") as folder:
            day_file = _write_day(ray.get(blobs[row["order"]]), row["day"], Path(folder))
            out = fn(day_file, **kwargs, **extra)
            return {"order": row["order"], **{k: np.array(v) if isinstance(v, np.ndarray) else v for k, v in out.items()}}

    dataset = ray.data.from_items(items, override_num_blocks=len(items))
    yield from dataset.map(apply, **_data_resources()).iter_rows()


def _ship_files() -> bool:
    """True on a multi-node cluster whose export is not declared shared."""
    import ray

    if os.environ.get("LOBSEARCH_SHARED_EXPORT") == "1":
        return False
    return sum(1 for node in ray.nodes() if node.get("Alive")) > 1


def _day_bytes(day_file: DayFile) -> dict[str, bytes | None]:
    """The raw bytes of one day's files and of its export's manifest."""
    manifest = day_file.features.parent.parent / "dataset_manifest.json"
    paths = {"features": day_file.features, "labels": day_file.labels, "metadata": day_file.metadata,
             "manifest": manifest if manifest.is_file() else None}
    return {k: (None if p is None else Path(p).read_bytes()) for k, p in paths.items()}


def _write_day(blob: dict[str, bytes | None], day_file: DayFile, folder: Path) -> DayFile:
    """Lay one shipped day out as a one-day export under ``folder``; returns its DayFile."""
    split_dir = folder / "export" / day_file.split
    split_dir.mkdir(parents=True)
    if blob["manifest"] is not None:
        (folder / "export" / "dataset_manifest.json").write_bytes(blob["manifest"])
    moved = {}
    for key in ("features", "labels", "metadata"):
        source = getattr(day_file, key)
        if source is not None:
            moved[key] = split_dir / Path(source).name
            moved[key].write_bytes(blob[key])
    return dataclasses.replace(day_file, **moved)


def _data_resources() -> dict[str, Any]:
    """CPUs a data task asks for: one when the cluster has one free, else none.

    Trials that hold every CPU would otherwise starve Ray Data's tasks forever (they wait for a
    CPU that never frees); with none free the tasks run beside the trials, two at a time.
    """
    import ray

    if ray.available_resources().get("CPU", 0) >= 1:
        return {"num_cpus": 1}
    log.warning("every CPU in the Ray cluster is held (by trials?): data tasks run beside them, 2 at a time")
    return {"num_cpus": 0, "concurrency": 2}


# ---------------------------------------------------------------- driver


def prepare(
    export: Export | str | Path,
    prep: PrepConfig,
    *,
    cache_dir: str | Path | None = None,
    engine: str = "ray",
) -> Prepared:
    """Gate and normalize every day of ``export`` under ``prep``; cached, computed once per key.

    ``engine`` is ``ray`` (Ray Data; uses the running Ray, or starts a local one) or ``local``
    (the same steps in this process). Raises DataError for a bad export or unusable data.
    """
    if engine not in ("ray", "local"):
        raise DataError(f"engine: must be 'ray' or 'local' (got {engine!r})")
    export = export if isinstance(export, Export) else discover_export(export)
    key = cache_key(export, prep)
    root = Path(cache_dir).resolve() if cache_dir else cache_root() / "prepared"
    root.mkdir(parents=True, exist_ok=True)
    final = root / key
    if (final / "prepared.json").is_file():
        return load_prepared(final, from_cache=True)
    with _lock(root / f"{key}.lock"):
        if (final / "prepared.json").is_file():
            return load_prepared(final, from_cache=True)
        _clear_stale(root, key)
        tmp = root / f"{key}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            _compute(export, prep, key, tmp, _ray_map if engine == "ray" else _local_map)
            os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return load_prepared(final)


def _compute(export: Export, prep: PrepConfig, key: str, out: Path, mapper: Callable[..., Iterator[dict]]) -> None:
    files = _day_files(export)
    if not files:
        raise DataError(f"{export.root}: the export has no day files")
    partials = sorted(mapper(day_partials, files, prep=prep), key=lambda r: r["order"])
    _check_consistent(partials, files)
    mode = "none" if all(p["normalized"] for p in partials) else prep.normalization.mode
    per_day = stats_for_days(
        mode,
        [(p["split"], Moments(*p["moments"])) for p in partials],
        prep.normalization.prior_days,
        normalize_dt=prep.normalization.normalize_dt,
    )
    kept = [i for i, s in enumerate(per_day) if s is not DROP]
    stats = next((s for s in per_day if isinstance(s, NormStats)), None) if mode == "train" else None
    kept_files = [files[i] for i in kept]
    days = []
    for row in mapper(day_arrays, kept_files, prep=prep, stats=[per_day[i] for i in kept]):
        name = f"{row['order']:04d}_{row['split']}_{row['date']}"
        for part in ("x", "labels", "row_ok"):
            np.save(out / f"{name}_{part}.npy", row[part])
        days.append({"name": name, "split": row["split"], "date": row["date"]})
    days.sort(key=lambda d: d["name"])
    dropped_days = [{"split": files[i].split, "date": files[i].date, "reason": "prior_days"} for i in range(len(files)) if i not in kept]
    manifest = {
        "key": key,
        "prep": prep.model_dump(mode="json"),
        "export": str(export.root),
        "horizons": partials[0]["horizons"],
        "n_features": partials[0]["n_features"],
        "days": days,
        "stats": None if stats is None else {k: getattr(stats, k).tolist() for k in ("mean", "std", "scaled")},
        "gate_report": gate_report(partials, dropped_days),
    }
    (out / "gate_report.json").write_text(json.dumps(manifest["gate_report"], indent=1))
    (out / "prepared.json").write_text(json.dumps(manifest))


def _check_consistent(partials: list[dict], files: list[DayFile]) -> None:
    for field_name in ("horizons", "n_features"):
        first = partials[0][field_name]
        for p, f in zip(partials, files):
            if p[field_name] != first:
                raise DataError(
                    f"{f.features}: {field_name} {p[field_name]} differs from the first day's {first} "
                    "(every day of an export must agree)"
                )


def gate_report(partials: list[dict], dropped_days: list[dict]) -> dict[str, Any]:
    """Per day and rule, rows dropped by the gates, plus totals and label balance per split."""
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
    return {"days": days, "totals": totals, "days_dropped": dropped_days, "report_window": REPORT_WINDOW}


def load_prepared(folder: Path, *, from_cache: bool = False) -> Prepared:
    """Open a cached prep (arrays memory-mapped, read-only)."""
    manifest = json.loads((folder / "prepared.json").read_text())
    splits: dict[str, list[PreparedDay]] = {}
    for day in manifest["days"]:
        arrays = {part: np.load(folder / f"{day['name']}_{part}.npy", mmap_mode="r") for part in ("x", "labels", "row_ok")}
        splits.setdefault(day["split"], []).append(PreparedDay(day["date"], day["split"], **arrays))
    stats = manifest["stats"]
    return Prepared(
        key=manifest["key"],
        horizons=tuple(manifest["horizons"]),
        n_features=manifest["n_features"],
        splits=splits,
        stats=None if stats is None else NormStats(*(np.asarray(stats[k]) for k in ("mean", "std", "scaled"))),
        gate_report=manifest["gate_report"],
        from_cache=from_cache,
    )


class _lock:
    """An exclusive file lock: one process computes a cache key while the others wait."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> None:
        self.handle = open(self.path, "w")
        fcntl.flock(self.handle, fcntl.LOCK_EX)

    def __exit__(self, *exc: Any) -> None:
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()


def _clear_stale(root: Path, key: str) -> None:
    """Remove half-written folders of ``key`` left by an interrupted run (we hold the lock)."""
    for stale in root.glob(f"{key}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)

"""Find, validate and memory-map the day files of an export (``shared/contract.md``).

An export is a folder with ``train/``, ``val/`` and ``test/`` (any may be missing), each holding
one set of files per trading day: ``<DAY>_features.npy`` (flat, (N, F)) or ``<DAY>_sequences.npy``
(windowed, (N, T, F)), an optional ``<DAY>_labels.npy`` and an optional ``<DAY>_metadata.json``;
``DAY`` is ``YYYYMMDD`` or ``YYYY-MM-DD``. An optional ``dataset_manifest.json`` sits at the top.

Three entry points, from cheap to thorough:

- ``discover_export(root)``: the layout (names, splits, leakage, chronology); reads no array.
- ``validate_export(export)``: every day's header, feature counts across days, then every day
  loaded and checked; all problems are collected into one ``DataError``.
- ``load_split_data(root, split)`` / ``load_day(day)``: memory-mapped, checked ``Day`` objects.

Mistakes in an export raise ``DataError`` naming the file, the rule and the value found. Facts of
the data that are not mistakes (an empty day) are reported with ``warnings.warn(DataWarning)``,
and ``validate_export`` counts them. Arrays are memory-mapped with ``allow_pickle=False`` and
scanned in row chunks: a file is never up-cast or loaded whole to check it.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lobsearch.contract import (
    BOOK_LEVELS,
    DEFAULT_HORIZONS,
    DEFAULT_SMOOTHING,
    DEFAULT_THRESHOLD,
    INDEX_STRATEGIES,
    MISSING_LABEL,
    SIGNED_STRATEGIES,
    FeatureIndex,
)
from lobsearch.data.gating import ROW_RULE, gate_rows
from lobsearch.errors import DataError, unknown_choice

SPLITS = ("train", "val", "test")
"""Split folders in chronological order."""

MANIFEST_NAME = "dataset_manifest.json"

_DAY_FILE = re.compile(
    r"^(?P<date>\d{8}|\d{4}-\d{2}-\d{2})_"
    r"(?:(?P<array>features|sequences|labels)\.npy|(?P<meta>metadata)\.json)$"
)
_CHUNK_VALUES = 1 << 20
"""Values read at a time by the NaN/inf scan (8 MiB of float64)."""
_WINDOW_PAIRS_CHECKED = 64
"""Consecutive window pairs of a ``_sequences.npy`` checked for a one-row overlap."""
_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


class DataWarning(UserWarning):
    """A fact of the data worth knowing that is not a mistake (an empty day, which is skipped)."""


def _error(path: object, found: str, rule: str) -> DataError:
    return DataError(f"{path}: {found} (rule: {rule})")


# --------------------------------------------------------------------------- discovery


@dataclass(frozen=True)
class DayFile:
    """One day of one split, found on disk (paths are absolute)."""

    split: str
    date: str
    features: Path
    labels: Path | None
    metadata: Path | None
    windowed: bool


@dataclass(frozen=True)
class Export:
    """The day files of an export; ``splits`` is chronological per split, a missing split absent."""

    root: Path
    manifest: dict | None
    splits: dict[str, tuple[DayFile, ...]]

    def days(self) -> tuple[DayFile, ...]:
        """Every day of every split: train, then val, then test."""
        return tuple(day for split in SPLITS for day in self.splits.get(split, ()))

    def fingerprint(self) -> str:
        """Hash of (relative name, size, mtime_ns) of the manifest and every day file: 16 hex chars."""
        digest = hashlib.sha256()
        for path in self._files():
            stat = path.stat()
            name = path.relative_to(self.root).as_posix()
            digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()[:16]

    def _files(self) -> list[Path]:
        manifest = self.root / MANIFEST_NAME
        files = [manifest] if manifest.is_file() else []
        for day in self.days():
            files += [p for p in (day.features, day.labels, day.metadata) if p is not None]
        return files


def discover_export(root: str | Path) -> Export:
    """Find the day files of an export and check its layout; reads no array.

    Raises DataError for a missing or empty export, an unreadable manifest, a date that is not a
    calendar date, labels or metadata without a features file, a day with both a flat and a
    windowed features file, one day spelled two ways, a day in two splits, or a val/test day on
    or before the last day of an earlier split.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        found = "not a folder" if root.exists() else "no such folder"
        raise _error(root, found, "an export is a folder holding train/, val/ and/or test/")
    _check_folder_names(root)
    splits = {}
    for split in SPLITS:
        days = _discover_split(root / split, split) if (root / split).is_dir() else ()
        if days:
            splits[split] = days
    if not splits:
        found = sorted(p.name for p in root.iterdir())[:10] or "nothing"
        raise _error(root, f"empty export: no day files in train/, val/ or test/ (found: {found})",
                     "an export holds <DAY>_features.npy or <DAY>_sequences.npy in a split folder")
    _check_split_order(splits)
    return Export(root=root, manifest=_read_manifest(root), splits=splits)


def _check_folder_names(root: Path) -> None:
    """A folder of day files that is not a split folder is a misspelled split, not something to skip."""
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name not in SPLITS):
        if any(_DAY_FILE.match(p.name) for p in folder.iterdir()):
            raise _error(folder, f"holds day files, but {unknown_choice('split folder', folder.name, SPLITS)}",
                         "day files live in train/, val/ or test/")


def _discover_split(folder: Path, split: str) -> tuple[DayFile, ...]:
    found: dict[str, dict[str, Path]] = {}
    for path in sorted(folder.iterdir()):
        match = _DAY_FILE.match(path.name)
        if match is None or not path.is_file():
            continue
        date = _canonical_date(match["date"], path)
        files = found.setdefault(date, {})
        _check_one_spelling(date, files.values(), path)
        files[match["array"] or match["meta"]] = path
    return tuple(_day_file(split, date, files) for date, files in sorted(found.items()))


def _canonical_date(text: str, path: Path) -> str:
    digits = text.replace("-", "")
    try:
        datetime.datetime.strptime(digits, "%Y%m%d")
    except ValueError:
        raise _error(path, f"date {text!r} is not a calendar date",
                     "day files are named YYYYMMDD_<kind> or YYYY-MM-DD_<kind>") from None
    return digits


def _check_one_spelling(date: str, others: Iterable[Path], path: Path) -> None:
    spelling = path.name.split("_", 1)[0]
    for other in others:
        if other.name.split("_", 1)[0] != spelling:
            raise _error(path, f"day {date} is also spelled {other.name!r} in the same folder",
                         "one date spelling per day (YYYYMMDD or YYYY-MM-DD), one file per kind")


def _day_file(split: str, date: str, files: dict[str, Path]) -> DayFile:
    flat, windowed = files.get("features"), files.get("sequences")
    if flat is not None and windowed is not None:
        raise _error(windowed, f"day {date} also has {flat.name}",
                     "one features file per day: _features.npy (flat) or _sequences.npy (windowed)")
    if flat is None and windowed is None:
        orphan = next(iter(files.values()))
        raise _error(orphan, f"no {date}_features.npy or {date}_sequences.npy beside it",
                     "labels and metadata belong to a day's features file")
    return DayFile(split=split, date=date, features=flat or windowed, labels=files.get("labels"),
                   metadata=files.get("metadata"), windowed=windowed is not None)


def _check_split_order(splits: dict[str, tuple[DayFile, ...]]) -> None:
    seen: dict[str, str] = {}
    for split, days in splits.items():
        for day in days:
            if day.date in seen:
                raise _error(day.features, f"day {day.date} is in both {seen[day.date]}/ and {split}/",
                             "a day belongs to one split (the same day in two splits leaks)")
            seen[day.date] = split
    names = list(splits)
    for i, earlier in enumerate(names):
        last = splits[earlier][-1]
        for later in names[i + 1:]:
            first = splits[later][0]
            if first.date <= last.date:
                raise _error(first.features,
                             f"{later} day {first.date} comes on or before the last {earlier} day {last.date}",
                             "splits are chronological by whole days: train, then val, then test")


def _read_manifest(root: Path) -> dict | None:
    path = root / MANIFEST_NAME
    return _read_json(path) if path.is_file() else None


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _error(path, f"unreadable JSON: {exc}", "manifest and metadata are JSON objects") from None
    if not isinstance(value, dict):
        raise _error(path, f"holds a JSON {type(value).__name__}", "manifest and metadata are JSON objects")
    return value


# --------------------------------------------------------------------------- npy headers


@dataclass(frozen=True)
class NpyHeader:
    """What a ``.npy`` header says, read without touching the data."""

    path: Path
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    offset: int


def read_npy_header(path: Path) -> NpyHeader:
    """Shape and dtype of a ``.npy`` file from its header; checks the file holds the whole array.

    Raises DataError for a file that is not ``.npy``, a pickled object array, or a truncated file.
    """
    readers = {(1, 0): np.lib.format.read_array_header_1_0}
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            reader = readers.get(version, np.lib.format.read_array_header_2_0)
            shape, fortran_order, dtype = reader(handle)
            offset = handle.tell()
    except (ValueError, OSError, EOFError) as exc:
        raise _error(path, f"not a readable .npy file ({exc})", "day arrays are NumPy .npy files") from None
    if dtype.hasobject:
        raise _error(path, f"pickled object array (dtype {dtype})",
                     "day arrays are plain numeric arrays, loaded with allow_pickle=False")
    needed = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    size = path.stat().st_size
    if size < needed:
        raise _error(path, f"truncated: {size} bytes, but its header {shape} {dtype} needs {needed}",
                     "a .npy file holds its whole array")
    return NpyHeader(path=path, shape=tuple(shape), dtype=dtype, fortran_order=fortran_order, offset=offset)


def read_day_header(day: DayFile) -> NpyHeader:
    """The features header of a day, checked for dimensions and dtype; raises DataError."""
    header = read_npy_header(day.features)
    want, layout = (3, "(N, T, F) windows") if day.windowed else (2, "(N, F) rows")
    if len(header.shape) != want:
        raise _error(day.features, f"{len(header.shape)}-D array of shape {header.shape}",
                     f"{day.features.name.split('_')[-1]} is {want}-D: {layout}")
    if header.dtype not in _FLOAT_DTYPES:
        raise _error(day.features, f"dtype {header.dtype}", "features are float32 or float64")
    return header


def _header_rows(day: DayFile, header: NpyHeader) -> int:
    if not day.windowed or header.shape[0] == 0:
        return header.shape[0]
    return header.shape[0] + header.shape[1] - 1


# --------------------------------------------------------------------------- labels


@dataclass(frozen=True)
class LabelRule:
    """How labels are computed from MID_PRICE when a day has no labels file (the smoothed-return rule)."""

    horizons: tuple[int, ...] = DEFAULT_HORIZONS
    smoothing: int = DEFAULT_SMOOTHING
    threshold: float = DEFAULT_THRESHOLD


def compute_labels(mid: np.ndarray, horizons: Sequence[int], smoothing: int = DEFAULT_SMOOTHING,
                   threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Smoothed-return labels of one day's mid-price series, as class indices.

    ``mid`` (N,) prices -> (N, H) int8 in {0 Down, 1 Stable, 2 Up}, column j for ``horizons[j]``.
    With k = smoothing: past = mean(p[t-k..t]), future = mean(p[t+h-k..t+h]),
    l = (future - past) / past; Up if l > threshold, Down if l < -threshold, else Stable.
    ``MISSING_LABEL`` (-1) where t < k or t >= N - h - k, and where either window holds a price
    that is not finite and positive. Vectorized with cumulative sums (float64 of one column).
    Raises ValueError for a negative smoothing or threshold or a horizon below 1.
    """
    prices = np.asarray(mid, dtype=np.float64).reshape(-1)
    horizons = tuple(int(h) for h in horizons)
    if smoothing < 0 or threshold < 0 or any(h < 1 for h in horizons):
        raise ValueError(f"compute_labels: smoothing {smoothing} and threshold {threshold} must be "
                         f">= 0 and horizons {horizons} >= 1")
    bad = ~np.isfinite(prices) | (prices <= 0)
    base = prices[~bad][0] if (~bad).any() else 0.0
    sums = np.concatenate([[0.0], np.cumsum(np.where(bad, 0.0, prices - base))])
    bads = np.concatenate([[0], np.cumsum(bad)])
    out = np.full((len(prices), len(horizons)), MISSING_LABEL, dtype=np.int8)
    width = smoothing + 1
    for j, h in enumerate(horizons):
        t = np.arange(smoothing, max(smoothing, len(prices) - h - smoothing))
        past = (sums[t + 1] - sums[t - smoothing]) / width
        change = (sums[t + h + 1] - sums[t + h - smoothing]) / width - past
        with np.errstate(divide="ignore", invalid="ignore"):
            ret = change / (past + base)
        label = 1 + (ret > threshold).astype(np.int8) - (ret < -threshold).astype(np.int8)
        broken = (bads[t + 1] - bads[t - smoothing] + bads[t + h + 1] - bads[t + h - smoothing]) > 0
        out[t, j] = np.where(broken, MISSING_LABEL, label)
    return out


def _label_strategy(day: DayFile, meta: dict, manifest: dict) -> str | None:
    strategy = meta.get("label_strategy", manifest.get("label_strategy"))
    known = SIGNED_STRATEGIES | INDEX_STRATEGIES
    if strategy is not None and strategy not in known:
        where = day.metadata if "label_strategy" in meta else day.features.parent.parent / MANIFEST_NAME
        raise _error(where, unknown_choice("label_strategy", strategy, known),
                     "label_strategy decides the label encoding")
    return strategy


def _decode_labels(path: Path, raw: np.ndarray, strategy: str | None) -> np.ndarray:
    signed = strategy is None or strategy in SIGNED_STRATEGIES
    low, high = (-1, 1) if signed else (0, 2)
    outside = (raw < low) | (raw > high)
    if outside.any():
        row, col = np.argwhere(outside)[0]
        hint = "; class indices {0, 1, 2} need label_strategy 'triple_barrier'" if signed else ""
        raise _error(path, f"{int(outside.sum())} label value(s) outside [{low}, {high}], first "
                     f"{raw[row, col]} at row {row}, column {col}",
                     f"label_strategy {strategy or '(none: signed)'} stores {low}..{high}{hint}")
    labels = (raw.astype(np.int16) + (1 if signed else 0)).astype(np.int8)
    return labels


def _as_horizons(value: object, where: str) -> tuple[int, ...]:
    items = [value] if isinstance(value, int) else value
    if not isinstance(items, list) or not items or not all(
            isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in items):
        raise DataError(f"{where} is {value!r} (rule: a positive integer or a list of them)")
    return tuple(items)


def _named_horizons(day: DayFile, meta: dict, manifest: dict) -> tuple[tuple[int, ...] | None, str]:
    labeling = meta.get("labeling", {})
    if not isinstance(labeling, dict):
        raise _error(day.metadata, f"labeling is {labeling!r}", "labeling is a JSON object")
    candidates = (
        (f"{day.metadata} labeling.horizons", labeling.get("horizons")),
        (f"{day.metadata} labeling.horizon", labeling.get("horizon")),
        (f"{day.features.parent.parent / MANIFEST_NAME} horizons", manifest.get("horizons")),
    )
    for where, value in candidates:
        if value is not None:
            return _as_horizons(value, where), where
    return None, ""


def _label_horizons(day: DayFile, meta: dict, manifest: dict, columns: int,
                    rule: LabelRule | None) -> tuple[int, ...]:
    named, where = _named_horizons(day, meta, manifest)
    if named is None:
        if rule is not None and len(rule.horizons) == columns:
            return tuple(rule.horizons)
        raise _error(day.labels, f"{columns} label column(s), but no horizons name them",
                     "metadata labeling.horizons or the manifest's horizons name the label columns "
                     "(or pass LabelRule(horizons=...) with one horizon per column)")
    if len(named) != columns:
        raise _error(day.labels, f"{columns} label column(s), but {where} names {len(named)}: {list(named)}",
                     "one label column per horizon, in the order of the horizons")
    return named


def _file_labels(day: DayFile, meta: dict, manifest: dict, rows: int,
                 rule: LabelRule | None) -> tuple[np.ndarray, tuple[int, ...]]:
    header = read_npy_header(day.labels)
    shape = header.shape
    if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] == 0):
        raise _error(day.labels, f"shape {shape}", "labels are (N,) or (N, H) with H >= 1")
    if shape[0] != rows:
        raise _error(day.labels, f"{shape[0]} labels for {rows} rows of {day.features.name}",
                     "labels are row-aligned: one per features row (one per window if windowed)")
    if header.dtype.kind not in "iu":
        raise _error(day.labels, f"dtype {header.dtype}", "labels are integers (int8)")
    columns = shape[1] if len(shape) == 2 else 1
    raw = np.load(day.labels, allow_pickle=False).reshape(rows, columns)
    horizons = _label_horizons(day, meta, manifest, columns, rule)
    return _decode_labels(day.labels, raw, _label_strategy(day, meta, manifest)), horizons


def _rule_from_metadata(day: DayFile, meta: dict) -> LabelRule:
    labeling = meta.get("labeling", {})
    named, _ = _named_horizons(day, meta, {})
    try:
        return LabelRule(horizons=named or DEFAULT_HORIZONS,
                         smoothing=int(labeling.get("smoothing", DEFAULT_SMOOTHING)),
                         threshold=float(labeling.get("threshold", DEFAULT_THRESHOLD)))
    except (TypeError, ValueError):
        raise _error(day.metadata, f"labeling is {labeling!r}",
                     "labeling.smoothing is an integer and labeling.threshold a number") from None


def _computed_labels(day: DayFile, meta: dict, features: np.ndarray,
                     rule: LabelRule | None) -> tuple[np.ndarray | None, tuple[int, ...]]:
    n_features = features.shape[1]
    if n_features < 4 * BOOK_LEVELS:
        return None, ()
    rule = rule or _rule_from_metadata(day, meta)
    if n_features > FeatureIndex.MID_PRICE:
        mid = features[:, FeatureIndex.MID_PRICE]
    else:
        mid = (np.asarray(features[:, FeatureIndex.ASK_PRICE_L0], np.float64)
               + features[:, FeatureIndex.BID_PRICE_L0]) / 2
    return compute_labels(mid, rule.horizons, rule.smoothing, rule.threshold), tuple(rule.horizons)


# --------------------------------------------------------------------------- loading


@dataclass(frozen=True, eq=False)
class Day:
    """One loaded day: flat rows, memory-mapped and read-only, with class-index labels.

    ``features`` (N, F) float32/float64 as stored; ``labels`` (N, H) int8 in {0, 1, 2} with
    ``MISSING_LABEL`` (-1) for rows without one, column j for ``horizons[j]``; None only when there
    is no labels file and no book columns to compute them from. ``normalized`` is the metadata's
    ``normalization.applied``; ``schema_version`` comes from metadata, else the manifest, else the
    SCHEMA_VERSION column, else 0.0 (unknown).
    """

    date: str
    split: str
    features: np.ndarray
    labels: np.ndarray | None
    horizons: tuple[int, ...]
    metadata: dict
    normalized: bool
    schema_version: float
    source: Path

    @property
    def num_samples(self) -> int:
        """Rows of the day (N)."""
        return int(self.features.shape[0])


def load_day(day: DayFile, *, rule: LabelRule | None = None, expected_features: int | None = None,
             check_finite: bool = True) -> Day:
    """Memory-map one day, check it against the contract and decode its labels.

    ``rule`` computes labels when there is no labels file (default: the metadata's labeling,
    else ``LabelRule()``), and names the columns of a labels file that nothing else names.
    A windowed day becomes flat rows (rows = sequences[0] then sequences[1:, -1]); the label of
    window i goes to row i + T - 1 and the first T - 1 rows get -1.
    ``check_finite=False`` skips the NaN/inf scan of rows that pass the gates, for a caller that
    checks those rows itself as it reads them (the pipeline does, and saves a pass over the day).
    Raises DataError for any broken rule (see ``validate_export``); warns ``DataWarning`` for a
    day with 0 rows.
    """
    meta = _read_json(day.metadata) if day.metadata else {}
    manifest = _read_manifest(day.features.parent.parent) or {}
    header = read_day_header(day)
    _check_feature_count(day, header, meta, manifest, expected_features)
    features = _open_features(day)
    if len(features) == 0:
        warnings.warn(DataWarning(f"{day.features}: day {day.date} has 0 rows; it is skipped"), stacklevel=2)
    if check_finite:
        _check_finite(day.features, features)
    labels, horizons = _day_labels(day, meta, manifest, header, features, rule)
    return Day(date=day.date, split=day.split, features=features, labels=labels, horizons=horizons,
               metadata=meta, normalized=_normalized(day, meta),
               schema_version=_schema_version(day, meta, manifest, features), source=day.features)


def _check_feature_count(day: DayFile, header: NpyHeader, meta: dict, manifest: dict,
                         expected: int | None) -> None:
    found = header.shape[-1]
    claims = (
        (f"{day.metadata} n_features", meta.get("n_features")),
        (f"{day.features.parent.parent / MANIFEST_NAME} feature_count", manifest.get("feature_count")),
        ("the other days of the export", expected),
    )
    for where, value in claims:
        if value is not None and value != found:
            raise _error(day.features, f"{found} features, but {where} is {value!r}",
                         "every day of an export has the feature count its manifest and metadata state")


def _memmap(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise _error(path, f"cannot be memory-mapped ({exc})", "day arrays are readable .npy files") from None


def _open_features(day: DayFile) -> np.ndarray:
    array = _memmap(day.features)
    return _flatten_windows(day.features, array) if day.windowed else array


def _flatten_windows(path: Path, sequences: np.ndarray) -> np.ndarray:
    """(M, T, F) stride-1 windows -> (M + T - 1, F) rows (read-only); raises DataError otherwise."""
    if sequences.shape[0] == 0:
        return np.empty((0, sequences.shape[2]), sequences.dtype)
    _check_overlap(path, sequences)
    rows = np.concatenate([sequences[0], sequences[1:, -1]])
    rows.flags.writeable = False
    return rows


def _check_overlap(path: Path, sequences: np.ndarray) -> None:
    """Checks up to ``_WINDOW_PAIRS_CHECKED`` evenly spaced pairs, so a big file is not read whole."""
    count, width = sequences.shape[:2]
    if count < 2 or width < 2:
        return
    pairs = np.unique(np.linspace(0, count - 2, num=min(count - 1, _WINDOW_PAIRS_CHECKED)).round())
    for i in pairs.astype(np.int64):
        if not np.array_equal(sequences[i + 1, :-1], sequences[i, 1:], equal_nan=True):
            raise _error(path, f"window {i + 1} does not repeat rows 1..{width - 1} of window {i}",
                         "consecutive windows overlap by T-1 rows (stride 1), so they can be made flat")


def _check_finite(path: Path, features: np.ndarray) -> None:
    """NaN or inf in a row that passes the gates is a DataError; scanned in chunks of rows."""
    step = max(1, _CHUNK_VALUES // max(features.shape[1], 1))
    count, first = 0, None
    for start in range(0, len(features), step):
        block = np.asarray(features[start:start + step])
        bad = gate_rows(block).row_ok & ~np.isfinite(block).all(axis=1)
        if bad.any():
            count += int(bad.sum())
            if first is None:
                row = int(np.flatnonzero(bad)[0])
                col = int(np.flatnonzero(~np.isfinite(block[row]))[0])
                first = (start + row, col, block[row, col])
    if count:
        row, col, value = first
        name = FeatureIndex(col).name if col < len(FeatureIndex) else f"column {col}"
        raise _error(path, f"{count} row(s) that pass the gates hold NaN or inf; first at row {row}, "
                     f"column {col} ({name}): {value}",
                     f"rows with {ROW_RULE} are finite")


def _day_labels(day: DayFile, meta: dict, manifest: dict, header: NpyHeader, features: np.ndarray,
                rule: LabelRule | None) -> tuple[np.ndarray | None, tuple[int, ...]]:
    if day.labels is None:
        labels, horizons = _computed_labels(day, meta, features, rule)
    else:
        labels, horizons = _file_labels(day, meta, manifest, header.shape[0], rule)
        if day.windowed and len(labels):
            rows = np.full((len(features), labels.shape[1]), MISSING_LABEL, dtype=np.int8)
            rows[header.shape[1] - 1:] = labels
            labels = rows
    if labels is not None:
        labels.flags.writeable = False
    return labels, horizons


def _normalized(day: DayFile, meta: dict) -> bool:
    normalization = meta.get("normalization", {})
    applied = normalization.get("applied", False) if isinstance(normalization, dict) else normalization
    if not isinstance(applied, bool):
        raise _error(day.metadata, f"normalization.applied is {applied!r}", "a JSON boolean (true/false)")
    return applied


def _schema_version(day: DayFile, meta: dict, manifest: dict, features: np.ndarray) -> float:
    for where, source in ((day.metadata, meta), (day.features.parent.parent / MANIFEST_NAME, manifest)):
        value = source.get("schema_version")
        if value is None:
            continue
        try:
            return float(value)
        except (TypeError, ValueError):
            raise _error(where, f"schema_version is {value!r}", "a version number such as 2.2") from None
    if features.shape[1] > FeatureIndex.SCHEMA_VERSION and len(features):
        value = float(features[0, FeatureIndex.SCHEMA_VERSION])
        return round(value, 1) if np.isfinite(value) else 0.0
    return 0.0


def _headers(days: Iterable[DayFile]) -> dict[DayFile, NpyHeader]:
    return {day: read_day_header(day) for day in days}


def _common_feature_count(export: Export, headers: dict[DayFile, NpyHeader]) -> int:
    """The one feature count of every day; raises DataError listing the days of each count."""
    by_count: dict[int, list[DayFile]] = {}
    for day, header in headers.items():
        by_count.setdefault(header.shape[-1], []).append(day)
    if len(by_count) > 1:
        listing = "; ".join(f"{count}: {', '.join(f'{d.split}/{d.date}' for d in days[:3])}"
                            f"{' ...' if len(days) > 3 else ''}" for count, days in sorted(by_count.items()))
        raise _error(export.root, f"days disagree on the feature count ({listing})",
                     "every day of an export has the same feature count")
    count = next(iter(by_count))
    stated = (export.manifest or {}).get("feature_count")
    if stated is not None and stated != count:
        raise _error(export.root / MANIFEST_NAME, f"feature_count is {stated!r}, but the day files have {count}",
                     "the manifest states the feature count of every day")
    return count


def load_split_data(export_dir: str | Path | Export, split: str, *,
                    rule: LabelRule | None = None) -> list[Day]:
    """The non-empty days of one split, chronological; [] when the export has no such split.

    Checks the feature count of every day of the export (headers only) before loading.
    Raises DataError for an unknown split name or any broken rule; days with 0 rows are skipped
    with a ``DataWarning``.
    """
    if split not in SPLITS:
        raise DataError(f"split: {unknown_choice('split', split, SPLITS)}")
    export = export_dir if isinstance(export_dir, Export) else discover_export(export_dir)
    n_features = _common_feature_count(export, _headers(export.days()))
    days = [load_day(day, rule=rule, expected_features=n_features) for day in export.splits.get(split, ())]
    return [day for day in days if day.num_samples]


# --------------------------------------------------------------------------- validation


@dataclass(frozen=True)
class ValidationReport:
    """What ``validate_export`` found in an export that passed.

    ``days`` and ``rows`` count non-empty days per split; ``warnings`` holds the message of every
    ``DataWarning`` raised (their number is the warning count).
    """

    root: Path
    n_features: int
    windowed: bool
    days: dict[str, tuple[str, ...]]
    rows: dict[str, int]
    warnings: tuple[str, ...]

    def summary(self) -> str:
        """One line per split and a warning count."""
        lines = [f"{self.root}: {self.n_features} features, {'windowed' if self.windowed else 'flat'}"]
        lines += [f"  {split}: {len(dates)} day(s), {self.rows[split]} rows" for split, dates in self.days.items()]
        lines.append(f"  {len(self.warnings)} warning(s)")
        return "\n".join(lines)


def validate_export(export: str | Path | Export, *, rule: LabelRule | None = None,
                    deep: bool = True) -> ValidationReport:
    """Check an export against the contract and report what it holds.

    First the layout (``discover_export``) and every day's header, cheaply: dimensions, dtype,
    truncation, pickled arrays, and one feature count across days, manifest and metadata. With
    ``deep`` every non-empty day is then loaded: labels (length, encoding, horizons) and NaN/inf
    in rows that pass the gates. Problems of all days are collected into one DataError; each empty
    day is a ``DataWarning``, counted in the report.
    """
    export = export if isinstance(export, Export) else discover_export(export)
    headers = _collect(export, export.days(), read_day_header)
    n_features = _common_feature_count(export, headers)
    rows = {day: _header_rows(day, header) for day, header in headers.items()}
    notes = [f"{day.features}: day {day.date} has 0 rows; it is skipped" for day, n in rows.items() if n == 0]
    for note in notes:
        warnings.warn(DataWarning(note), stacklevel=2)
    full = [day for day, n in rows.items() if n]
    if deep:
        _collect(export, full, lambda day: load_day(day, rule=rule, expected_features=n_features))
    return ValidationReport(
        root=export.root, n_features=n_features, windowed=any(day.windowed for day in export.days()),
        days={s: tuple(d.date for d in full if d.split == s) for s in export.splits},
        rows={s: sum(rows[d] for d in full if d.split == s) for s in export.splits},
        warnings=tuple(notes),
    )


def _collect(export: Export, days: Sequence[DayFile], check: Callable[[DayFile], object]) -> dict:
    """``check(day)`` for every day; all DataErrors raised as one (a single one unchanged)."""
    results, problems = {}, []
    for day in days:
        try:
            results[day] = check(day)
        except DataError as exc:
            problems.append(str(exc))
    if len(problems) == 1:
        raise DataError(problems[0])
    if problems:
        listing = "\n".join(f"  - {p}" for p in problems)
        raise DataError(f"{export.root}: {len(problems)} problems in the export:\n{listing}")
    return results

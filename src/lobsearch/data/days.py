"""Find, validate and memory-map the day files of an export (``shared/contract.md``).

An export is a folder with ``train/``, ``val/`` and ``test/`` (any may be missing), each holding
one set of files per trading day: ``<DAY>_features.npy`` (flat, (N, F)) or ``<DAY>_sequences.npy``
(windowed, (M, T, F) at any stride, see ``layout``), an optional ``<DAY>_labels.npy``, and the
optional ``<DAY>_metadata.json`` and ``<DAY>_horizons.json``; ``DAY`` is ``YYYYMMDD`` or
``YYYY-MM-DD``. An optional ``dataset_manifest.json`` and the exporter's ``export_config.toml``
sit at the top. What these files state (horizons, label strategy, window size, stride) is read
by ``claims.DayStatements``: the first file that states a fact wins, a disagreement is an error.

Three entry points, from cheap to thorough:

- ``discover_export(root)``: the layout (names, splits, leakage, chronology); reads no array.
- ``validate_export(export)``: every day's header, feature counts and window strides across
  days, then every day loaded and checked; all problems are collected into one ``DataError``.
- ``load_split_data(root, split)`` / ``load_day(day)``: memory-mapped, checked ``Day`` objects.

Mistakes in an export raise ``DataError`` naming the file, the rule and the value found. Facts of
the data that are not mistakes (an empty day) are reported with ``warnings.warn(DataWarning)``,
and ``validate_export`` counts them. Arrays are memory-mapped with ``allow_pickle=False`` and
scanned in row chunks: a file is never up-cast or loaded whole to check it.
"""

from __future__ import annotations

import datetime
import hashlib
import os
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
    REGRESSION_STRATEGY,
    FeatureIndex,
)
from lobsearch.data.claims import (
    EXPORT_CONFIG_NAME,
    MANIFEST_NAME,
    DayStatements,
    read_export_files,
    read_json_object,
)
from lobsearch.data.claims import error as _error
from lobsearch.data.gating import ROW_RULE, gate_rows
from lobsearch.data.layout import (
    WindowLayout,
    labels_at_ends,
    laid_out_rows,
    window_layout,
)
from lobsearch.data.manifest import ManifestDays, check_manifest_days
from lobsearch.errors import DataError, unknown_choice

SPLITS = ("train", "val", "test")
"""Split folders in chronological order."""

_DAY_FILE = re.compile(
    r"^(?P<date>\d{8}|\d{4}-\d{2}-\d{2})_"
    r"(?:(?P<array>features|sequences|labels|regression_labels|forward_prices)\.npy|(?P<meta>metadata|horizons)\.json)$"
)
_CHUNK_VALUES = 1 << 20
"""Values read at a time by the NaN/inf scan (8 MiB of float64)."""
_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_TENSOR_EXPORTS = {
    4: "a DeepLOB (N, T, 4, levels) or HLOB (N, T, levels, 4) tensor",
    5: "an image (N, T, C, H, W) tensor",
}
"""What a ``_sequences.npy`` of more than 3 dimensions is: the exporter's ``tensor_format`` option."""


class DataWarning(UserWarning):
    """A fact of the data worth knowing that is not a mistake (an empty day, which is skipped)."""


# --------------------------------------------------------------------------- discovery


@dataclass(frozen=True)
class DayFile:
    """One day of one split, found on disk (paths are absolute); ``horizons`` is its _horizons.json,
    ``regression_labels`` and ``forward_prices`` its files of a regression export."""

    split: str
    date: str
    features: Path
    labels: Path | None
    metadata: Path | None
    windowed: bool
    horizons: Path | None = None
    regression_labels: Path | None = None
    forward_prices: Path | None = None

    @property
    def export_root(self) -> Path:
        """The export folder: the parent of the day's split folder."""
        return self.features.parent.parent


@dataclass(frozen=True)
class Export:
    """The day files of an export; ``splits`` is chronological per split, a missing split absent.

    ``manifest`` and ``config`` are the parsed ``dataset_manifest.json`` and ``export_config.toml``
    (None when absent); ``skipped`` the days the manifest says were not exported
    (``manifest.check_manifest_days``).
    """

    root: Path
    manifest: dict | None
    splits: dict[str, tuple[DayFile, ...]]
    config: dict | None = None
    skipped: ManifestDays = ManifestDays()

    def skipped_note(self, split: str | None = None) -> str | None:
        """One line naming the days (of ``split``, or all) the manifest says were not exported,
        or None when it names none."""
        return self.skipped.note(self.root / MANIFEST_NAME, split)

    def days(self) -> tuple[DayFile, ...]:
        """Every day of every split: train, then val, then test."""
        return tuple(day for split in SPLITS for day in self.splits.get(split, ()))

    def fingerprint(self) -> str:
        """Hash of (relative name, size, mtime_ns) of the manifest, the export config and every
        day file: 16 hex chars."""
        digest = hashlib.sha256()
        for path in self._files():
            stat = path.stat()
            name = path.relative_to(self.root).as_posix()
            digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()[:16]

    def _files(self) -> list[Path]:
        files = [p for p in (self.root / MANIFEST_NAME, self.root / EXPORT_CONFIG_NAME) if p.is_file()]
        for day in self.days():
            files += [p for p in (day.features, day.labels, day.metadata, day.horizons, day.regression_labels,
                                  day.forward_prices) if p is not None]
        return files


def discover_export(root: str | Path) -> Export:
    """Find the day files of an export and check its layout; reads no array.

    Raises DataError for a missing or empty export, an unreadable manifest or export config, a
    date that is not a calendar date, labels or metadata without a features file, a day with
    both a flat and a windowed features file, one day spelled two ways, a day in two splits, a
    val/test day on or before the last day of an earlier split, or a manifest whose split
    summary or skipped days disagree with the folders (``manifest.check_manifest_days``).
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        found = "not a folder" if root.exists() else "no such folder"
        raise _error(root, found, "an export is a folder holding train/, val/ and/or test/")
    _check_folder_names(root)
    splits = {}
    for split in SPLITS:
        _check_readable(root / split, "a split folder", Path.is_dir)
        days = _discover_split(root / split, split) if (root / split).is_dir() else ()
        if days:
            splits[split] = days
    if not splits:
        found = sorted(p.name for p in root.iterdir())[:10] or "nothing"
        raise _error(root, f"empty export: no day files in train/, val/ or test/ (found: {found})",
                     "an export holds <DAY>_features.npy or <DAY>_sequences.npy in a split folder")
    _check_split_order(splits)
    manifest, config = read_export_files(root)
    on_disk = {day.date: (split, day.features) for split, days in splits.items() for day in days}
    skipped = check_manifest_days(manifest, root / MANIFEST_NAME, on_disk)
    return Export(root=root, manifest=manifest, splits=splits, config=config, skipped=skipped)


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
        if match is None:
            continue
        _check_readable(path, "a day file", Path.is_file)
        date = _canonical_date(match["date"], path)
        files = found.setdefault(date, {})
        _check_one_spelling(date, files.values(), path)
        files[match["array"] or match["meta"]] = path
    return tuple(_day_file(split, date, files) for date, files in sorted(found.items()))


def _check_readable(path: Path, what: str, kind_ok: Callable[[Path], bool]) -> None:
    """DataError for an entry named as ``what`` that is not one: a folder where a file belongs
    (or a file where a folder belongs), a dangling link or a link that loops; an entry that does
    not exist at all is fine (splits and day parts are optional)."""
    if not os.path.lexists(path) or kind_ok(path):
        return
    if path.is_symlink() and not path.exists():
        found = f"a link that leads nowhere or loops ({os.readlink(path)!r})"
    else:
        found = "a folder" if path.is_dir() else "not a regular file or folder"
    raise _error(path, f"named as {what}, but it is {found}",
                 f"{what} must be readable; remove or fix the entry (it is never skipped)")


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
                   metadata=files.get("metadata"), windowed=windowed is not None, horizons=files.get("horizons"),
                   regression_labels=files.get("regression_labels"), forward_prices=files.get("forward_prices"))


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


def _statements(day: DayFile) -> DayStatements:
    return DayStatements.read(day.metadata, day.horizons, day.export_root)


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
    """The features header of a day, checked for dimensions and dtype; raises DataError.

    A 4-D or 5-D ``_sequences.npy`` is a tensor export (the exporter's ``tensor_format``
    option): refused, saying so.
    """
    header = read_npy_header(day.features)
    want, layout = (3, "(N, T, F) windows") if day.windowed else (2, "(N, F) rows")
    if day.windowed and len(header.shape) in _TENSOR_EXPORTS:
        raise _tensor_export_error(day, header)
    if len(header.shape) != want:
        raise _error(day.features, f"{len(header.shape)}-D array of shape {header.shape}",
                     f"{day.features.name.split('_')[-1]} is {want}-D: {layout}")
    if header.dtype not in _FLOAT_DTYPES:
        raise _error(day.features, f"dtype {header.dtype}", "features are float32 or float64")
    return header


def _tensor_export_error(day: DayFile, header: NpyHeader) -> DataError:
    meta = read_json_object(day.metadata) if day.metadata else {}
    stated = f", metadata tensor_format {meta['tensor_format']!r}" if meta.get("tensor_format") else ""
    return _error(day.features, f"{len(header.shape)}-D array of shape {header.shape}: "
                  f"{_TENSOR_EXPORTS[len(header.shape)]}, written by the exporter's tensor_format option{stated}",
                  "lobsearch reads _sequences.npy as (N, T, F) windows: export with tensor_format Flat "
                  "(the exporter's default)")


# --------------------------------------------------------------------------- labels


@dataclass(frozen=True)
class LabelRule:
    """How labels are computed when a day has no labels file: from MID_PRICE (the smoothed-return
    rule: horizons, smoothing, threshold), or, for a regression export, from its forward returns:
    Up above ``threshold_bps``, Down below ``-threshold_bps``, else Stable (None: not set)."""

    horizons: tuple[int, ...] = DEFAULT_HORIZONS
    smoothing: int = DEFAULT_SMOOTHING
    threshold: float = DEFAULT_THRESHOLD
    threshold_bps: float | None = None


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


def _label_encoding(said: DayStatements) -> tuple[str | None, bool]:
    """(label strategy or None, whether labels are class indices) as the export states them.

    Raises DataError when the metadata's labeling.label_encoding.format contradicts the strategy.
    """
    strategy, where = said.label_strategy()
    stated, format_where = said.index_encoding()
    index = strategy in INDEX_STRATEGIES
    if stated is not None and strategy is not None and stated != index:
        names = ("class indices {0, 1, 2}", "signed {-1, 0, 1}")
        raise DataError(f"{where} is {strategy!r}, which stores labels as {names[not index]}, but "
                        f"{format_where} states {names[not stated]} (rule: one label encoding per export)")
    if strategy is None and stated:
        return "triple_barrier", True
    return strategy, index


def _decode_labels(path: Path, raw: np.ndarray, strategy: str | None, index: bool) -> np.ndarray:
    low, high = (0, 2) if index else (-1, 1)
    outside = (raw < low) | (raw > high)
    if outside.any():
        row, col = np.argwhere(outside)[0]
        hint = "" if index else "; class indices {0, 1, 2} need label_strategy 'triple_barrier'"
        raise _error(path, f"{int(outside.sum())} label value(s) outside [{low}, {high}], first "
                     f"{raw[row, col]} at row {row}, column {col}",
                     f"label_strategy {strategy or '(none: signed)'} stores {low}..{high}{hint}")
    # in range (checked above): a signed label + 1 fits int8, written once
    return raw.astype(np.int8) if index else np.add(raw, 1, dtype=np.int8)


_HORIZON_PLACES = ("the metadata's horizons, labeling.horizons, the day's _horizons.json, "
                   "the manifest's horizons and export_config.toml [labels] horizons/horizon")


def _file_labels(day: DayFile, said: DayStatements, rows: int) -> tuple[np.ndarray, tuple[int, ...], str | None]:
    """(labels (rows, H) int8 class indices, horizons, label strategy) of the day's labels file."""
    shape = _array_shape(day.labels, rows, day.features.name, "iu", "labels")
    columns = shape[1] if len(shape) == 2 else 1
    horizons = _named_columns(day.labels, said, columns)
    strategy, index = _label_encoding(said)
    if strategy == REGRESSION_STRATEGY:
        raise _error(day.labels, "class labels in an export whose label strategy is 'regression'",
                     "a regression export holds forward returns in _regression_labels.npy, not class labels")
    raw = np.load(day.labels, allow_pickle=False).reshape(rows, columns)
    return _decode_labels(day.labels, raw, strategy, index), horizons, strategy


def _named_columns(path: Path, said: DayStatements, columns: int) -> tuple[int, ...]:
    """The horizons of a labels file's ``columns`` columns; raises DataError when none or another
    number are named."""
    horizons, where = said.named_horizons()
    if horizons is None:
        raise _error(path, f"{columns} label column(s), but no file names their horizons "
                     f"(looked at {_HORIZON_PLACES})", "the export names the horizon of every label column")
    if len(horizons) != columns:
        raise _error(path, f"{columns} label column(s), but {where} names {len(horizons)}: {list(horizons)}",
                     "one label column per horizon, in the order of the horizons")
    return horizons


def _array_shape(path: Path, rows: int, features_name: str, kinds: str, what: str) -> tuple[int, ...]:
    """The header shape of a labels array, checked: (rows,) or (rows, H), dtype kind in ``kinds``
    ("iu": integers (int8), "f": floats)."""
    header = read_npy_header(path)
    shape = header.shape
    if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] == 0):
        raise _error(path, f"shape {shape}", f"{what} are (N,) or (N, H) with H >= 1")
    if shape[0] != rows:
        raise _error(path, f"{shape[0]} {what} for {rows} rows of {features_name}",
                     f"{what} are row-aligned: one per features row (one per window if windowed)")
    if header.dtype.kind not in kinds:
        raise _error(path, f"dtype {header.dtype}", f"{what} are {'integers (int8)' if kinds == 'iu' else 'floats'}")
    return shape


def _regression_classes(day: DayFile, said: DayStatements, rows: int,
                        rule: LabelRule | None) -> tuple[np.ndarray, tuple[int, ...]]:
    """(classes (rows, H) int8, horizons) of a regression export's forward returns in bps:
    Up above +threshold_bps, Down below -threshold_bps, Stable between, MISSING_LABEL for NaN."""
    shape = _array_shape(day.regression_labels, rows, day.features.name, "f", "regression labels")
    columns = shape[1] if len(shape) == 2 else 1
    horizons = _named_columns(day.regression_labels, said, columns)
    threshold = None if rule is None else rule.threshold_bps
    if threshold is None:
        raise _error(day.regression_labels, "forward returns in bps, and no threshold_bps to make classes of them",
                     "a regression export's classes need data.labels.threshold_bps (or labels.source 'computed' "
                     "to compute labels from MID_PRICE)")
    returns = np.load(day.regression_labels, allow_pickle=False).reshape(rows, columns)
    classes = 1 + (returns > threshold).astype(np.int8) - (returns < -threshold).astype(np.int8)
    return np.where(np.isnan(returns), MISSING_LABEL, classes).astype(np.int8), horizons


def _rule_from_statements(said: DayStatements) -> LabelRule:
    labeling = said.metadata.get("labeling", {})
    named, _ = said.named_horizons()
    try:
        return LabelRule(horizons=named or DEFAULT_HORIZONS,
                         smoothing=int(labeling.get("smoothing", DEFAULT_SMOOTHING)),
                         threshold=float(labeling.get("threshold", DEFAULT_THRESHOLD)))
    except (TypeError, ValueError):
        raise _error(said.metadata_path, f"labeling is {labeling!r}",
                     "labeling.smoothing is an integer and labeling.threshold a number") from None


def _computed_labels(day: DayFile, said: DayStatements, features: np.ndarray, rule: LabelRule | None,
                     layout: WindowLayout | None) -> tuple[np.ndarray | None, tuple[int, ...]]:
    n_features = features.shape[1]
    if n_features < 4 * BOOK_LEVELS:
        return None, ()
    if layout is not None and not layout.overlapping and layout.count > 1:
        raise _error(day.features, f"no labels file to go with windows that do not overlap (stride {layout.stride} "
                     f">= T = {layout.window}): its rows are not one series of the day",
                     "labels are computed from MID_PRICE over a day's contiguous rows; a windowed export "
                     "at stride >= T needs its _labels.npy")
    rule = rule or _rule_from_statements(said)
    if n_features > FeatureIndex.MID_PRICE:
        mid = features[:, FeatureIndex.MID_PRICE]
    else:
        mid = (np.asarray(features[:, FeatureIndex.ASK_PRICE_L0], np.float64)
               + features[:, FeatureIndex.BID_PRICE_L0]) / 2
    return compute_labels(mid, rule.horizons, rule.smoothing, rule.threshold), tuple(rule.horizons)


# --------------------------------------------------------------------------- loading


@dataclass(frozen=True, eq=False)
class Day:
    """One loaded day: rows, memory-mapped (or recovered once) and read-only, with class-index labels.

    ``features`` (N, F) float32/float64 as stored. ``layout`` is a windowed day's
    ``layout.WindowLayout`` (None for a flat day): its features are then the rows it lays out
    (the day's contiguous rows when its windows overlap, else the windows one after another).
    ``labels`` (N, H) int8 in {0, 1, 2} with
    ``MISSING_LABEL`` (-1) for rows without one (a windowed day's labels sit on its windows' end
    rows), column j for ``horizons[j]``; None only when there is no labels file and no book
    columns to compute them from. ``label_strategy`` names the classes (``contract.
    STRATEGY_CLASS_NAMES``): the export's for a labels file ("tlob" when none is stated), "tlob"
    for labels computed from MID_PRICE, "regression" for classes of forward returns.
    ``forward_prices`` is the memory-mapped, checked (windows or rows, k + max_h + 1) float64
    ``_forward_prices.npy`` (``_forward_prices``), None without one, and ``forward_base`` its
    column k, the price at the window's end (``_forward_base``). ``normalized_columns`` (F,)
    bool marks the columns the export already normalized (``exported_normalization``),
    ``normalization_note`` says why metadata that claims normalization was read as raw (None when
    it was not); ``schema_version`` comes from metadata, else the manifest, else the
    SCHEMA_VERSION column, else 0.0 (unknown).
    """

    date: str
    split: str
    features: np.ndarray
    labels: np.ndarray | None
    horizons: tuple[int, ...]
    metadata: dict
    normalized_columns: np.ndarray
    schema_version: float
    source: Path
    layout: WindowLayout | None = None
    label_strategy: str = "tlob"
    normalization_note: str | None = None
    forward_prices: np.ndarray | None = None
    forward_base: int | None = None

    @property
    def num_samples(self) -> int:
        """Rows of the day (N)."""
        return int(self.features.shape[0])

    @property
    def normalized(self) -> bool:
        """True when the export already normalized every column of the day."""
        return bool(self.normalized_columns.all())


def load_day(day: DayFile, *, rule: LabelRule | None = None, expected_features: int | None = None,
             check_finite: bool = True, check_data: bool = True) -> Day:
    """Memory-map one day, check it against the contract and decode its labels.

    ``rule`` computes labels when there is no labels file (default: the metadata's labeling,
    else ``LabelRule()``); a labels file's columns are named only by the export's own files.
    A windowed day becomes rows (``layout.laid_out_rows``), its stride stated by the export or
    observed, and checked on sampled window pairs; the label of window j goes to its end row.
    ``check_finite=False`` skips the NaN/inf scan of rows that pass the gates, for a caller that
    checks those rows itself as it reads them (the pipeline does, and saves a pass over the day).
    ``check_data=False`` skips the scans of the day's arrays whose outcome changes nothing that is
    loaded: the sampled window pairs' overlap and the NaN of the forward prices (their shapes,
    the labels' values and the observation of an unstated stride are still checked), for a
    caller that ran them on the same files already (the pipeline's second pass over a day its
    first pass loaded).
    Raises DataError for any broken rule (see ``validate_export``); warns ``DataWarning`` for a
    day with 0 rows.
    """
    said = _statements(day)
    header = read_day_header(day)
    _check_counts(day, header, said, expected_features)
    stored = _memmap(day.features)
    layout = _layout(day, said, stored, check_pairs=check_data) if day.windowed else None
    features = stored if layout is None else laid_out_rows(stored, layout)
    if len(features) == 0:
        warnings.warn(DataWarning(f"{day.features}: day {day.date} has 0 rows; it is skipped"), stacklevel=2)
    if check_finite:
        _check_finite(day.features, features)
    labels, horizons, strategy = _day_labels(day, said, header, features, rule, layout)
    normalized, note = exported_normalization(day.metadata, said.metadata, header.shape[-1])
    forward = _forward_prices(day, said, header.shape[0], scan=check_data)
    return Day(date=day.date, split=day.split, features=features, labels=labels, horizons=horizons,
               metadata=said.metadata, normalized_columns=normalized,
               schema_version=_schema_version(said, features), source=day.features, layout=layout,
               label_strategy=strategy or "tlob", normalization_note=note, forward_prices=forward,
               forward_base=None if forward is None else _forward_base(day, said, forward, horizons))


def _forward_prices(day: DayFile, said: DayStatements, count: int, scan: bool = True) -> np.ndarray | None:
    """The day's ``_forward_prices.npy`` memory-mapped and checked, or None without one.

    (count, C) float64 mid prices, one row per window (per row of a flat day): columns as the
    metadata's ``forward_prices`` block states them, column k (the price at the window's end)
    finite, and NaN only past the day's end: at the end of a row, in at least as many columns as
    in the row before. Scanned in row chunks (with ``scan``; without, only the shape is checked).
    Raises DataError naming the file and first bad row.
    """
    if day.forward_prices is None:
        return None
    path, header = day.forward_prices, read_npy_header(day.forward_prices)
    if len(header.shape) != 2 or header.dtype.kind != "f":
        raise _error(path, f"shape {header.shape}, dtype {header.dtype}", "forward prices are (N, C) floats")
    if header.shape[0] != count:
        raise _error(path, f"{header.shape[0]} rows for {count} of {day.features.name}",
                     "forward prices are row-aligned with the labels: one per window if windowed")
    columns, k, where = said.forward_price_columns()
    if columns is not None and header.shape[1] != columns:
        raise _error(path, f"{header.shape[1]} columns, but {where} states {columns}",
                     "forward prices hold the columns the metadata states")
    prices = _memmap(path)
    if scan:
        _check_forward_nan(path, prices, k)
    return prices


def _forward_base(day: DayFile, said: DayStatements, prices: np.ndarray, horizons: tuple[int, ...]) -> int:
    """Column k of the day's forward prices (the price at the window's end): as the metadata
    states it, else the columns less the longest label horizon and one (k past columns, t, then
    max_h later ones). Raises DataError naming the file when nothing states k and the columns are
    fewer than the longest horizon and one."""
    _, k, _ = said.forward_price_columns()
    if k is not None:
        return k
    reach = max(horizons, default=0)
    if prices.shape[1] < reach + 1:
        raise _error(day.forward_prices, f"{prices.shape[1]} columns, no forward_prices.smoothing_window_offset "
                     f"in its metadata, and a longest label horizon of {reach}",
                     "forward prices hold k past columns, the price at t and max_h later ones")
    return prices.shape[1] - reach - 1


def _check_forward_nan(path: Path, prices: np.ndarray, k: int | None) -> None:
    """Raises DataError naming the first row whose NaN are not past the day's end (see
    ``_forward_prices``); reads ``_CHUNK_VALUES`` values at a time."""
    step, most = max(1, _CHUNK_VALUES // max(prices.shape[1], 1)), 0
    for start in range(0, len(prices), step):
        missing = np.isnan(np.asarray(prices[start:start + step]))
        # a NaN followed by a finite price; in the other rows every NaN is at the end: tail = count
        inside = (missing[:, :-1] & ~missing[:, 1:]).any(axis=1)
        tail = missing.sum(axis=1)
        reasons = (
            (inside, "NaN before a later finite price"),
            (missing[:, k] if k is not None else np.zeros(len(tail), bool), f"NaN at column {k}, the price at t"),
            (tail < np.maximum.accumulate(np.concatenate([[most], tail]))[:-1],
             "fewer NaN at its end than an earlier row (the day cannot end earlier for a later window)"),
        )
        for bad, reason in reasons:
            if bad.any():
                row = start + int(np.flatnonzero(bad)[0])
                raise _error(path, f"row {row}: {reason} (NaN in columns {np.flatnonzero(missing[row - start]).tolist()})",
                             "forward prices are NaN only past the day's end: in the last columns of the last rows")
        most = max(most, int(tail.max(initial=0)))


def _check_counts(day: DayFile, header: NpyHeader, said: DayStatements, expected: int | None) -> None:
    """The feature count (and a windowed day's window count) against what the export states.

    The flat exporter's metadata writes ``n_features`` as the row count beside ``n_feature_dim``,
    the feature count: with ``n_feature_dim`` present, each is checked as what it counts.
    """
    meta = said.metadata
    rows_key = "n_sequences" if day.windowed else ("n_features" if "n_feature_dim" in meta else None)
    features_key = "n_feature_dim" if "n_feature_dim" in meta else "n_features"
    claims = (
        (f"{day.metadata} {features_key}", meta.get(features_key), header.shape[-1], "features"),
        (f"{said.manifest_path} feature_count", said.manifest.get("feature_count"), header.shape[-1], "features"),
        ("the other days of the export", expected, header.shape[-1], "features"),
        (f"{day.metadata} {rows_key}", meta.get(rows_key) if rows_key else None, header.shape[0],
         "windows" if day.windowed else "rows"),
    )
    for where, value, found, what in claims:
        if value is not None and value != found:
            raise _error(day.features, f"{found} {what}, but {where} is {value!r}",
                         f"every day of an export has the {what} its manifest and metadata state")


def _layout(day: DayFile, said: DayStatements, sequences: np.ndarray, check_pairs: bool = True) -> WindowLayout:
    width = sequences.shape[1]
    stated_window, where = said.window()
    if stated_window is not None and stated_window != width:
        raise _error(day.features, f"windows of {width} rows, but {where} is {stated_window}",
                     "a windowed export's files state the window size T of its _sequences.npy")
    stride, where = said.stride()
    return window_layout(day.features, day.date, sequences, stride, where, check_pairs=check_pairs)


def _memmap(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise _error(path, f"cannot be memory-mapped ({exc})", "day arrays are readable .npy files") from None


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


def _day_labels(day: DayFile, said: DayStatements, header: NpyHeader, features: np.ndarray, rule: LabelRule | None,
                layout: WindowLayout | None) -> tuple[np.ndarray | None, tuple[int, ...], str | None]:
    """(labels, horizons, strategy) from the labels file, else the regression labels, else MID_PRICE."""
    if day.labels is None and day.regression_labels is None:
        labels, horizons = _computed_labels(day, said, features, rule, layout)
        strategy = None
    else:
        if day.labels is not None:
            labels, horizons, strategy = _file_labels(day, said, header.shape[0])
        else:
            (labels, horizons), strategy = _regression_classes(day, said, header.shape[0], rule), REGRESSION_STRATEGY
        if layout is not None:
            labels = labels_at_ends(labels, layout, MISSING_LABEL)
    if labels is not None:
        labels.flags.writeable = False
    return labels, horizons, strategy


def exported_normalization(path: Path | None, meta: dict, n_features: int) -> tuple[np.ndarray, str | None]:
    """((F,) bool columns the export already normalized, a note or None) from the metadata at ``path``.

    Per column, from what the metadata's ``normalization`` block says: nothing when ``applied``
    is false or absent; the 4 x ``levels`` book columns (40) when a strategy other than "none"
    is applied (the exporter z-scores only those); every column for a bare ``applied: true``
    (or ``normalization: true``) that names no strategy and no layout. ``applied: true`` with
    strategy "none" or a ``raw_`` feature layout contradicts itself (exports of early 2026): the
    columns are read as raw, and the note says so. Raises DataError for a non-boolean
    ``applied`` or a bad ``levels``.
    """
    block = meta.get("normalization", {})
    block = block if isinstance(block, dict) else {"applied": block}
    applied, strategy, layout = block.get("applied", False), block.get("strategy"), block.get("feature_layout")
    if not isinstance(applied, bool):
        raise _error(path, f"normalization.applied is {applied!r}", "a JSON boolean (true/false)")
    columns = np.zeros(n_features, dtype=bool)
    raw = [f"strategy {strategy!r}"] * (strategy == "none")
    raw += [f"feature_layout {layout!r}"] * (isinstance(layout, str) and layout.startswith("raw_"))
    if not applied or raw:
        note = None if not applied else (f"{path}: normalization.applied is true, but {' and '.join(raw)} "
                                         "say the values are raw: read as raw and normalized here")
        return columns, note
    levels = block.get("levels", BOOK_LEVELS)
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
        raise _error(path, f"normalization.levels is {levels!r}", "a positive number of book levels")
    columns[: 4 * levels if strategy is not None or layout is not None else n_features] = True
    return columns, None


def _schema_version(said: DayStatements, features: np.ndarray) -> float:
    for where, source in ((said.metadata_path, said.metadata), (said.manifest_path, said.manifest)):
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


def check_days_agree(days: Sequence[Day]) -> None:
    """Every day states the same label horizons and label strategy; raises DataError naming the
    first day and one that differs."""
    for name, what in (("horizons", "label horizons"), ("label_strategy", "label strategy")):
        first = days[0] if days else None
        for day in days[1:]:
            if getattr(day, name) != getattr(first, name):
                raise _error(day.source, f"{what} {_listed(getattr(day, name))}, but {first.source} has "
                             f"{_listed(getattr(first, name))}", f"every day of an export has the same {what}")


def _listed(value: object) -> str:
    return repr(list(value)) if isinstance(value, tuple) else repr(value)


def load_split_data(export_dir: str | Path | Export, split: str, *,
                    rule: LabelRule | None = None) -> list[Day]:
    """The non-empty days of one split, chronological; [] when the export has no such split.

    Checks the feature count of every day of the export (headers only) before loading, and that
    the split's days agree on horizons and label strategy. Raises DataError for an unknown split
    name or any broken rule; days with 0 rows are skipped with a ``DataWarning``, metadata that
    claims normalization on raw values is one ``DataWarning`` (``raw_metadata_note``), and so are
    the days of the split that the manifest says were not exported (``Export.skipped_note``).
    """
    if split not in SPLITS:
        raise DataError(f"split: {unknown_choice('split', split, SPLITS)}")
    export = export_dir if isinstance(export_dir, Export) else discover_export(export_dir)
    n_features = _common_feature_count(export, _headers(export.days()))
    days = [load_day(day, rule=rule, expected_features=n_features) for day in export.splits.get(split, ())]
    days = [day for day in days if day.num_samples]
    check_days_agree(days)
    for note in (raw_metadata_note(export.root, [day.normalization_note for day in days]),
                 export.skipped_note(split)):
        if note:
            warnings.warn(DataWarning(note), stacklevel=2)
    return days


def raw_metadata_note(root: Path, day_notes: Sequence[str | None]) -> str | None:
    """One line for the days of an export whose metadata claims normalization on raw values
    (``Day.normalization_note``, one per day), or None when there are none."""
    notes = [note for note in day_notes if note]
    if not notes:
        return None
    return f"{root}: {len(notes)} day(s) state normalization they do not have; first: {notes[0]}"


# --------------------------------------------------------------------------- validation


@dataclass(frozen=True)
class ValidationReport:
    """What ``validate_export`` found in an export that passed.

    ``days`` and ``rows`` count non-empty days per split (a windowed day's rows once laid out);
    ``layouts`` lists the distinct (T, stride) of its windowed days; ``horizons`` and
    ``label_strategy`` are those of every day (() and None unless the check was deep);
    ``warnings`` holds the message of every ``DataWarning`` raised (their number is the warning
    count); ``skipped`` the days the manifest says were not exported.
    """

    root: Path
    n_features: int
    windowed: bool
    days: dict[str, tuple[str, ...]]
    rows: dict[str, int]
    warnings: tuple[str, ...]
    layouts: tuple[tuple[int, int], ...] = ()
    horizons: tuple[int, ...] = ()
    label_strategy: str | None = None
    skipped: ManifestDays = ManifestDays()

    def summary(self) -> str:
        """One line per split (with the days the manifest says were not exported) and a warning count."""
        shape = ", ".join(f"T={t} stride {s}" for t, s in self.layouts)
        kind = f"windowed ({shape})" if self.windowed else "flat"
        labels = f", horizons {list(self.horizons)} ({self.label_strategy})" if self.horizons else ""
        lines = [f"{self.root}: {self.n_features} features, {kind}{labels}"]
        for split in SPLITS:
            gone = [s for s in self.skipped.skipped if s.split == split]
            if split not in self.days and not gone:
                continue
            dates = self.days.get(split, ())
            missing = f"; not exported: {', '.join(s.date for s in gone)}" if gone else ""
            lines.append(f"  {split}: {len(dates)} day(s), {self.rows.get(split, 0)} rows{missing}")
        loose = [s.date for s in self.skipped.skipped if s.split is None]
        if loose or self.skipped.unnamed:
            named = f": {', '.join(loose)}" if loose else ""
            lines.append(f"  not exported, split not stated: {len(loose) + self.skipped.unnamed} day(s){named}")
        lines.append(f"  {len(self.warnings)} warning(s)")
        return "\n".join(lines)


def validate_export(export: str | Path | Export, *, rule: LabelRule | None = None,
                    deep: bool = True) -> ValidationReport:
    """Check an export against the contract and report what it holds.

    First the layout (``discover_export``) and every day's header, cheaply: dimensions, dtype,
    truncation, pickled arrays, one feature count across days, manifest and metadata, and the
    stride of every windowed day on sampled window pairs. With ``deep`` every non-empty day is
    then loaded: labels (length, encoding, horizons, the same across days) and NaN/inf in rows
    that pass the gates. Problems of all days are collected into one DataError; each empty day is
    a ``DataWarning``, and so are metadata that claims normalization on raw values and the days
    the manifest says were not exported (once each for the export), each counted in the report.
    """
    export = export if isinstance(export, Export) else discover_export(export)
    headers = _collect(export, export.days(), read_day_header)
    n_features = _common_feature_count(export, headers)
    layouts = _collect(export, [d for d in export.days() if d.windowed and headers[d].shape[0]], _day_layout)
    rows = {day: layouts[day].rows if day in layouts else header.shape[0] for day, header in headers.items()}
    notes = [f"{day.features}: day {day.date} has 0 rows; it is skipped" for day, n in rows.items() if n == 0]
    for note in notes:
        warnings.warn(DataWarning(note), stacklevel=2)
    full = [day for day, n in rows.items() if n]
    loaded = _collect(export, full, lambda day: load_day(day, rule=rule, expected_features=n_features)) if deep else {}
    check_days_agree(list(loaded.values()))
    for note in (raw_metadata_note(export.root, [day.normalization_note for day in loaded.values()]),
                 export.skipped_note()):
        if note:
            warnings.warn(DataWarning(note), stacklevel=2)
            notes.append(note)
    first = next(iter(loaded.values()), None)
    return ValidationReport(
        root=export.root, n_features=n_features, windowed=any(day.windowed for day in export.days()),
        days={s: tuple(d.date for d in full if d.split == s) for s in export.splits},
        rows={s: sum(rows[d] for d in full if d.split == s) for s in export.splits},
        warnings=tuple(notes),
        layouts=tuple(sorted({(layout.window, layout.stride) for layout in layouts.values()})),
        horizons=first.horizons if first else (), label_strategy=first.label_strategy if first else None,
        skipped=export.skipped,
    )


def _day_layout(day: DayFile) -> WindowLayout:
    return _layout(day, _statements(day), _memmap(day.features))


def rows_bytes(day: DayFile) -> int:
    """Bytes of the feature rows preparing ``day`` reads: N x F x itemsize of a flat day, the
    rows its ``WindowLayout`` lays out x F x itemsize of a windowed one (about 1/T of the file
    per row of stride). Reads headers and metadata only; a day whose files are bad counts at its
    file's size (preparing it raises the error, naming it)."""
    try:
        header = read_day_header(day)
        width = header.shape[-1] * header.dtype.itemsize
        if not day.windowed:
            return header.shape[0] * width
        layout = _layout(day, _statements(day), _memmap(day.features), check_pairs=False)
        return layout.rows * width
    except DataError:
        return day.features.stat().st_size


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

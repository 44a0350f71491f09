"""Test helper: exports written the way the upstream exporter writes them today.

Learned from reading ``feature-extractor-MBO-LOB`` (``tools/export_dataset.rs``, the aligned
exporter ``src/export_aligned/``, the sequence builder and ``src/export/config/``), and
written here from scratch, independently of lobsearch's reading code:

- rows: one (F,) float64 snapshot per sampled event; window j covers rows ``j*stride ..
  j*stride + T - 1`` (the streaming sequence builder: the first window once T rows are in, then
  one every ``stride`` rows); a window is kept only where its end row has a label, so the kept
  windows are consecutive. ``<DAY>_sequences.npy`` is (N, T, F) float32.
- labels: TLOB smoothed-return labels for t in [k, n - h - k) (multi-horizon: the rows labelled
  at every horizon), signed int8 {-1, 0, 1}; triple-barrier labels are class indices {0, 1, 2}.
  One horizon gives (N,) labels, several (N, H) and a ``<DAY>_horizons.json``.
- ``<DAY>_metadata.json``: day, n_sequences, window_size, n_features, schema_version "2.2",
  label_strategy, tensor_format, labeling (the strategy's block: label_mode, horizons for
  multi-horizon, label_encoding), normalization (strategy "none", applied false, raw_ layout),
  provenance, validation, processing; no stride and no top-level horizons.
- ``dataset_manifest.json``: feature_count, sequence_length, stride, ``labeling_strategy``
  (the Rust enum's name lowercased: ``tlob``, ``opportunity``, ``triplebarrier``), and
  ``horizons`` from the config's ``[labels] horizons`` (``[]`` for a single horizon).
- ``export_config.toml``: the exporter's whole config, ``[sequence] window_size/stride`` and
  ``[labels] strategy/horizon`` (plus ``horizons`` for several).
- schema 3.0 (the trainer's contract, as ``hft-contracts``' export-directory validator reads it):
  the metadata adds top-level ``horizons``, ``stride`` and ``label_encoding`` (``values`` a list);
  the manifest adds the attempted-day accounting: a split summary (``splits``, which the newer
  exporter spells ``split``: per split ``{"days": days attempted, "sequences": ...}``),
  ``skipped_days`` (a list of ``{"day", "split", "reason"}``, or a bare count) and
  ``partial_failure`` (``{"status", "failed_partitions": [{"partition_key": {"day", "split"},
  "error_class", "error_msg", ...}]}``). A skipped or failed day has no day files.

Planted signal: column ``PLANTED[j]`` of a labelled row t holds the signed label of horizon j
at t times a positive magnitude (its sign is the label), and column ``LAGGED`` at row t - ``lag``
holds the sign of horizon 0's label at t: a window ending at t predicts its label exactly from
its end row, and from the row ``lag`` rows before it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

PLANTED = (84, 85, 86, 87)
"""TRUE_OFI, DEPTH_NORM_OFI, EXECUTED_PRESSURE, SIGNED_MP_DELTA_BPS: horizon j's planted column."""
LAGGED = 88
"""TRADE_ASYMMETRY: the sign of horizon 0's label ``lag`` rows ahead."""
GATES = {"book_valid": 92, "mbo_ready": 94, "invalidity": 96}
MANIFEST_STRATEGY = {"tlob": "tlob", "opportunity": "opportunity", "triple_barrier": "triplebarrier"}
ENCODINGS = {
    "tlob": ("signed_int8", {"-1": "Down", "0": "Stable", "1": "Up"}),
    "opportunity": ("signed_int8", {"-1": "BigDown", "0": "NoOpportunity", "1": "BigUp"}),
    "triple_barrier": ("class_index_int8", {"0": "StopLoss", "1": "Timeout", "2": "ProfitTarget"}),
}


@dataclass(frozen=True)
class Upstream:
    """One export's settings, as the exporter's TOML config holds them."""

    window_size: int = 100
    stride: int = 10
    horizons: tuple[int, ...] = (50,)
    strategy: str = "tlob"
    smoothing_window: int = 10
    threshold: float = 0.0008
    rows: int = 1500
    days: tuple[tuple[str, str], ...] = (("train", "20250203"), ("train", "20250204"), ("val", "20250205"),
                                         ("test", "20250206"))
    lag: int = 7
    seed: int = 0
    tensor_format: str | None = None
    gated_rows: tuple[int, ...] = ()
    schema: str = "2.2"
    normalization: str = "raw"
    """``raw`` (the default: strategy none, applied false), ``book_zscore`` (market-structure
    z-score of the 40 book columns, applied true) or ``claimed`` (raw values whose metadata says
    applied true with strategy none and a raw_ layout, as exports of early 2026 do)."""
    skipped: tuple[tuple[str, str, str], ...] = ()
    """(split, date, reason) of days the exporter attempted and skipped (schema 3.0 manifests)."""
    failed: tuple[tuple[str, str, str], ...] = ()
    """(split, date, error message) of days whose export failed (``partial_failure``)."""
    split_key: str = "splits"
    """The schema 3.0 manifest's key of the split summary: ``splits`` (contract) or ``split`` (writer)."""
    split_dates: bool = False
    """Whether the split summary also lists each split's dates (``dates``), as lobsearch's synth does."""
    skipped_as_count: bool = False
    """Write ``skipped_days`` as a bare count instead of a list."""
    forward_prices: bool = False
    """Write ``<DAY>_forward_prices.npy``: per kept window the mid from ``smoothing_window`` rows
    before its end to the longest horizon after it, NaN past the day's last row."""

    @property
    def multi(self) -> bool:
        return len(self.horizons) > 1


@dataclass
class ExportedDay:
    """What the exporter wrote for one day, kept for the tests to compare against."""

    split: str
    date: str
    rows: np.ndarray  # (n, F) float64 snapshots of the whole day
    first_start: int  # row of the day where the first kept window starts
    sequences: np.ndarray  # (N, T, F) float32, as written
    labels: np.ndarray  # (N, H) int8, as written (signed or class indices)
    meta: dict = field(default_factory=dict)


# ---------------------------------------------------------------- the day's snapshots


def snapshots(rng: np.random.Generator, n: int, gated: tuple[int, ...]) -> np.ndarray:
    """(n, 98) float64 snapshots: a 10-level book around a random-walk mid, derived columns, gates."""
    x = rng.normal(size=(n, 98))
    mid = 120.0 * np.exp(np.cumsum(rng.normal(0.0, 6e-4, n)))
    levels = np.arange(10) * 0.01
    x[:, 0:10] = mid[:, None] + 0.005 + levels
    x[:, 10:20] = rng.integers(1, 500, (n, 10))
    x[:, 20:30] = mid[:, None] - 0.005 - levels
    x[:, 30:40] = rng.integers(1, 500, (n, 10))
    x[:, 40] = mid
    x[:, 41] = x[:, 0] - x[:, 20]
    x[:, 92], x[:, 93], x[:, 94], x[:, 95], x[:, 96], x[:, 97] = 1.0, 2.0, 1.0, 0.5, 0.0, 2.2
    for row in gated:
        x[row, 92] = 0.0
    return x


# ---------------------------------------------------------------- labels, as each strategy makes them


def tlob_labels(mid: np.ndarray, h: int, k: int, theta: float) -> dict[int, int]:
    """{row t: signed label} for t in [k, n - h - k): mean(p[t+h-k..t+h]) against mean(p[t-k..t])."""
    out = {}
    for t in range(k, len(mid) - h - k):
        past, future = mid[t - k : t + 1].mean(), mid[t + h - k : t + h + 1].mean()
        change = (future - past) / past
        out[t] = 1 if change > theta else -1 if change < -theta else 0
    return out


def opportunity_labels(mid: np.ndarray, h: int, theta: float) -> dict[int, int]:
    """{row t: signed label}: the larger of the peak gain and the peak loss over (t, t+h] past theta."""
    out = {}
    for t in range(len(mid) - h):
        ahead = mid[t + 1 : t + h + 1] / mid[t] - 1
        up, down = ahead.max(), ahead.min()
        big = up if up >= -down else down
        out[t] = 0 if abs(big) <= theta else (1 if big > 0 else -1)
    return out


def barrier_labels(mid: np.ndarray, h: int, target: float) -> dict[int, int]:
    """{row t: class index}: 2 when +target is reached first within h rows, 0 for -target, 1 timeout."""
    out = {}
    for t in range(len(mid) - h):
        ahead = mid[t + 1 : t + h + 1] / mid[t] - 1
        hits = np.flatnonzero(np.abs(ahead) >= target)
        out[t] = 1 if hits.size == 0 else (2 if ahead[hits[0]] > 0 else 0)
    return out


def label_rows(mid: np.ndarray, cfg: Upstream) -> tuple[list[int], np.ndarray]:
    """(labelled rows ascending, (len, H) int8 labels): the rows every horizon labels."""
    per_horizon = []
    for h in cfg.horizons:
        if cfg.strategy == "tlob":
            per_horizon.append(tlob_labels(mid, h, cfg.smoothing_window, cfg.threshold))
        elif cfg.strategy == "opportunity":
            per_horizon.append(opportunity_labels(mid, h, 4 * cfg.threshold))
        else:
            per_horizon.append(barrier_labels(mid, h, 2 * cfg.threshold))
    rows = sorted(set.intersection(*(set(p) for p in per_horizon)))
    return rows, np.array([[p[t] for p in per_horizon] for t in rows], dtype=np.int8).reshape(len(rows), -1)


def plant(x: np.ndarray, rows: list[int], labels: np.ndarray, cfg: Upstream, rng: np.random.Generator) -> None:
    """Write the planted columns (see the module docstring) into ``x`` in place."""
    signed = labels.astype(np.float64) - (1 if cfg.strategy == "triple_barrier" else 0)
    magnitude = 0.5 + rng.random(len(rows))
    for j in range(min(labels.shape[1], len(PLANTED))):
        x[rows, PLANTED[j]] = signed[:, j] * magnitude
    ahead = np.array(rows) - cfg.lag
    keep = ahead >= 0
    x[ahead[keep], LAGGED] = signed[keep, 0]


# ---------------------------------------------------------------- windows, files


def kept_windows(n: int, labelled: set[int], cfg: Upstream) -> list[int]:
    """Start rows of the windows the exporter keeps: j*stride while the window fits, end row labelled."""
    starts = range(0, n - cfg.window_size + 1, cfg.stride)
    return [s for s in starts if s + cfg.window_size - 1 in labelled]


def day_metadata(cfg: Upstream, date: str, n_windows: int, labels: np.ndarray) -> dict:
    fmt, values = ENCODINGS[cfg.strategy]
    labeling = {"label_encoding": {"format": fmt, "values": values}}
    if cfg.strategy == "tlob":
        labeling["label_mode"] = "multi_horizon" if cfg.multi else "single_horizon"
        if cfg.multi:
            labeling.update(horizons=list(cfg.horizons), num_horizons=len(cfg.horizons))
    else:
        labeling.update(strategy=cfg.strategy, horizons=list(cfg.horizons))
    raw = "raw_ask_prices_10_ask_sizes_10_bid_prices_10_bid_sizes_10"
    book = cfg.normalization == "book_zscore"
    meta = {
        "day": date, "n_sequences": n_windows, "window_size": cfg.window_size, "n_features": 98,
        "schema_version": cfg.schema, "contract_version": cfg.schema, "label_strategy": cfg.strategy,
        "tensor_format": cfg.tensor_format, "labeling": labeling,
        "label_distribution": {str(v): int((labels[:, 0] == v).sum()) for v in np.unique(labels[:, 0])},
        "export_timestamp": "2026-01-15T21:00:00+00:00",
        "normalization": {"strategy": "market_structure_zscore" if book else "none",
                          "applied": cfg.normalization != "raw", "levels": 10,
                          "sample_count": n_windows * cfg.window_size,
                          "feature_layout": raw.removeprefix("raw_") if book else raw,
                          "params_file": f"{date}_normalization.json"},
        "provenance": {"extractor_version": "0.1.0", "git_commit": "abc1234", "git_dirty": False,
                       "config_hash": "0" * 32, "contract_version": cfg.schema},
        "validation": {"sequences_labels_match": True, "label_range_valid": True, "no_nan_inf": True},
        "processing": {"messages_processed": 10 * cfg.rows, "features_extracted": cfg.rows},
    }
    if cfg.schema == "3.0":
        meta.update(horizons=list(cfg.horizons), stride=cfg.stride,
                    label_encoding={"format": fmt, "values": sorted(int(v) for v in values)})
    return meta


def horizons_json(cfg: Upstream) -> dict | None:
    """The ``<DAY>_horizons.json`` of a multi-horizon TLOB export or any other strategy; else None."""
    if cfg.strategy == "tlob":
        return None if not cfg.multi else {"horizons": list(cfg.horizons), "num_horizons": len(cfg.horizons),
                                          "smoothing_window": cfg.smoothing_window, "threshold_strategy": "Fixed"}
    return {"labeling_strategy": cfg.strategy, "horizons": list(cfg.horizons)}


def write_day(folder: Path, split: str, date: str, cfg: Upstream, rng: np.random.Generator) -> ExportedDay:
    x = snapshots(rng, cfg.rows, cfg.gated_rows)
    rows, labels = label_rows(x[:, 40], cfg)
    plant(x, rows, labels, cfg, rng)
    by_row = dict(zip(rows, labels))
    starts = kept_windows(cfg.rows, set(rows), cfg)
    if cfg.normalization == "book_zscore":
        x[:, :40] = (x[:, :40] - x[:, :40].mean(axis=0)) / x[:, :40].std(axis=0)
    sequences = np.stack([x[s : s + cfg.window_size] for s in starts]).astype(np.float32)
    kept = np.stack([by_row[s + cfg.window_size - 1] for s in starts]).astype(np.int8)
    written = kept[:, 0] if not cfg.multi else kept
    folder.mkdir(parents=True, exist_ok=True)
    array = sequences
    if cfg.tensor_format == "DeepLOB { levels: 10 }":
        array = sequences[:, :, :40].reshape(len(starts), cfg.window_size, 4, 10)
    np.save(folder / f"{date}_sequences.npy", array)
    np.save(folder / f"{date}_labels.npy", written)
    meta = day_metadata(cfg, date, len(starts), kept)
    (folder / f"{date}_metadata.json").write_text(json.dumps(meta, indent=2))
    (folder / f"{date}_normalization.json").write_text(json.dumps({
        "strategy": "none", "normalization_applied": False, "price_means": [0.0] * 10, "price_stds": [1.0] * 10,
        "size_means": [0.0] * 20, "size_stds": [1.0] * 20, "sample_count": len(starts) * cfg.window_size,
        "feature_layout": meta["normalization"]["feature_layout"], "levels": 10}, indent=2))
    if cfg.forward_prices:
        k, reach = cfg.smoothing_window, max(cfg.horizons)
        rows_at = np.array(starts)[:, None] + cfg.window_size - 1 - k + np.arange(k + reach + 1)
        mids = np.append(x[:, 40], np.nan)  # the last entry stands for every row past the day's end
        np.save(folder / f"{date}_forward_prices.npy", mids[np.minimum(rows_at, cfg.rows)])
        meta["forward_prices"] = {"exported": True, "smoothing_window_offset": k, "max_horizon": reach,
                                  "n_columns": k + reach + 1}
        (folder / f"{date}_metadata.json").write_text(json.dumps(meta, indent=2))
    extra = horizons_json(cfg)
    if extra is not None:
        (folder / f"{date}_horizons.json").write_text(json.dumps(extra, indent=2))
    return ExportedDay(split, date, x, starts[0], sequences, kept, meta)


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def export_config(cfg: Upstream) -> str:
    """The exporter's ``export_config.toml``: its whole DatasetConfig, pretty-printed."""
    labels = {"strategy": cfg.strategy, "horizon": cfg.horizons[0] if not cfg.multi else 50}
    if cfg.multi:
        labels["horizons"] = list(cfg.horizons)
    labels.update(smoothing_window=cfg.smoothing_window, threshold=cfg.threshold)
    tables = {
        "experiment": {"name": "NVDA 98-Feature Dataset", "description": "", "version": "1.0.0", "tags": ["nvda"]},
        "symbol": {"name": "NVDA", "exchange": "XNAS", "filename_pattern": "xnas-itch-{date}.mbo.dbn.zst",
                   "tick_size": 0.01},
        "data": {"input_dir": "../data/NVDA", "output_dir": "../data/exports/nvda_98feat"},
        "dates": {"start_date": "2025-02-03", "end_date": "2025-02-06"},
        "features": {"lob_levels": 10, "include_derived": True, "include_mbo": True, "include_signals": True,
                     "mbo_window_size": 1000},
        "sampling": {"strategy": "event_based", "event_count": 1000},
        "sequence": {"window_size": cfg.window_size, "stride": cfg.stride, "max_buffer_size": 50000},
        "labels": labels,
        "split": {"train_ratio": 0.5, "val_ratio": 0.25, "test_ratio": 0.25},
        "processing": {"error_mode": "collect_errors", "verbose": False},
    }
    lines = []
    for name, table in tables.items():
        lines += [f"[{name}]", *(f"{k} = {toml_value(v)}" for k, v in table.items()), ""]
    return "\n".join(lines)


def manifest(cfg: Upstream, written: list[ExportedDay] | None = None) -> dict:
    """The exporter's ``dataset_manifest.json``; schema 3.0 adds the accounting of every attempted
    day (``written``: the days that have files)."""
    written = written or []
    attempted = len(cfg.days) + len(cfg.skipped) + len(cfg.failed)
    document = {
        "experiment": {"name": "NVDA 98-Feature Dataset", "description": "", "version": "1.0.0", "tags": ["nvda"]},
        "symbol": "NVDA", "feature_count": 98, "days_processed": attempted,
        "export_timestamp": "2026-01-15T21:00:00+00:00", "config_hash": "0" * 32, "schema_version": cfg.schema,
        "sequence_length": cfg.window_size, "stride": cfg.stride,
        "labeling_strategy": MANIFEST_STRATEGY[cfg.strategy],
        "horizons": list(cfg.horizons) if cfg.multi else [],
        "provenance": {"extractor_version": "0.1.0", "git_commit": "abc1234", "git_dirty": False},
    }
    if cfg.schema != "3.0":
        return document
    summary = {}
    for split in ("train", "val", "test"):
        dates = sorted([d for s, d in cfg.days if s == split] + [d for s, d, _ in cfg.skipped + cfg.failed if s == split])
        if dates:
            summary[split] = {"days": len(dates),
                              "sequences": sum(len(d.sequences) for d in written if d.split == split)}
            if cfg.split_dates:
                summary[split]["dates"] = dates
    skipped = [{"day": d, "split": s, "reason": r} for s, d, r in cfg.skipped]
    document.update({
        cfg.split_key: summary,
        "skipped_days": len(skipped) if cfg.skipped_as_count else skipped,
        "partial_failure": {"status": "partial" if cfg.failed else "complete", "failed_partitions": [
            {"error_class": "Label", "error_msg": m, "error_phase": "export", "partition_key": {"day": d, "split": s},
             "stranded_files": []} for s, d, m in cfg.failed]},
        "total_sequences_emitted": sum(len(d.sequences) for d in written),
    })
    return document


def write_upstream_export(root: Path, cfg: Upstream = Upstream()) -> list[ExportedDay]:
    """Write an export under ``root`` as the exporter would for ``cfg``; the days it wrote, in order."""
    day_rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(cfg.seed).spawn(len(cfg.days))]
    days = [write_day(root / split, split, date, cfg, rng) for (split, date), rng in zip(cfg.days, day_rngs)]
    (root / "dataset_manifest.json").write_text(json.dumps(manifest(cfg, days), indent=2))
    (root / "export_config.toml").write_text(export_config(cfg))
    return days

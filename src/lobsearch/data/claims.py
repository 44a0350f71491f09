"""What the files of an export state about one day: horizons, label strategy, window size, stride.

Several files may state the same fact (``shared/contract.md``): the day's ``_metadata.json``,
its ``_horizons.json``, the export's ``dataset_manifest.json`` and the exporter's own
``export_config.toml``. The first file that states a fact gives it, and every other file that
states it must agree: a disagreement is a DataError naming both files, both keys and both
values. An empty list of horizons states nothing (the exporter writes ``"horizons": []`` in its
manifest for a single horizon, which only ``export_config.toml`` ``[labels] horizon`` names).
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lobsearch.contract import LABEL_STRATEGIES, REGRESSION_STRATEGY
from lobsearch.errors import DataError, unknown_choice

MANIFEST_NAME = "dataset_manifest.json"
EXPORT_CONFIG_NAME = "export_config.toml"

LABEL_FORMATS = {"signed_int8": False, "class_index_int8": True}
"""``labeling.label_encoding.format`` of the exporter -> whether labels are class indices."""

Claim = tuple[str, object, object]
"""(where, value, as written): a file and key, what it states there (None: nothing) and the
value as the file writes it (for messages)."""


def error(path: object, found: str, rule: str) -> DataError:
    """The DataError of every export problem: ``<file>: <what was found> (rule: <the rule>)``."""
    return DataError(f"{path}: {found} (rule: {rule})")


def read_json_object(path: Path) -> dict:
    """A JSON file holding an object; raises DataError naming the file otherwise."""
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(path, f"unreadable JSON: {exc}", "manifest and metadata are JSON objects") from None
    if not isinstance(value, dict):
        raise error(path, f"holds a JSON {type(value).__name__}", "manifest and metadata are JSON objects")
    return value


def read_toml(path: Path) -> dict:
    """A TOML file (the exporter's ``export_config.toml``); raises DataError naming the file."""
    try:
        return tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise error(path, f"unreadable TOML: {exc}", "export_config.toml is the exporter's TOML config") from None


def read_export_files(root: Path) -> tuple[dict | None, dict | None]:
    """(manifest, export config) of the export at ``root``, None for a file that is not there."""
    manifest, config = root / MANIFEST_NAME, root / EXPORT_CONFIG_NAME
    return (read_json_object(manifest) if manifest.is_file() else None,
            read_toml(config) if config.is_file() else None)


def agreed(claims: Sequence[Claim], what: str) -> tuple[object, str]:
    """(value, where) of the first claim that states something, or (None, "") when none does.

    Raises DataError naming both claims when a later claim states another value.
    """
    stated = [claim for claim in claims if claim[1] is not None]
    if not stated:
        return None, ""
    first_where, first, first_written = stated[0]
    for where, value, written in stated[1:]:
        if value != first:
            raise DataError(f"{first_where} is {first_written!r}, but {where} is {written!r} "
                            f"(rule: every file of an export states the same {what})")
    return first, first_where


def _as_horizons(value: object, where: str) -> tuple[int, ...] | None:
    """A horizon or a list of horizons as a tuple; None for an absent value or an empty list."""
    if value is None or value == []:
        return None
    items = [value] if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(items, list) or not all(
            isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in items):
        raise DataError(f"{where} is {value!r} (rule: a positive integer or a list of them)")
    return tuple(items)


def _as_count(value: object, where: str, least: int = 1) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise DataError(f"{where} is {value!r} (rule: an integer number of rows >= {least})")
    return value


def canonical_strategy(value: object, where: str) -> str:
    """The label strategy a spelling names (``triplebarrier``, ``TripleBarrier`` ->
    ``triple_barrier``). Raises DataError for an unknown one, with the closest name."""
    key = re.sub(r"[^a-z]", "", value.lower()) if isinstance(value, str) else None
    known = LABEL_STRATEGIES | {REGRESSION_STRATEGY}
    for name in known:
        if key == name.replace("_", ""):
            return name
    raise DataError(f"{where}: {unknown_choice('label_strategy', value, known)} "
                    "(rule: the label strategy decides the label encoding)")


def _section(document: dict, key: str, path: object) -> dict:
    value = document.get(key, {})
    if not isinstance(value, dict):
        raise error(path, f"{key} is {value!r}", f"{key} is a JSON object or TOML table")
    return value


@dataclass(frozen=True)
class DayStatements:
    """The parsed files around one day; an absent file is an empty object.

    ``metadata`` is the day's ``_metadata.json``, ``horizons`` its ``_horizons.json``, ``manifest``
    and ``config`` the export's ``dataset_manifest.json`` and ``export_config.toml``; each
    ``*_path`` is where it is (or would be) for messages.
    """

    metadata_path: Path | None
    horizons_path: Path | None
    manifest_path: Path
    config_path: Path
    metadata: dict = field(default_factory=dict)
    horizons: dict = field(default_factory=dict)
    manifest: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)

    @classmethod
    def read(cls, metadata: Path | None, horizons: Path | None, root: Path) -> DayStatements:
        """Read the day's metadata and horizons files and the export's manifest and config."""
        manifest, config = read_export_files(root)
        return cls(metadata, horizons, root / MANIFEST_NAME, root / EXPORT_CONFIG_NAME,
                   read_json_object(metadata) if metadata else {},
                   read_json_object(horizons) if horizons else {}, manifest or {}, config or {})

    def _labeling(self) -> dict:
        return _section(self.metadata, "labeling", self.metadata_path)

    def _config(self, table: str) -> dict:
        return _section(self.config, table, self.config_path)

    def horizon_claims(self) -> list[Claim]:
        """Every place that may name the label horizons, in the order the contract gives."""
        meta, labeling, labels = self.metadata_path, self._labeling(), self._config("labels")
        legacy = _section(self.metadata, "label_config", meta)
        places = [
            (f"{meta} horizons", self.metadata.get("horizons")),
            (f"{meta} labeling.horizons", labeling.get("horizons")),
            (f"{meta} labeling.horizon", labeling.get("horizon")),
            (f"{meta} label_config.horizons", legacy.get("horizons")),
            (f"{self.horizons_path} horizons", self.horizons.get("horizons")),
            (f"{self.manifest_path} horizons", self.manifest.get("horizons")),
            (f"{self.config_path} [labels] horizons", labels.get("horizons")),
        ]
        claims = [(where, _as_horizons(value, where), value) for where, value in places]
        if claims[-1][1] is None:
            where, value = f"{self.config_path} [labels] horizon", labels.get("horizon")
            claims.append((where, _as_horizons(value, where), value))
        return claims

    def named_horizons(self) -> tuple[tuple[int, ...] | None, str]:
        """(horizons, where) as the export names them, or (None, "") when nothing does."""
        return agreed(self.horizon_claims(), "label horizons")

    def label_strategy(self) -> tuple[str | None, str]:
        """(canonical label strategy, where) as the export states it, or (None, "")."""
        places = [
            (f"{self.metadata_path} label_strategy", self.metadata.get("label_strategy")),
            (f"{self.metadata_path} labeling.strategy", self._labeling().get("strategy")),
            (f"{self.horizons_path} labeling_strategy", self.horizons.get("labeling_strategy")),
            (f"{self.manifest_path} labeling_strategy", self.manifest.get("labeling_strategy")),
            (f"{self.manifest_path} label_strategy", self.manifest.get("label_strategy")),
            (f"{self.config_path} [labels] strategy", self._config("labels").get("strategy")),
        ]
        claims = [(where, None if value is None else canonical_strategy(value, where), value)
                  for where, value in places]
        return agreed(claims, "label strategy")

    def index_encoding(self) -> tuple[bool | None, str]:
        """(True for class indices {0, 1, 2}, False for signed {-1, 0, 1}, where) as the metadata's
        ``labeling.label_encoding.format`` states it, or (None, "")."""
        encoding = _section(self._labeling(), "label_encoding", self.metadata_path)
        value, where = encoding.get("format"), f"{self.metadata_path} labeling.label_encoding.format"
        if value is None:
            return None, ""
        if value not in LABEL_FORMATS:
            raise DataError(f"{where}: {unknown_choice('label format', value, LABEL_FORMATS)} "
                            "(rule: the format names the label encoding)")
        return LABEL_FORMATS[value], where

    def forward_price_columns(self) -> tuple[int | None, int | None, str]:
        """(columns, k, where) of ``_forward_prices.npy`` as the metadata's ``forward_prices``
        block states them: ``n_columns`` (else ``smoothing_window_offset + max_horizon + 1``) and
        the base-price column ``smoothing_window_offset``; (None, None, "") when not stated."""
        block = _section(self.metadata, "forward_prices", self.metadata_path)
        where = f"{self.metadata_path} forward_prices"
        k = _as_count(block.get("smoothing_window_offset"), f"{where}.smoothing_window_offset", least=0)
        horizon = _as_count(block.get("max_horizon"), f"{where}.max_horizon")
        columns = _as_count(block.get("n_columns"), f"{where}.n_columns")
        if columns is None and k is not None and horizon is not None:
            columns = k + horizon + 1
        if columns is not None and k is not None and horizon is not None and columns != k + horizon + 1:
            raise error(self.metadata_path, f"forward_prices.n_columns is {columns}, but smoothing_window_offset "
                        f"{k} + max_horizon {horizon} + 1 is {k + horizon + 1}",
                        "forward prices hold k past columns, the price at t and max_horizon later ones")
        return columns, k, where if columns is not None or k is not None else ""

    def stride(self) -> tuple[int | None, str]:
        """(stride in rows, where) of a windowed export as its files state it, or (None, "")."""
        places = [
            (f"{self.metadata_path} stride", self.metadata.get("stride")),
            (f"{self.manifest_path} stride", self.manifest.get("stride")),
            (f"{self.config_path} [sequence] stride", self._config("sequence").get("stride")),
        ]
        return agreed([(where, _as_count(value, where), value) for where, value in places], "stride")

    def window(self) -> tuple[int | None, str]:
        """(window size T, where) of a windowed export as its files state it, or (None, "")."""
        places = [
            (f"{self.metadata_path} window_size", self.metadata.get("window_size")),
            (f"{self.metadata_path} sequence_length", self.metadata.get("sequence_length")),
            (f"{self.manifest_path} sequence_length", self.manifest.get("sequence_length")),
            (f"{self.config_path} [sequence] window_size", self._config("sequence").get("window_size")),
        ]
        return agreed([(where, _as_count(value, where), value) for where, value in places], "window size")

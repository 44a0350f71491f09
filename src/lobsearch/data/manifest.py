"""What an export's manifest says of its days: the split summary and the days it did not export.

Schema 3.0 manifests (``dataset_manifest.json``) account for every day the exporter attempted:

- ``splits`` (the contract's spelling; the exporter writes ``split``): split name -> its days,
  as a list of dates, or an object whose ``days`` is a count or a list of dates and whose
  ``dates`` lists them (lobsearch's synthetic exports write both); other keys (``sequences``,
  ``rows``) are counts this module does not check.
- ``skipped_days``: the days attempted but not written, as a count (naming none) or a list of
  dates or of objects ``{"day" (or "date"), "split", "reason"}``.
- ``partial_failure.failed_partitions``: days whose export failed, each
  ``{"partition_key": {"day", "split"}, "error_class", "error_msg"}``; they are missing too.

``check_manifest_days`` holds the manifest to the folders: a listed day is on disk in the split
that lists it, or is a day the manifest skipped; every day on disk is listed in its own split; a
count equals the split's days on disk plus those skipped in it; a skipped day has no day files.
A disagreement is a DataError naming the manifest, the key, the day and both values. The skipped
days come back (``ManifestDays``), so that reports name them rather than leave them silently
missing.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from lobsearch.data.claims import error
from lobsearch.errors import unknown_choice

SPLIT_NAMES = ("train", "val", "test")
SPLIT_KEYS = ("splits", "split")
"""Where a manifest keeps its split summary: the contract's spelling, then the exporter's."""
_DATE = re.compile(r"^(\d{8}|\d{4}-\d{2}-\d{2})$")
OnDisk = Mapping[str, tuple[str, Path]]
"""Date (YYYYMMDD) -> (split, features file) of every day found in the split folders."""


@dataclass(frozen=True)
class SkippedDay:
    """A day the manifest says the exporter attempted and did not write.

    date: YYYYMMDD; split: the split it would have been in (None when the manifest does not
    say); reason: the manifest's words, or "no reason given"; key: where the manifest says it
    (``skipped_days``, ``partial_failure.failed_partitions`` or a split summary's list).
    """

    date: str
    split: str | None
    reason: str
    key: str

    def describe(self) -> str:
        """``20250207 (train): Label error: short session``."""
        return f"{self.date} ({self.split or 'split not stated'}): {self.reason}"

    def to_json(self) -> dict:
        return {"date": self.date, "split": self.split, "reason": self.reason, "manifest_key": self.key}


@dataclass(frozen=True)
class ManifestDays:
    """The days an export's manifest says it did not write: ``skipped`` by name (chronological),
    and ``unnamed``, the skipped days a bare count (``skipped_days`` as a number) leaves unnamed."""

    skipped: tuple[SkippedDay, ...] = ()
    unnamed: int = 0

    def in_split(self, split: str | None) -> tuple[SkippedDay, ...]:
        """The named skipped days of ``split`` and those whose split is not stated (all when None)."""
        return tuple(s for s in self.skipped if split is None or s.split in (split, None))

    def note(self, manifest: Path, split: str | None = None) -> str | None:
        """One line naming the skipped days (of ``split``, or all), or None when there are none."""
        named = self.in_split(split)
        if not named and not self.unnamed:
            return None
        parts = [f"{len(named)} day(s) were not exported, so they are missing from "
                 f"{split + '/' if split else 'the splits'}: " + "; ".join(s.describe() for s in named)] if named else []
        if self.unnamed:
            parts.append(f"skipped_days counts {self.unnamed} more skipped day(s) without naming them")
        return f"{manifest}: " + "; and ".join(parts)


def _date(value: object, path: Path, key: str) -> str:
    """A manifest's date as YYYYMMDD; DataError naming the key and value for anything else."""
    if isinstance(value, str) and _DATE.match(value):
        digits = value.replace("-", "")
        try:
            datetime.datetime.strptime(digits, "%Y%m%d")
            return digits
        except ValueError:
            pass
    raise error(path, f"{key} holds {value!r}", "dates are YYYYMMDD or YYYY-MM-DD strings")


def _split_name(value: object, path: Path, key: str) -> str:
    if value not in SPLIT_NAMES:
        raise error(path, f"{key}: {unknown_choice('split', value, SPLIT_NAMES)}", "days belong to train, val or test")
    return str(value)


def _reason(entry: Mapping, keys: tuple[str, ...]) -> str:
    words = [str(entry[k]) for k in keys if isinstance(entry.get(k), (str, int, float)) and str(entry[k])]
    return ": ".join(words) or "no reason given"


def _skipped_list(manifest: dict, path: Path) -> tuple[list[SkippedDay], int]:
    """(named skipped days, unnamed count) of ``skipped_days``."""
    value = manifest.get("skipped_days")
    if value is None:
        return [], 0
    if isinstance(value, bool) or not isinstance(value, (int, list)) or (isinstance(value, int) and value < 0):
        raise error(path, f"skipped_days is {value!r}",
                    "skipped_days is a count of days (>= 0) or a list of dates or {day, split, reason} objects")
    if isinstance(value, int):
        return [], value
    days = []
    for i, entry in enumerate(value):
        key = f"skipped_days[{i}]"
        if isinstance(entry, str):
            days.append(SkippedDay(_date(entry, path, key), None, "no reason given", "skipped_days"))
            continue
        if not isinstance(entry, dict) or ("day" not in entry and "date" not in entry):
            raise error(path, f"{key} is {entry!r}", "a skipped day is a date or an object naming its day")
        split = entry.get("split")
        days.append(SkippedDay(_date(entry.get("day", entry.get("date")), path, f"{key}.day"),
                               None if split is None else _split_name(split, path, f"{key}.split"),
                               _reason(entry, ("reason", "error_class", "error_msg")), "skipped_days"))
    return days, 0


def _failed_list(manifest: dict, path: Path) -> list[SkippedDay]:
    """The days of ``partial_failure.failed_partitions``: attempted, failed, not written."""
    block = manifest.get("partial_failure")
    if block is None:
        return []
    failed = block.get("failed_partitions", []) if isinstance(block, dict) else None
    if not isinstance(failed, list):
        raise error(path, f"partial_failure is {block!r}",
                    "partial_failure is an object whose failed_partitions is a list")
    days = []
    for i, entry in enumerate(failed):
        key = f"partial_failure.failed_partitions[{i}]"
        partition = entry.get("partition_key") if isinstance(entry, dict) else None
        if not isinstance(partition, dict) or "day" not in partition:
            raise error(path, f"{key} is {entry!r}", "a failed partition names its partition_key.day")
        split = partition.get("split")
        days.append(SkippedDay(_date(partition["day"], path, f"{key}.partition_key.day"),
                               None if split is None else _split_name(split, path, f"{key}.partition_key.split"),
                               "export failed: " + _reason(entry, ("error_class", "error_msg")),
                               "partial_failure.failed_partitions"))
    return days


def _merged(days: list[SkippedDay], path: Path) -> dict[str, SkippedDay]:
    """Date -> its entry (the one naming a split, where any does); a date skipped in two splits
    is a DataError."""
    by_date: dict[str, SkippedDay] = {}
    for day in days:
        seen = by_date.get(day.date)
        if seen is not None and None not in (seen.split, day.split) and seen.split != day.split:
            raise error(path, f"day {day.date} is not exported in {seen.split} ({seen.key}) and in {day.split} "
                        f"({day.key})", "a day belongs to one split")
        if seen is None or seen.split is None:
            by_date[day.date] = day
    return by_date


@dataclass(frozen=True)
class _Listing:
    """One split's entry of a split summary: the dates it lists (None: none listed) and its day count."""

    dates: tuple[str, ...] | None
    count: int | None


def _listing(entry: object, path: Path, key: str) -> _Listing:
    if isinstance(entry, list):
        return _Listing(tuple(_date(d, path, f"{key}[{i}]") for i, d in enumerate(entry)), None)
    if not isinstance(entry, dict):
        raise error(path, f"{key} is {entry!r}", "a split's entry is a list of dates or an object with its days")
    days, dates = entry.get("days"), entry.get("dates")
    count = days if isinstance(days, int) and not isinstance(days, bool) else None
    if (days is not None and count is None and not isinstance(days, list)) or (count is not None and count < 0) \
            or (dates is not None and not isinstance(dates, list)):
        raise error(path, f"{key} is {entry!r}",
                    f"{key}.days is a count (>= 0) or a list of dates, and {key}.dates a list of dates")
    listed = [(name, v) for name, v in (("days", days), ("dates", dates)) if isinstance(v, list)]
    found = [tuple(_date(d, path, f"{key}.{name}[{i}]") for i, d in enumerate(v)) for name, v in listed]
    if len(found) == 2 and sorted(found[0]) != sorted(found[1]):
        raise error(path, f"{key}.days lists {list(found[0])}, but {key}.dates lists {list(found[1])}",
                    "a split's entry lists its days once")
    if count is not None and found and count != len(found[0]):
        raise error(path, f"{key}.days is {count}, but {key}.dates lists {len(found[0])} day(s)",
                    "a split's day count is the number of its dates")
    return _Listing(found[0] if found else None, count)


def _summaries(manifest: dict, path: Path) -> dict[str, dict[str, _Listing]]:
    """Key ("splits" or "split") -> split name -> its listing, for each split summary present."""
    out = {}
    for key in SPLIT_KEYS:
        block = manifest.get(key)
        if block is None:
            continue
        if not isinstance(block, dict):
            raise error(path, f"{key} is {block!r}", f"{key} is an object: split name -> its days")
        out[key] = {_split_name(name, path, f"{key} key"): _listing(entry, path, f"{key}.{name}")
                    for name, entry in block.items()}
    return out


def check_manifest_days(manifest: dict | None, path: Path, on_disk: OnDisk) -> ManifestDays:
    """Hold the manifest's split summaries and skipped days to the day files found on disk.

    ``on_disk``: date -> (split, features file) of every day in the folders. Returns the days the
    manifest says were not written. A listed day missing from disk counts as one of the days a
    bare ``skipped_days`` count leaves unnamed, while there are such days left (it is then named).
    Raises DataError (naming ``path``, the key, the day and both values) for a listed day that
    is in another split, or missing and not skipped; a day on disk that its split does not list;
    a split on disk that a summary leaves out; a count that the days on disk plus the skipped
    ones do not make up; a skipped day that is on disk; or a malformed entry.
    """
    if not manifest:
        return ManifestDays()
    named, unnamed = _skipped_list(manifest, path)
    skipped = _merged(named + _failed_list(manifest, path), path)
    for day in skipped.values():
        if day.date in on_disk:
            split, file = on_disk[day.date]
            raise error(path, f"{day.key} names day {day.date} ({day.split or 'split not stated'}) as not exported, "
                        f"but it is on disk in {split}/ ({file.name})",
                        "the manifest's skipped and failed days have no day files")
    for key, listings in _summaries(manifest, path).items():
        unnamed = _check_summary(key, listings, path, on_disk, skipped, unnamed)
    return ManifestDays(skipped=tuple(skipped[d] for d in sorted(skipped)), unnamed=unnamed)


def _check_summary(key: str, listings: dict[str, _Listing], path: Path, on_disk: OnDisk,
                   skipped: dict[str, SkippedDay], unnamed: int) -> int:
    """One split summary (``splits`` or ``split``) against the folders; see ``check_manifest_days``.
    Adds to ``skipped`` the listed days matched to the bare count; returns the count left."""
    for split, entry in listings.items():
        for date in entry.dates or ():
            unnamed = _check_listed(key, split, date, path, on_disk, skipped, unnamed)
    for date, (split, file) in sorted(on_disk.items()):
        entry = listings.get(split)
        if entry is None:
            raise error(path, f"{key} has no {split} entry, but day {date} is in {split}/ ({file.name})",
                        f"the manifest's {key} accounts for every split on disk")
        if entry.dates is not None and date not in entry.dates:
            raise error(path, f"{key}.{split} does not list day {date}, which is in {split}/ ({file.name}); "
                        f"it lists {_dates(entry.dates)}", f"the manifest's {key} lists every day on disk in its split")
    loose = unnamed + sum(1 for s in skipped.values() if s.split is None)
    for split, entry in listings.items():
        if entry.count is None or (loose and entry.dates is None):
            continue  # skipped days whose split is not stated could be this split's
        found = sum(1 for s, _ in on_disk.values() if s == split)
        gone = sum(1 for s in skipped.values() if s.split == split)
        if entry.count != found + gone:
            raise error(path, f"{key}.{split}.days is {entry.count}, but {split}/ holds {found} day(s) and the "
                        f"manifest says {gone} more were not exported",
                        f"the manifest's {key} counts a split's days: those on disk plus those it skipped")
    return unnamed


def _check_listed(key: str, split: str, date: str, path: Path, on_disk: OnDisk, skipped: dict[str, SkippedDay],
                  unnamed: int) -> int:
    """One listed day against the folders and the skipped days; returns the bare count left."""
    if date in on_disk:
        found, file = on_disk[date]
        if found != split:
            raise error(path, f"{key}.{split} lists day {date}, but it is on disk in {found}/ ({file.name})",
                        "the manifest and the folders put every day in the same split")
        return unnamed
    gone = skipped.get(date)
    if gone is None and unnamed:
        skipped[date] = SkippedDay(date, split, f"listed in {key}.{split} without day files; one of the days "
                                   "skipped_days counts", f"{key}.{split}")
        return unnamed - 1
    if gone is None:
        raise error(path, f"{key}.{split} lists day {date}, but {split}/ has no day files for it and the manifest "
                    "does not say it was skipped", "every day the manifest lists is on disk, or in skipped_days")
    if gone.split is not None and gone.split != split:
        raise error(path, f"{key}.{split} lists day {date}, but {gone.key} has it in {gone.split}",
                    "the manifest puts every day in one split")
    if gone.split is None:
        skipped[date] = SkippedDay(date, split, gone.reason, gone.key)
    return unnamed


def _dates(dates: tuple[str, ...]) -> str:
    shown = ", ".join(dates[:6])
    return f"[{shown}{', ...' if len(dates) > 6 else ''}] ({len(dates)} day(s))"

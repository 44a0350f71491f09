"""``python -m lobsearch.data report EXPORT_DIR``: what the safety gates drop, per day and rule.

Prepares the export under the default prep config (cached, as a search would; ``--engine ray``
uses Ray Data, ``local`` runs in this process, the default ``auto`` chooses as a search does),
then prints one table with, per day,
the rows and the windows (``--window`` T rows, ``--stride`` S; default 100, or the T of a windowed
export, and 1) that each gate
rule drops, and a summary per split: days, rows, and the label balance per horizon in percent of
each class, named as the export's label strategy names them (Down / Stable / Up, or StopLoss /
Timeout / ProfitTarget for triple-barrier labels, ...). On a windowed export the windows are cut
from the exported ones (at most their T rows each). The pipeline's JSON gate report lies beside
the cache; its path is printed. Days the export's manifest says were not exported (skipped or
failed) are listed with its reason. ``--json`` prints the same report as one JSON object instead.
Errors print one line, exit 2.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lobsearch.errors import LobsearchError

EXIT_ERROR = 2
SPLIT_ORDER = ("train", "val", "test")


def class_keys(strategy: str) -> tuple[str, ...]:
    """The report's keys of class indices 0, 1, 2 under a label strategy: its class names in
    snake case (``down``, ``stable``, ``up``; ``stop_loss``, ``timeout``, ``profit_target``)."""
    from lobsearch.contract import STRATEGY_CLASS_NAMES

    return tuple(re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower() for name in STRATEGY_CLASS_NAMES[strategy])


def _initials(key: str) -> str:
    return "".join(word[0].upper() for word in key.split("_"))


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1 (got {text!r})") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1 (got {value})")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lobsearch.data",
                                     description="What the safety gates drop in an export.")
    commands = parser.add_subparsers(dest="command", required=True)
    report = commands.add_parser("report", help="rows and windows the gates drop, per day and rule")
    report.add_argument("export", type=Path, help="export folder (train/, val/, test/)")
    report.add_argument("--window", type=_positive, default=None,
                        help="window size T in rows (default 100, or the T of a windowed export's windows)")
    report.add_argument("--stride", type=_positive, default=1, help="stride between window ends (default 1)")
    report.add_argument("--engine", choices=("auto", "local", "ray"), default="auto",
                        help="how to prepare: Ray Data (ray), this process (local), or whichever is expected to "
                             "finish first (auto, the default)")
    report.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    return parser


# ---------------------------------------------------------------- building the report


def window_counts(export: Any, prep: Any, window: int, stride: int) -> dict[str, dict[str, int]]:
    """Date -> windows of T rows (stride S) the day could hold (``windows``) and those each rule
    drops (``pipeline.windows_dropped``), from the raw day features under the gates of ``prep``.
    A windowed day's windows are cut from its exported ones (``WindowLayout.candidate_ends``).
    Raises ConfigError for a window longer than a windowed day's T."""
    from lobsearch.data.days import load_day
    from lobsearch.data.gating import candidate_ends, gate_rows
    from lobsearch.data.pipeline import windows_dropped

    g = prep.gates
    counts = {}
    for day_file in export.days():
        day = load_day(day_file)
        gates = gate_rows(day.features, book_valid=g.book_valid, mbo_ready=g.mbo_ready, invalidity=g.invalidity)
        if day.layout is None:
            ends = candidate_ends(day.num_samples, window, stride)
        else:
            ends = day.layout.candidate_ends(window, stride, f"day {day.date} ({day_file.features})")
        dropped = windows_dropped(gates, ends, window, last_row=g.last_row)
        counts[day_file.date] = {"windows": int(ends.size), **dropped}
    return counts


def split_summary(days: list[dict], strategy: str = "tlob") -> dict[str, dict[str, Any]]:
    """Split -> days, rows, rows kept and label balance per horizon (percent of each class,
    keyed by ``class_keys(strategy)``)."""
    classes = class_keys(strategy)
    summary: dict[str, dict[str, Any]] = {}
    for split in SPLIT_ORDER:
        members = [d for d in days if d["split"] == split]
        if not members:
            continue
        balance = {}
        for horizon in members[0]["label_balance"]:
            counts = [sum(d["label_balance"][horizon][c] for d in members) for c in range(len(classes))]
            total = sum(counts) or 1
            balance[horizon] = {name: round(100 * n / total, 1) for name, n in zip(classes, counts)}
        summary[split] = {
            "days": len(members),
            "rows": sum(d["rows"] for d in members),
            "rows_kept": sum(d["rows_kept"] for d in members),
            "label_balance_percent": balance,
        }
    return summary


DEFAULT_WINDOW = 100
"""The report's window on a flat export when ``--window`` is not given."""


def default_window(prepared: Any) -> int:
    """DEFAULT_WINDOW, or the shortest T of the windowed days of ``prepared`` (a window cut from
    a windowed export has at most T rows)."""
    sizes = [d.layout.window for days in prepared.splits.values() for d in days if d.layout is not None]
    return min(sizes) if sizes else DEFAULT_WINDOW


def build_report(export_dir: Path, window: int | None, stride: int, engine: str) -> dict[str, Any]:
    """Prepare ``export_dir`` (default prep config) and assemble the report; ``window`` None is
    ``default_window``. Raises DataError, or ConfigError for a window longer than an export's T."""
    from lobsearch.config import PrepConfig
    from lobsearch.data.days import discover_export
    from lobsearch.data.pipeline import prepare, prepared_root

    prep = PrepConfig()
    export = discover_export(export_dir)
    prepared = prepare(export, prep, engine=engine)
    window = window or default_window(prepared)
    windows = window_counts(export, prep, window, stride)
    report = prepared.gate_report
    days = [{**{k: v for k, v in d.items() if k != "windows_dropped"}, "windows": windows[d["date"]]}
            for d in report["days"]]
    return {
        "export": str(export.root),
        "key": prepared.key,
        "gate_report": str(prepared_root() / prepared.key / "gate_report.json"),
        "window": window,
        "stride": stride,
        "label_strategy": prepared.label_strategy,
        "classes": list(class_keys(prepared.label_strategy)),
        "days": days,
        "totals": report["totals"],
        "days_dropped": report["days_dropped"],
        "days_skipped_by_export": report["days_skipped_by_export"],
        "days_skipped_unnamed": report["days_skipped_unnamed"],
        "splits": split_summary(report["days"], prepared.label_strategy),
    }


# ---------------------------------------------------------------- printing


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], left: int = 1) -> list[str]:
    """Lines of a plain-text table: the first ``left`` columns left-aligned, the others right-aligned."""
    cells = [[f"{v:,}" if isinstance(v, int) else str(v) for v in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]

    def line(values: Sequence[str]) -> str:
        parts = [v.ljust(w) if i < left else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths))]
        return "  ".join(parts).rstrip()

    return [line(header), line(["-" * w for w in widths]), *(line(r) for r in cells)]


def day_table(report: dict[str, Any]) -> list[str]:
    """Per day: rows, rows dropped per rule, windows, windows dropped per rule."""
    rules = list(report["days"][0]["rows_dropped"])
    header = ["date", "split", "rows", *(f"rows-{r}" for r in rules), "rows kept",
              "windows", *(f"win-{r}" for r in rules), "windows kept"]
    rows = []
    for d in report["days"]:
        w = d["windows"]
        rows.append([d["date"], d["split"], d["rows"], *(d["rows_dropped"][r] for r in rules), d["rows_kept"],
                     w["windows"], *(w[r] for r in rules), w["windows"] - w["total"]])
    total = ["total", ""] + [sum(row[i] for row in rows) for i in range(2, len(header))]
    return _table(header, [*rows, total], left=2)


def split_table(report: dict[str, Any]) -> list[str]:
    """Per split: days, rows, rows kept, and the percent of each class for each horizon (classes
    by their initials: D/S/U for Down/Stable/Up, SL/T/PT for StopLoss/Timeout/ProfitTarget)."""
    splits, classes = report["splits"], report["classes"]
    horizons = list(next(iter(splits.values()))["label_balance_percent"])
    initials = "/".join(_initials(c) for c in classes)
    header = ["split", "days", "rows", "rows kept", *(f"h{h} {initials} %" for h in horizons)]
    rows = []
    for split, s in splits.items():
        balance = s["label_balance_percent"]
        shares = ["/".join(f"{balance[h][c]:.1f}" for c in classes) for h in horizons]
        rows.append([split, s["days"], s["rows"], s["rows_kept"], *shares])
    return _table(header, rows)


def render(report: dict[str, Any]) -> str:
    """The report as text: the per-day table, the split summary, dropped days, the JSON path."""
    lines = [f"gate report for {report['export']}",
             f"rows-<rule>, win-<rule>: rows and windows (T={report['window']}, stride {report['stride']}) "
             "that fail the rule; a row or window failing several rules counts under each", ""]
    lines += day_table(report) + [""] + split_table(report)
    for dropped in report["days_dropped"]:
        lines.append(f"day {dropped['date']} ({dropped['split']}) not prepared: {dropped['reason']}")
    for gone in report["days_skipped_by_export"]:
        lines.append(f"day {gone['date']} ({gone['split'] or 'split not stated'}) not exported, as the manifest's "
                     f"{gone['manifest_key']} says: {gone['reason']}")
    if report["days_skipped_unnamed"]:
        lines.append(f"{report['days_skipped_unnamed']} more day(s) not exported, as the manifest's skipped_days "
                     "counts (it does not name them)")
    lines += ["", f"JSON gate report: {report['gate_report']}"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        report = build_report(args.export, args.window, args.stride, args.engine)
    except LobsearchError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_ERROR
    print(json.dumps(report, indent=1) if args.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

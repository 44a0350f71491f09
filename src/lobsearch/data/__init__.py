"""Reading and preparing day files: discovery and validation (days), gating, normalization, windows.

The entry points of reading an export, importable from here as the older trainer spells them
(``from lobsearch.data import load_split_data``); preparing and windowing live in
``lobsearch.data.pipeline`` and ``lobsearch.data.windows``.
"""

from lobsearch.data.days import (
    DataWarning,
    Day,
    DayFile,
    Export,
    LabelRule,
    ValidationReport,
    discover_export,
    load_day,
    load_split_data,
    validate_export,
)
from lobsearch.data.layout import WindowLayout

__all__ = [
    "DataWarning",
    "Day",
    "DayFile",
    "Export",
    "LabelRule",
    "ValidationReport",
    "WindowLayout",
    "discover_export",
    "load_day",
    "load_split_data",
    "validate_export",
]

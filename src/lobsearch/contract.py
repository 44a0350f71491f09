"""The LOB day-file contract in code: feature indices, groups, gates, labels and presets.

These are the names that cross boundaries (exporter -> lobsearch -> reports). The table they
encode is ``shared/contract.md``; ``tests/test_contract.py`` checks every name and index
against it.
"""

from __future__ import annotations

from enum import IntEnum
from types import MappingProxyType

FEATURE_COUNT = 98
"""Columns of the stable export layout."""

KNOWN_FEATURE_COUNTS = (40, 48, 76, 84, 98, 116, 128, 136, 148)
"""Feature counts seen upstream; counts above 98 are 98 + experimental groups."""

BOOK_LEVELS = 10


class FeatureIndex(IntEnum):
    """Column index of every feature in the 98-feature layout (``FeatureIndex.TRUE_OFI == 84``)."""

    ASK_PRICE_L0 = 0
    ASK_PRICE_L1 = 1
    ASK_PRICE_L2 = 2
    ASK_PRICE_L3 = 3
    ASK_PRICE_L4 = 4
    ASK_PRICE_L5 = 5
    ASK_PRICE_L6 = 6
    ASK_PRICE_L7 = 7
    ASK_PRICE_L8 = 8
    ASK_PRICE_L9 = 9
    ASK_SIZE_L0 = 10
    ASK_SIZE_L1 = 11
    ASK_SIZE_L2 = 12
    ASK_SIZE_L3 = 13
    ASK_SIZE_L4 = 14
    ASK_SIZE_L5 = 15
    ASK_SIZE_L6 = 16
    ASK_SIZE_L7 = 17
    ASK_SIZE_L8 = 18
    ASK_SIZE_L9 = 19
    BID_PRICE_L0 = 20
    BID_PRICE_L1 = 21
    BID_PRICE_L2 = 22
    BID_PRICE_L3 = 23
    BID_PRICE_L4 = 24
    BID_PRICE_L5 = 25
    BID_PRICE_L6 = 26
    BID_PRICE_L7 = 27
    BID_PRICE_L8 = 28
    BID_PRICE_L9 = 29
    BID_SIZE_L0 = 30
    BID_SIZE_L1 = 31
    BID_SIZE_L2 = 32
    BID_SIZE_L3 = 33
    BID_SIZE_L4 = 34
    BID_SIZE_L5 = 35
    BID_SIZE_L6 = 36
    BID_SIZE_L7 = 37
    BID_SIZE_L8 = 38
    BID_SIZE_L9 = 39
    MID_PRICE = 40
    SPREAD = 41
    SPREAD_BPS = 42
    TOTAL_BID_VOLUME = 43
    TOTAL_ASK_VOLUME = 44
    VOLUME_IMBALANCE = 45
    WEIGHTED_MID_PRICE = 46
    PRICE_IMPACT = 47
    ADD_RATE_BID = 48
    ADD_RATE_ASK = 49
    CANCEL_RATE_BID = 50
    CANCEL_RATE_ASK = 51
    TRADE_RATE_BID = 52
    TRADE_RATE_ASK = 53
    NET_ORDER_FLOW = 54
    NET_CANCEL_FLOW = 55
    NET_TRADE_FLOW = 56
    AGGRESSIVE_ORDER_RATIO = 57
    ORDER_FLOW_VOLATILITY = 58
    FLOW_REGIME_INDICATOR = 59
    SIZE_P25 = 60
    SIZE_P50 = 61
    SIZE_P75 = 62
    SIZE_P90 = 63
    SIZE_ZSCORE = 64
    LARGE_ORDER_RATIO = 65
    SIZE_SKEWNESS = 66
    SIZE_CONCENTRATION = 67
    AVG_QUEUE_POSITION = 68
    QUEUE_SIZE_AHEAD = 69
    ORDERS_PER_LEVEL = 70
    LEVEL_CONCENTRATION = 71
    DEPTH_TICKS_BID = 72
    DEPTH_TICKS_ASK = 73
    LARGE_ORDER_FREQUENCY = 74
    LARGE_ORDER_IMBALANCE = 75
    MODIFICATION_SCORE = 76
    ICEBERG_PROXY = 77
    AVG_ORDER_AGE = 78
    MEDIAN_ORDER_LIFETIME = 79
    AVG_FILL_RATIO = 80
    AVG_TIME_TO_FIRST_FILL = 81
    CANCEL_TO_ADD_RATIO = 82
    ACTIVE_ORDER_COUNT = 83
    TRUE_OFI = 84
    DEPTH_NORM_OFI = 85
    EXECUTED_PRESSURE = 86
    SIGNED_MP_DELTA_BPS = 87
    TRADE_ASYMMETRY = 88
    CANCEL_ASYMMETRY = 89
    FRAGILITY_SCORE = 90
    DEPTH_ASYMMETRY = 91
    BOOK_VALID = 92
    TIME_REGIME = 93
    MBO_READY = 94
    DT_SECONDS = 95
    INVALIDITY_DELTA = 96
    SCHEMA_VERSION = 97


assert len(FeatureIndex) == FEATURE_COUNT

ASK_PRICES = tuple(range(0, 10))
ASK_SIZES = tuple(range(10, 20))
BID_PRICES = tuple(range(20, 30))
BID_SIZES = tuple(range(30, 40))
QUOTE_COLUMNS = (FeatureIndex.MID_PRICE, FeatureIndex.SPREAD)
"""The raw quotes trading metrics are priced from: mid price and spread (ask minus bid), USD.
An export of 40 columns has neither."""

FEATURE_GROUPS = MappingProxyType(
    {
        "raw_book": tuple(range(0, 40)),
        "derived": tuple(range(40, 48)),
        "mbo": tuple(range(48, 84)),
        "signals": tuple(range(84, 98)),
    }
)
"""The four column groups of the 98-feature layout, each a tuple of indices."""

FEATURE_PRESETS = MappingProxyType(
    {
        "lob_only": tuple(range(0, 40)),
        "lob_derived": tuple(range(0, 48)),
        "signals": tuple(range(84, 92)),
        "lob_signals": tuple(range(0, 40)) + tuple(range(84, 92)),
        "no_meta": tuple(range(0, 92)),
        "full": tuple(range(0, 98)),
    }
)
"""Named feature selections a user picks by name; each is a tuple of column indices."""


class Gate(IntEnum):
    """The three safety gates; the value is the column that carries the gate."""

    BOOK_VALID = FeatureIndex.BOOK_VALID
    MBO_READY = FeatureIndex.MBO_READY
    INVALIDITY = FeatureIndex.INVALIDITY_DELTA


GATE_RULES = MappingProxyType(
    {
        Gate.BOOK_VALID: "BOOK_VALID >= 0.5",
        Gate.MBO_READY: "MBO_READY >= 0.5",
        Gate.INVALIDITY: "INVALIDITY_DELTA == 0",
    }
)
"""Human-readable rule per gate: a row is usable only if every enabled rule holds."""

NEVER_NORMALIZE = frozenset(
    {
        FeatureIndex.BOOK_VALID,
        FeatureIndex.TIME_REGIME,
        FeatureIndex.MBO_READY,
        FeatureIndex.INVALIDITY_DELTA,
        FeatureIndex.SCHEMA_VERSION,
    }
)
"""Gate, categorical and version columns: passed through unscaled by every normalization mode."""

CATEGORICAL = MappingProxyType({FeatureIndex.TIME_REGIME: 7})
"""Categorical columns and their number of codes (TIME_REGIME takes 0..6); never z-scored."""

SIGN_FLIP_SCHEMA_2_0 = (FeatureIndex.NET_CANCEL_FLOW, FeatureIndex.NET_TRADE_FLOW)
"""Columns whose sign is opposite (bearish > 0) in schema 2.0 exports: negate them there only."""

BULLISH_FEATURES = (
    FeatureIndex.VOLUME_IMBALANCE,
    FeatureIndex.NET_ORDER_FLOW,
    FeatureIndex.NET_CANCEL_FLOW,
    FeatureIndex.NET_TRADE_FLOW,
    FeatureIndex.TRUE_OFI,
    FeatureIndex.DEPTH_NORM_OFI,
    FeatureIndex.SIGNED_MP_DELTA_BPS,
)
"""Directional features whose positive values are bullish (after the schema-2.0 sign fix)."""


class Label(IntEnum):
    """Class indices used everywhere inside lobsearch."""

    DOWN = 0
    STABLE = 1
    UP = 2


CLASS_NAMES = ("Down", "Stable", "Up")
N_CLASSES = 3
MISSING_LABEL = -1
"""Class-index label of a row that has none (the first and last rows of a day under a horizon)."""

SIGNED_STRATEGIES = frozenset({"tlob", "opportunity"})
"""Label strategies stored signed, {-1, 0, 1}: shift by +1 to class indices."""

INDEX_STRATEGIES = frozenset({"triple_barrier"})
"""Label strategies stored as class indices {0, 1, 2} already."""

LABEL_STRATEGIES = SIGNED_STRATEGIES | INDEX_STRATEGIES
"""Every label strategy of a labels file; spellings such as ``triplebarrier`` name the same one."""

REGRESSION_STRATEGY = "regression"
"""The label strategy of an export of forward returns in bps (``_regression_labels.npy``), whose
classes come from a threshold: Down below -threshold, Up above +threshold, else Stable."""

STRATEGY_CLASS_NAMES = MappingProxyType(
    {
        "tlob": CLASS_NAMES,
        "opportunity": ("BigDown", "NoOpportunity", "BigUp"),
        "triple_barrier": ("StopLoss", "Timeout", "ProfitTarget"),
        REGRESSION_STRATEGY: CLASS_NAMES,
    }
)
"""What class indices 0, 1, 2 mean under each label strategy (the exporter's class names).
Labels computed from MID_PRICE are smoothed-return labels: those of ``tlob``."""

DEFAULT_HORIZONS = (10, 20, 50, 100)
DEFAULT_SMOOTHING = 10
DEFAULT_THRESHOLD = 0.0008

OBJECTIVES = MappingProxyType(
    {
        "val_macro_f1": "max",
        "val_accuracy": "max",
        "val_mcc": "max",
        "val_kappa": "max",
        "val_log_loss": "min",
        "val_loss": "min",
        "val_net_bps_per_day": "max",
    }
)
"""Metric names a search may optimize, each with its direction. ``val_net_bps_per_day``: the
model traded on the validation days net of costs (``evaluation.net_bps_per_day``); it needs raw
MID_PRICE and SPREAD and ``eval.trading`` not ``off``."""

TRADING_OBJECTIVES = ("val_net_bps_per_day",)
"""Objectives that trade, so need what ``eval.trading: on`` needs."""

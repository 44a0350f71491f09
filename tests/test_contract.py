"""contract.py against the contract page: every feature name and index, groups, presets, gates, labels.

The table is parsed from the team's ``contract.md`` when it can be found (``$LOBSEARCH_CONTRACT_MD``,
``docs/contract.md`` in the repository, or ``shared/contract.md`` beside the checkout), else from the
copy embedded below; when both exist, the copy must say what the page says.
"""

import os
import re
from pathlib import Path

import pytest

from lobsearch.contract import (
    BULLISH_FEATURES,
    CATEGORICAL,
    CLASS_NAMES,
    DEFAULT_HORIZONS,
    DEFAULT_SMOOTHING,
    DEFAULT_THRESHOLD,
    FEATURE_COUNT,
    FEATURE_GROUPS,
    FEATURE_PRESETS,
    GATE_RULES,
    INDEX_STRATEGIES,
    KNOWN_FEATURE_COUNTS,
    MISSING_LABEL,
    N_CLASSES,
    NEVER_NORMALIZE,
    SIGN_FLIP_SCHEMA_2_0,
    SIGNED_STRATEGIES,
    FeatureIndex,
    Gate,
    Label,
)

REPO = Path(__file__).resolve().parents[1]

EMBEDDED = """
- Feature counts seen upstream: 40 (book only), 48, 76, 84, 98 (the stable layout below),
  116, 128, 136, 148 (98 + experimental groups, whose offsets depend on the manifest).

## The 98-feature layout

| index | name | notes |
|---|---|---|
| 0-9 | ASK_PRICE_L0..L9 | USD; 0 is the best ask; an empty level is price 0, size 0 |
| 10-19 | ASK_SIZE_L0..L9 | shares |
| 20-29 | BID_PRICE_L0..L9 | 20 is the best bid |
| 30-39 | BID_SIZE_L0..L9 | |
| 40 | MID_PRICE | (best bid + best ask)/2 |
| 41 | SPREAD | USD |
| 42 | SPREAD_BPS | spread / mid * 1e4 |
| 43 | TOTAL_BID_VOLUME | sum of 10 bid sizes |
| 44 | TOTAL_ASK_VOLUME | |
| 45 | VOLUME_IMBALANCE | (bid - ask)/(bid + ask), in [-1, 1] |
| 46 | WEIGHTED_MID_PRICE | microprice |
| 47 | PRICE_IMPACT | abs(mid - microprice): unsigned, not a direction |
| 48-53 | ADD_RATE_BID/ASK, CANCEL_RATE_BID/ASK, TRADE_RATE_BID/ASK | per second, rolling window |
| 54 | NET_ORDER_FLOW | > 0 bullish |
| 55 | NET_CANCEL_FLOW | > 0 bullish (schema 2.0: opposite sign) |
| 56 | NET_TRADE_FLOW | > 0 bullish (schema 2.0: opposite sign) |
| 57 | AGGRESSIVE_ORDER_RATIO | [0, 1] |
| 58 | ORDER_FLOW_VOLATILITY | |
| 59 | FLOW_REGIME_INDICATOR | [-10, 10] |
| 60-63 | SIZE_P25, SIZE_P50, SIZE_P75, SIZE_P90 | order size distribution |
| 64 | SIZE_ZSCORE | |
| 65 | LARGE_ORDER_RATIO | [0, 1] |
| 66 | SIZE_SKEWNESS | |
| 67 | SIZE_CONCENTRATION | HHI |
| 68 | AVG_QUEUE_POSITION | often 0 (tracking off) |
| 69 | QUEUE_SIZE_AHEAD | often 0 |
| 70 | ORDERS_PER_LEVEL | |
| 71 | LEVEL_CONCENTRATION | |
| 72 | DEPTH_TICKS_BID | |
| 73 | DEPTH_TICKS_ASK | |
| 74 | LARGE_ORDER_FREQUENCY | |
| 75 | LARGE_ORDER_IMBALANCE | [-1, 1] |
| 76 | MODIFICATION_SCORE | |
| 77 | ICEBERG_PROXY | [0, 1] |
| 78 | AVG_ORDER_AGE | seconds |
| 79 | MEDIAN_ORDER_LIFETIME | seconds |
| 80 | AVG_FILL_RATIO | |
| 81 | AVG_TIME_TO_FIRST_FILL | seconds |
| 82 | CANCEL_TO_ADD_RATIO | [0, 10] |
| 83 | ACTIVE_ORDER_COUNT | |
| 84 | TRUE_OFI | order-flow imbalance (Cont 2014) over the sampling interval |
| 85 | DEPTH_NORM_OFI | OFI / mean level-1 depth |
| 86 | EXECUTED_PRESSURE | trade rate ask - bid |
| 87 | SIGNED_MP_DELTA_BPS | (microprice - mid)/mid * 1e4 |
| 88 | TRADE_ASYMMETRY | [-1, 1] |
| 89 | CANCEL_ASYMMETRY | [-1, 1] |
| 90 | FRAGILITY_SCORE | |
| 91 | DEPTH_ASYMMETRY | |
| 92 | BOOK_VALID | gate: 1 when bid > 0, ask > 0 and bid < ask |
| 93 | TIME_REGIME | categorical session code, up to 7 values (0..6); never z-score it |
| 94 | MBO_READY | gate: 0 during the order-flow warm-up at the start of a day |
| 95 | DT_SECONDS | seconds since the previous sample; normalizing it is a configurable choice |
| 96 | INVALIDITY_DELTA | gate: count of crossed/locked book events since the previous sample |
| 97 | SCHEMA_VERSION | 2.0 / 2.1 / 2.2 in older exports, 0.0 (reserved) from schema 3.0 |

Groups: raw book 0-39, derived 40-47, MBO 48-83, signals 84-97.
Never normalize 92, 93, 94, 96, 97. Sign rule: negate 55 and 56 only for schema 2.0 data.

## Safety gates

A row is usable only if BOOK_VALID >= 0.5, MBO_READY >= 0.5 and INVALIDITY_DELTA == 0

## Labels

- Classes: Down, Stable, Up. Stored as int8 {-1, 0, 1} for `tlob`/`opportunity` strategies
  (shift by +1 to {0, 1, 2}); `triple_barrier` labels are already {0, 1, 2}. Decide from metadata
  k <= t < N - h - k. Typical: k = 10, theta = 0.0008, horizons 10, 20, 50, 100, 200.
"""


def contract_page() -> Path | None:
    candidates = [os.environ.get("LOBSEARCH_CONTRACT_MD"), REPO / "docs" / "contract.md",
                  REPO.parent / "shared" / "contract.md"]
    return next((Path(c) for c in candidates if c and Path(c).is_file()), None)


def expand_names(first: int, last: int, text: str) -> list[str]:
    """``ASK_PRICE_L0..L9``, ``ADD_RATE_BID/ASK, ...`` and ``A, B`` -> one name per index."""
    names = []
    for part in (p.strip() for p in text.split(",")):
        levels = re.fullmatch(r"([A-Z_]+?)(\d+)\.\.[A-Z]*?(\d+)", part)
        if levels:
            stem, low, high = levels.groups()
            names += [f"{stem}{i}" for i in range(int(low), int(high) + 1)]
        elif "/" in part:
            head, *others = part.split("/")
            names += [head] + [f"{head.rsplit('_', 1)[0]}_{other}" for other in others]
        else:
            names.append(part)
    assert len(names) == last - first + 1, (first, last, text)
    return names


def parse_table(text: str) -> dict[int, tuple[str, str]]:
    """{index: (name, notes)} from the rows ``| 0-9 | NAMES | notes |`` of the layout table."""
    table = {}
    for first, last, names, notes in re.findall(r"^\|\s*(\d+)(?:-(\d+))?\s*\|([^|]+)\|([^|]*)\|", text, re.M):
        first, last = int(first), int(last or first)
        for index, name in zip(range(first, last + 1), expand_names(first, last, names.strip())):
            assert index not in table, index
            table[index] = (name, notes.strip())
    return table


def parse_facts(text: str) -> dict:
    """The rules stated in prose around the table, as values to compare with contract.py."""
    groups = re.search(r"Groups: (.*)\.", text).group(1)
    counts = re.search(r"Feature counts seen upstream:(.*?)(?:\n- |\n\n)", text, re.S).group(1)
    typical = re.search(r"Typical: k = (\d+), theta = ([\d.]+), horizons ([\d, ]+)", text)
    return {
        "table": parse_table(text),
        "groups": {name.strip().lower().replace(" ", "_"): tuple(range(int(a), int(b) + 1))
                   for name, a, b in re.findall(r"([A-Za-z ]+?) (\d+)-(\d+)", groups)},
        "never_normalize": {int(i) for i in re.search(r"Never normalize ([\d, ]+)\.", text).group(1).split(",")},
        "sign_flip": tuple(int(i) for i in re.search(r"negate (\d+) and (\d+) only for schema 2\.0", text).groups()),
        "feature_counts": tuple(int(n) for n in re.findall(r"\d+", re.sub(r"\([^)]*\)", "", counts))),
        "gates": tuple(re.split(r",\s*|\s+and\s+", re.search(r"usable only if (.*?)\n", text).group(1))),
        "classes": tuple(re.search(r"Classes: (\w+), (\w+), (\w+)\.", text).groups()),
        "signed": set(re.search(r"\{-1, 0, 1\} for `(\w+)`/`(\w+)`", text).groups()),
        "index": set(re.findall(r"`(\w+)` labels are already \{0, 1, 2\}", text)),
        "typical": (int(typical.group(1)), float(typical.group(2)),
                    tuple(int(h) for h in typical.group(3).split(","))),
    }


PAGE = contract_page()
FACTS = parse_facts(PAGE.read_text() if PAGE else EMBEDDED)
TABLE = FACTS["table"]


def test_table_covers_every_index_once():
    assert sorted(TABLE) == list(range(FEATURE_COUNT)) == [int(f) for f in FeatureIndex]


@pytest.mark.parametrize("index", range(FEATURE_COUNT))
def test_feature_index_names_match_the_table(index):
    name = TABLE[index][0]
    assert FeatureIndex[name] == index
    assert FeatureIndex(index).name == name


def test_legacy_spellings_and_count():
    assert FeatureIndex.TRUE_OFI == 84 and FeatureIndex.BOOK_VALID == 92 and FEATURE_COUNT == 98
    assert FeatureIndex.MID_PRICE == 40 and FeatureIndex.SCHEMA_VERSION == 97


@pytest.mark.skipif(PAGE is None, reason="contract.md not found; the embedded copy is in use")
def test_embedded_copy_says_what_the_page_says():
    assert parse_facts(EMBEDDED) == FACTS


def test_groups_match_the_page_and_partition_the_layout():
    assert dict(FEATURE_GROUPS) == FACTS["groups"]
    assert sorted(i for group in FEATURE_GROUPS.values() for i in group) == list(range(FEATURE_COUNT))


def test_presets_are_valid_selections_built_from_the_groups():
    for name, columns in FEATURE_PRESETS.items():
        assert list(columns) == sorted(set(columns)) and set(columns) <= set(range(FEATURE_COUNT)), name
    book, derived = FEATURE_GROUPS["raw_book"], FEATURE_GROUPS["derived"]
    meta = set(range(FeatureIndex.BOOK_VALID, FEATURE_COUNT))
    assert FEATURE_PRESETS["lob_only"] == book
    assert FEATURE_PRESETS["lob_derived"] == book + derived
    assert FEATURE_PRESETS["signals"] == tuple(i for i in FEATURE_GROUPS["signals"] if i not in meta)
    assert FEATURE_PRESETS["lob_signals"] == book + FEATURE_PRESETS["signals"]
    assert FEATURE_PRESETS["no_meta"] == tuple(i for i in range(FEATURE_COUNT) if i not in meta)
    assert FEATURE_PRESETS["full"] == tuple(range(FEATURE_COUNT))
    for name, columns in FEATURE_PRESETS.items():
        assert name == "full" or not NEVER_NORMALIZE & set(columns), name


def test_known_feature_counts_match_the_page():
    assert KNOWN_FEATURE_COUNTS == FACTS["feature_counts"]


def test_never_normalize_and_sign_flip_match_the_page():
    assert {int(i) for i in NEVER_NORMALIZE} == FACTS["never_normalize"]
    assert tuple(int(i) for i in SIGN_FLIP_SCHEMA_2_0) == FACTS["sign_flip"]
    assert {TABLE[i][0] for i in SIGN_FLIP_SCHEMA_2_0} == {"NET_CANCEL_FLOW", "NET_TRADE_FLOW"}
    assert all("schema 2.0: opposite sign" in TABLE[i][1] for i in SIGN_FLIP_SCHEMA_2_0)


def test_gates_are_the_gate_columns_with_the_page_rules():
    gate_columns = {i for i, (_, notes) in TABLE.items() if notes.startswith("gate:")}
    assert {int(g) for g in Gate} == gate_columns
    assert set(GATE_RULES.values()) == set(FACTS["gates"])
    for gate, rule in GATE_RULES.items():
        assert rule.startswith(FeatureIndex(gate).name)


def test_time_regime_is_the_categorical_column_with_seven_codes():
    codes = re.search(r"up to (\d+) values \(0\.\.(\d+)\)", TABLE[FeatureIndex.TIME_REGIME][1]).groups()
    assert dict(CATEGORICAL) == {FeatureIndex.TIME_REGIME: int(codes[0])} and int(codes[1]) == int(codes[0]) - 1


def test_bullish_features_include_every_column_the_page_calls_bullish():
    bullish = {i for i, (_, notes) in TABLE.items() if "> 0 bullish" in notes}
    assert bullish <= {int(i) for i in BULLISH_FEATURES}
    assert FeatureIndex.PRICE_IMPACT not in BULLISH_FEATURES  # unsigned, not a direction


def test_labels_match_the_page():
    assert CLASS_NAMES == FACTS["classes"] and N_CLASSES == len(CLASS_NAMES)
    assert [label.name.capitalize() for label in Label] == list(CLASS_NAMES)
    assert [int(label) for label in Label] == [0, 1, 2] and MISSING_LABEL == -1
    assert set(SIGNED_STRATEGIES) == FACTS["signed"] and set(INDEX_STRATEGIES) == FACTS["index"]
    smoothing, threshold, horizons = FACTS["typical"]
    assert (DEFAULT_SMOOTHING, DEFAULT_THRESHOLD) == (smoothing, threshold)
    assert set(DEFAULT_HORIZONS) <= set(horizons)

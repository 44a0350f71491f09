"""Trading metrics net of costs: complete, non-overlapping trades on class predictions.

The rules, for one split (its days in chronological order):

- Windows are walked in time order (day, then end row). At a window ending at row e that is
  flat and predicts Up (long) or Down (short), and whose predicted-class probability is at least
  tau (tau = 0: no threshold), a position opens at row e and closes at row e + h, h being the
  label's horizon in rows. Stable stays flat.
- Where e + h is past the day's last row no position opens: positions never cross days.
- A day whose exported windows do not overlap (stride S >= T) has no row h rows after a window's
  end: its exit prices come from the export's forward prices (``WindowExits``), its exit pays
  the entry's half spread (the file holds mids only), and "rows" are the day's own rows (window j
  ends at row j*S + T - 1), so that blocking counts the rows that really pass; entry and exit
  mids both come from the forward prices there (float64; the entry equals MID_PRICE of the
  window's last row, ``pipeline.window_exits`` checks it).
- An open position blocks entries until its exit row: the next entry is the first acting window
  whose end row is >= e + h (an exit and the next entry may share a row).
- Costs: each side crosses half the spread (a long buys at the ask, mid + spread / 2, and sells
  at the bid, mid - spread / 2; a short the reverse) and pays ``fee_bps`` of notional. In bps of
  the entry mid:
  ``net = side * (mid_exit - mid_entry) / mid_entry * 1e4
  - (spread_entry + spread_exit) / 2 / mid_entry * 1e4 - 2 * fee_bps``.

Prices are raw MID_PRICE and SPREAD (feature columns 40 and 41, USD), never normalized values.
Ratios with nothing to count (no trade) are 0, never NaN. The always-Stable predictor makes no
trade and scores 0 on every figure: the floor a model must beat after costs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from lobsearch.calibration import check_probs
from lobsearch.contract import MISSING_LABEL, N_CLASSES, FeatureIndex, Label
from lobsearch.errors import ConfigError, DataError

BPS = 1e4
MAX_FEE_BPS = 1e4
"""A fee of 100 % of notional per side or more is a unit mistake, not a fee."""

DEFAULT_TAU_GRID = (0.0,) + tuple(round(0.35 + 0.05 * i, 2) for i in range(13))
"""Thresholds ``tune_threshold`` tries: 0 (act on every Up/Down) and 0.35, 0.40, ..., 0.95."""


@dataclass(frozen=True, eq=False)
class WindowExits:
    """The exit prices of a day whose M exported windows of T rows do not overlap (stride S >= T),
    laid out one after another (window j's rows are ``j*T .. j*T + T - 1`` of the day).

    prices: (M, maxH + 1) float64 mids in USD, column 0 at window j's end, column h h rows of the
    day later, NaN past the day's end (the export's ``_forward_prices.npy`` from its column k).
    """

    prices: np.ndarray
    window: int
    stride: int

    def windows(self, local: np.ndarray) -> np.ndarray:
        """(K,) window index of each laid-out end row ``local`` (rows of the day); raises
        DataError for a row that is not a window's end."""
        j, offset = np.divmod(local - (self.window - 1), self.window)
        bad = (offset != 0) | (j < 0) | (j >= self.prices.shape[0])
        if bad.any():
            raise DataError(f"backtest: row {int(local[bad][0])} of a day of non-overlapping windows (T = "
                            f"{self.window}) is not the end of one of its {self.prices.shape[0]} windows")
        return j

    def exit_mid(self, j: np.ndarray, horizon: int) -> np.ndarray:
        """(K,) mid ``horizon`` rows after window j's end (NaN past the day's end)."""
        if horizon >= self.prices.shape[1]:
            raise ConfigError("backtest", [f"horizon {horizon} needs forward prices {horizon} rows ahead; the "
                                           f"export's reach {self.prices.shape[1] - 1}"])
        return self.prices[j, horizon]


@dataclass(frozen=True, eq=False)
class Quotes:
    """Mid and spread of a split's days, concatenated in chronological order.

    mid, spread: (N,) float64 USD per row; starts: (D + 1,) int64 row offsets, day d being rows
    ``starts[d]:starts[d + 1]``; exits: per day its ``WindowExits`` (a day of non-overlapping
    windows) or None (exits are rows of the day); () when no day has any. Window end rows passed
    to ``backtest`` are global rows into these (as ``WindowSet.ends``).
    """

    mid: np.ndarray
    spread: np.ndarray
    starts: np.ndarray
    exits: tuple[WindowExits | None, ...] = ()

    @classmethod
    def from_days(cls, mids: Sequence[np.ndarray], spreads: Sequence[np.ndarray],
                  exits: Sequence[WindowExits | None] | None = None) -> Quotes:
        """One (N_d,) mid and one (N_d,) spread array per day, USD, and optionally one
        ``WindowExits`` or None per day. Raises DataError on shapes."""
        if len(mids) != len(spreads) or not mids or (exits is not None and len(exits) != len(mids)):
            raise DataError(f"quotes: need one spread (and exits, if any) per mid and >= 1 day, got {len(mids)}, "
                            f"{len(spreads)} and {None if exits is None else len(exits)}")
        for d, (mid, spread) in enumerate(zip(mids, spreads)):
            if np.ndim(mid) != 1 or np.shape(mid) != np.shape(spread):
                raise DataError(f"quotes: day {d}: mid {np.shape(mid)} and spread {np.shape(spread)} must both be (N,)")
        lengths = [len(mid) for mid in mids]
        starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        mid = np.concatenate([np.asarray(m, dtype=np.float64) for m in mids])
        spread = np.concatenate([np.asarray(s, dtype=np.float64) for s in spreads])
        return cls(mid, spread, starts, tuple(exits) if exits is not None and any(e is not None for e in exits) else ())

    def legs(self, ends: np.ndarray, horizon: int) -> tuple[_Legs, np.ndarray, np.ndarray]:
        """(legs, day, clock) of windows ending at global rows ``ends`` (M,) held ``horizon``
        rows: entry and exit quotes and whether the exit lies in the day; each window's day; and
        the row at which it ends in its day's time (the global row, or j*S + T - 1 on a day of
        ``WindowExits``), which the walk compares."""
        day = self.day_of(ends)
        exits = ends + horizon
        feasible = exits < self.starts[day + 1]
        exits = np.where(feasible, exits, ends)
        entry_mid, exit_mid, exit_spread, clock = self.mid[ends], self.mid[exits], self.spread[exits], ends.copy()
        for d, forward in enumerate(self.exits):
            on = np.flatnonzero(day == d) if forward is not None else ()
            if len(on):
                j = forward.windows(ends[on] - self.starts[d])
                entry_mid[on] = forward.prices[j, 0]  # entry and exit from one source (float64)
                exit_mid[on] = forward.exit_mid(j, horizon)
                exit_spread[on] = self.spread[ends[on]]
                feasible[on] = np.isfinite(exit_mid[on])
                clock[on] = j * forward.stride + forward.window - 1
        return _Legs(entry_mid, self.spread[ends], exit_mid, exit_spread, feasible), day, clock

    def priced(self, ends: np.ndarray, horizon: int) -> np.ndarray:
        """(M,) bool: the window's entry has a usable quote (mid > 0, spread >= 0, finite), and so
        has its exit where one lies in the day (no exit opens no position anyway)."""
        legs, _, _ = self.legs(ends, horizon)
        entry = _usable(legs.entry_mid, legs.entry_spread)
        return entry & np.where(legs.feasible, _usable(legs.exit_mid, legs.exit_spread), True)

    @classmethod
    def from_rows(cls, days: Sequence[np.ndarray]) -> Quotes:
        """Raw feature rows (N_d, F >= 42) per day: MID_PRICE (40) and SPREAD (41) of each."""
        for d, rows in enumerate(days):
            if np.ndim(rows) != 2 or np.shape(rows)[1] <= FeatureIndex.SPREAD:
                raise DataError(f"quotes: day {d}: rows must be (N, F) with F >= 42, got {np.shape(rows)}")
        return cls.from_days([r[:, FeatureIndex.MID_PRICE] for r in days], [r[:, FeatureIndex.SPREAD] for r in days])

    @property
    def n_days(self) -> int:
        return int(self.starts.size - 1)

    def day_of(self, rows: np.ndarray) -> np.ndarray:
        """(M,) int64 day of each global row (rows must lie in [0, N))."""
        return np.searchsorted(self.starts, rows, side="right").astype(np.int64) - 1


@dataclass(frozen=True, eq=False)
class Backtest:
    """The trades of one predictor and their figures.

    Per trade (K,), in time order: day (int64 day id), entry_row (int64: global row with
    ``backtest``, row in the day with ``backtest_forward``), side (int8, +1 long, -1 short),
    gross_bps (side times the mid-to-mid return, bps of the entry mid) and net_bps (after both
    half spreads and both fees). n_windows: windows evaluated; n_acting: those where the model
    acts (Up/Down and probability >= tau, whether or not a position blocks it); n_days: distinct
    days among the windows; tau: the threshold (0 = none).
    """

    day: np.ndarray
    entry_row: np.ndarray
    side: np.ndarray
    gross_bps: np.ndarray
    net_bps: np.ndarray
    n_windows: int
    n_acting: int
    n_days: int
    horizon: int
    fee_bps: float
    tau: float

    @property
    def n_trades(self) -> int:
        return int(self.net_bps.size)

    @property
    def coverage(self) -> float:
        """Share of windows where the model would act, in [0, 1]."""
        return self.n_acting / self.n_windows

    @property
    def equity_bps(self) -> np.ndarray:
        """(K + 1,) cumulative net bps after each trade, starting at 0."""
        return np.concatenate([[0.0], np.cumsum(self.net_bps)])

    @property
    def max_drawdown_bps(self) -> float:
        """Largest fall of the cumulative net bps below its running peak (>= 0; 0 without trades)."""
        equity = self.equity_bps
        return float((np.maximum.accumulate(equity) - equity).max())

    def summary(self) -> dict[str, float]:
        """The report's figures: per trade means in bps, per day rates over ``n_days``."""
        trades = self.n_trades
        return {
            "n_trades": float(trades),
            "net_bps_per_trade": float(self.net_bps.mean()) if trades else 0.0,
            "gross_bps_per_trade": float(self.gross_bps.mean()) if trades else 0.0,
            "trades_per_day": trades / self.n_days,
            "hit_rate": float((self.net_bps > 0).mean()) if trades else 0.0,
            "net_bps_per_day": float(self.net_bps.sum()) / self.n_days,
            "max_drawdown_bps": self.max_drawdown_bps,
            "coverage": self.coverage,
            "n_days": float(self.n_days),
            "fee_bps": self.fee_bps,
            "tau": self.tau,
        }


@dataclass(frozen=True)
class ThresholdChoice:
    """The tau ``tune_threshold`` chose and what every tau of the grid scored on validation.

    net_bps_per_day and coverage are those of the chosen tau; scores and coverages line up
    with grid.
    """

    tau: float
    net_bps_per_day: float
    coverage: float
    grid: tuple[float, ...]
    scores: tuple[float, ...]
    coverages: tuple[float, ...]


@dataclass(frozen=True)
class _Legs:
    """Per window (M,): entry and exit mid and spread (USD), and whether an exit exists."""

    entry_mid: np.ndarray
    entry_spread: np.ndarray
    exit_mid: np.ndarray
    exit_spread: np.ndarray
    feasible: np.ndarray


def backtest(
    pred: np.ndarray,
    ends: np.ndarray,
    quotes: Quotes,
    horizon: int,
    *,
    fee_bps: float,
    prob: np.ndarray | None = None,
    tau: float | None = None,
) -> Backtest:
    """Trade the predictions ``pred`` (M,) (class indices) of windows ending at global rows
    ``ends`` (M,) of ``quotes``, holding each position ``horizon`` rows, ``fee_bps`` per side.

    prob: (M,) probability of each predicted class, needed with tau (in [0, 1]). Raises
    ConfigError for a fee outside [0, 1e4) bps, a horizon < 1, a tau outside [0, 1] or a tau
    without prob; DataError for mismatched or out-of-range inputs, or a traded row whose mid is
    not > 0 or whose spread is not >= 0 (naming day and row).
    """
    _check_settings("backtest", horizon, fee_bps, prob, tau)
    ends = _indices("ends", ends)
    pred = _predictions("pred", pred, ends.size)
    if ends.size and (ends.min() < 0 or ends.max() >= quotes.mid.size):
        raise DataError(f"backtest: ends must be rows in [0, {quotes.mid.size}), got {ends.min()}..{ends.max()}")
    legs, day, clock = quotes.legs(ends, horizon)
    return _simulate(pred, _acting(pred, prob, tau), day, clock, legs, horizon, fee_bps, tau)


def backtest_forward(
    pred: np.ndarray,
    ends: np.ndarray,
    day: np.ndarray,
    forward: np.ndarray,
    past: int,
    spread: np.ndarray,
    horizon: int,
    *,
    fee_bps: float,
    prob: np.ndarray | None = None,
    tau: float | None = None,
) -> Backtest:
    """``backtest`` from an export's forward prices instead of rows.

    forward: (M, past + maxH + 1) mid prices (USD) of each window, column ``past`` = its end,
    ``past + h`` = h rows later, NaN past the day's end (``_forward_prices.npy`` rows of the
    windows); ends: (M,) end row in its day; day: (M,) int day ids, chronological; spread: (M,)
    USD at each end. The file has no spread at the exit: the exit pays the entry's half spread.
    A window whose exit price is NaN opens no position. Raises as ``backtest``, and ConfigError
    for a horizon beyond the file's columns.
    """
    _check_settings("backtest_forward", horizon, fee_bps, prob, tau)
    ends, day = _indices("ends", ends), _indices("day", day)
    pred = _predictions("pred", pred, ends.size)
    forward = np.asarray(forward, dtype=np.float64)
    spread = np.asarray(spread, dtype=np.float64)
    if day.shape != ends.shape or spread.shape != ends.shape or forward.shape[:1] != ends.shape or forward.ndim != 2:
        raise DataError(f"backtest_forward: ends {ends.shape}, day {day.shape}, spread {spread.shape} must be (M,) "
                        f"and forward (M, past + maxH + 1), got {forward.shape}")
    if not 0 <= past < forward.shape[1] - horizon:
        problem = f"horizon {horizon} with past {past} needs forward columns > {past + horizon}"
        raise ConfigError("backtest_forward", [f"{problem}; the file has {forward.shape[1]}"])
    exit_mid = forward[:, past + horizon]
    legs = _Legs(forward[:, past], spread, exit_mid, spread, np.isfinite(exit_mid))
    return _simulate(pred, _acting(pred, prob, tau), day, ends, legs, horizon, fee_bps, tau)


def predicted_class(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(M, 3) probabilities -> predicted class (M,) int64 (argmax) and its probability (M,)."""
    probs = check_probs(probs)
    pred = probs.argmax(axis=1)
    return pred, probs[np.arange(pred.size), pred]


def tune_threshold(
    probs: np.ndarray,
    ends: np.ndarray,
    quotes: Quotes,
    horizon: int,
    *,
    fee_bps: float,
    grid: Sequence[float] = DEFAULT_TAU_GRID,
) -> ThresholdChoice:
    """The tau of ``grid`` with the highest validation net bps per day among those with
    coverage > 0; ties (within 1e-9 bps/day) go to the larger tau, which trades less.

    probs: (M, 3) validation probabilities of windows ending at ``ends`` (global rows of
    ``quotes``). Apply the choice once to test: ``backtest(..., prob=..., tau=choice.tau)``.
    Raises ConfigError for an empty grid or a tau outside [0, 1]; DataError when no tau of the
    grid acts on any window (the model predicts Stable everywhere, or never that confidently).
    """
    grid = tuple(float(t) for t in grid)
    bad = [f"grid value {t!r} must be in [0, 1]" for t in grid if not 0.0 <= t <= 1.0]
    if not grid or bad:
        raise ConfigError("tune_threshold", bad or ["grid must name at least one tau, got none"])
    pred, prob = predicted_class(probs)
    runs = [backtest(pred, ends, quotes, horizon, fee_bps=fee_bps, prob=prob, tau=t).summary() for t in grid]
    scores = tuple(run["net_bps_per_day"] for run in runs)
    coverages = tuple(run["coverage"] for run in runs)
    usable = [i for i, c in enumerate(coverages) if c > 0]
    if not usable:
        raise DataError(f"tune_threshold: no tau of {grid} acts on any of the {pred.size} validation windows "
                        "(every prediction is Stable or below the thresholds)")
    best = max(scores[i] for i in usable)
    chosen = max((i for i in usable if scores[i] >= best - 1e-9), key=lambda i: grid[i])
    return ThresholdChoice(grid[chosen], scores[chosen], coverages[chosen], grid, scores, coverages)


def naive_predictions(y_prev: np.ndarray, majority_class: int) -> dict[str, np.ndarray]:
    """The naive predictors of M windows, each (M,) int64: ``stable`` (always Stable: no
    trade), ``majority`` (always ``majority_class``, the most frequent training label) and
    ``previous`` (``y_prev`` (M,), the last label known before each window; MISSING_LABEL -> the
    majority class, as ``metrics.naive_baselines``)."""
    y_prev = np.asarray(y_prev)
    if y_prev.ndim != 1 or not 0 <= majority_class < N_CLASSES:
        raise DataError(f"naive_predictions: y_prev must be (M,), got {y_prev.shape}; "
                        f"majority_class must be in [0, {N_CLASSES}), got {majority_class}")
    previous = _predictions("y_prev", np.where(y_prev == MISSING_LABEL, majority_class, y_prev), y_prev.size)
    return {
        "stable": np.full(y_prev.size, int(Label.STABLE), dtype=np.int64),
        "majority": np.full(y_prev.size, majority_class, dtype=np.int64),
        "previous": previous,
    }


def backtest_many(
    predictions: Mapping[str, np.ndarray], ends: np.ndarray, quotes: Quotes, horizon: int, *, fee_bps: float
) -> dict[str, Backtest]:
    """``backtest`` of each named prediction (M,) on the same windows (model, baselines, oracle)."""
    return {name: backtest(pred, ends, quotes, horizon, fee_bps=fee_bps) for name, pred in predictions.items()}


def _simulate(pred, acting, day, rows, legs: _Legs, horizon: int, fee_bps: float, tau) -> Backtest:
    """Walk the windows, open the trades, price them and check the quotes they used."""
    if pred.size == 0:
        raise DataError("backtest: no windows to evaluate (M = 0)")
    chosen = _walk(day, rows, acting & legs.feasible, horizon)
    side = np.where(pred[chosen] == Label.UP, 1, -1).astype(np.int8)
    entry_mid, exit_mid = legs.entry_mid[chosen], legs.exit_mid[chosen]
    entry_spread, exit_spread = legs.entry_spread[chosen], legs.exit_spread[chosen]
    _check_quotes(day[chosen], rows[chosen], entry_mid, entry_spread, "entry")
    _check_quotes(day[chosen], rows[chosen] + horizon, exit_mid, exit_spread, "exit")
    gross = side * (exit_mid - entry_mid) / entry_mid * BPS
    net = gross - (entry_spread + exit_spread) / 2 / entry_mid * BPS - 2 * fee_bps
    return Backtest(day[chosen], rows[chosen], side, gross, net, int(pred.size), int(np.count_nonzero(acting)),
                    int(np.unique(day).size), int(horizon), float(fee_bps), float(tau or 0.0))


def _walk(day: np.ndarray, rows: np.ndarray, can_enter: np.ndarray, horizon: int) -> np.ndarray:
    """Indices of the windows that open a position, in time order: per day, the first window
    that can enter, then the first whose end row is >= the previous entry + horizon, ..."""
    order = np.lexsort((rows, day))
    order = order[can_enter[order]]
    chosen: list[int] = []
    for segment in np.split(order, np.flatnonzero(np.diff(day[order])) + 1):
        ends = rows[segment]
        i = 0
        while i < segment.size:
            chosen.append(int(segment[i]))
            i = int(np.searchsorted(ends, ends[i] + horizon, side="left"))
    return np.asarray(chosen, dtype=np.int64)


def _acting(pred: np.ndarray, prob: np.ndarray | None, tau: float | None) -> np.ndarray:
    """(M,) bool: Up or Down, and probability >= tau where a threshold is given."""
    acting = pred != Label.STABLE
    if tau is None:
        return acting
    prob = np.asarray(prob, dtype=np.float64)
    if prob.shape != pred.shape or not np.all((prob >= 0) & (prob <= 1)):
        raise DataError(f"backtest: prob must be (M,) = {pred.shape} probabilities in [0, 1], got shape {prob.shape}")
    return acting & (prob >= tau)


def _check_settings(source: str, horizon, fee_bps, prob, tau) -> None:
    """Every bad setting in one ConfigError."""
    problems = []
    if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)) or horizon < 1:
        problems.append(f"horizon must be an integer >= 1 (rows), got {horizon!r}")
    if not isinstance(fee_bps, (int, float, np.number)) or not 0.0 <= float(fee_bps) < MAX_FEE_BPS:
        problems.append(f"fee_bps must be a number in [0, {MAX_FEE_BPS:g}) (bps per side), got {fee_bps!r}")
    if tau is not None and not (isinstance(tau, (int, float, np.number)) and 0.0 <= float(tau) <= 1.0):
        problems.append(f"tau must be a probability in [0, 1], got {tau!r}")
    if tau is not None and prob is None:
        problems.append(f"tau {tau!r} needs prob, the probability of each predicted class")
    if problems:
        raise ConfigError(source, problems)


def _usable(mid: np.ndarray, spread: np.ndarray) -> np.ndarray:
    """(M,) bool: a quote one can trade at (finite mid > 0, finite spread >= 0)."""
    return np.isfinite(mid) & (mid > 0) & np.isfinite(spread) & (spread >= 0)


def _check_quotes(day, rows, mid, spread, leg: str) -> None:
    """DataError naming the first traded row whose mid is not > 0 or spread not >= 0."""
    bad = np.flatnonzero(~_usable(mid, spread))
    if bad.size:
        i = bad[0]
        raise DataError(f"backtest: day {day[i]} row {rows[i]} ({leg} of a trade): mid must be > 0 and spread >= 0 "
                        f"(raw USD, columns 40 and 41), got mid {float(mid[i])!r}, spread {float(spread[i])!r}")


def _indices(name: str, values: np.ndarray) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1 or not (np.issubdtype(array.dtype, np.integer) or array.size == 0):
        raise DataError(f"trading: {name} must be a 1-D integer array, got shape {array.shape} dtype {array.dtype}")
    return array.astype(np.int64)


def _predictions(name: str, values: np.ndarray, size: int) -> np.ndarray:
    array = _indices(name, values)
    if array.size != size:
        raise DataError(f"trading: {name} has {array.size} windows, ends {size}: they must match")
    outside = array[(array < 0) | (array >= N_CLASSES)]
    if outside.size:
        raise DataError(f"trading: {name} must be class indices in [0, {N_CLASSES}), got {outside[0]}")
    return array

"""Frozen, typed configurations: YAML becomes one of these once, at the edge.

Loading is strict: unknown keys, wrong types, NaN and out-of-range values are errors, and every
problem in a file is reported in one pass, each naming its dotted key, the rule and the value
(``data.window: must be >= 1 (got 0)``). Past this module, code takes plain arguments.

A run config has three sections, as the older trainer's users write them, and an optional fourth::

    data:  {export, features, window, stride, horizon, normalization, gates, labels}
    model: {name, <hyperparameters of that model>}
    train: {epochs, batch_size, learning_rate, ...}
    eval:  {fee_bps, tau_grid, trading, n_boot, level}   # how the trained model is judged

The older spellings ``data.sequence.window_size``, ``data.sequence.stride``,
``model.model_type`` and ``data.data_dir`` are accepted and mapped onto the names above.

The schema stands without the model zoo (importing this module loads no torch): whether
``model`` names a registered model with valid hyperparameters, and whether ``data.window`` is
long enough for it, is a second pass (``model_problems``) that ``validate_run`` runs after the
schema and reports together with it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from lobsearch.contract import DEFAULT_HORIZONS, DEFAULT_SMOOTHING, DEFAULT_THRESHOLD
from lobsearch.errors import ConfigError
from lobsearch.schema import Frozen, validate


class GatesConfig(Frozen):
    """Which safety gates apply, and whether a window needs every row to pass or only its last."""

    book_valid: StrictBool = True
    mbo_ready: StrictBool = True
    invalidity: StrictBool = True
    last_row: StrictBool = False


class NormalizationConfig(Frozen):
    """How features are scaled.

    ``train``: z-score with statistics of training days only (the default, leak-free).
    ``per_day``: each day's own statistics; these include rows after the prediction time of every
    window (same-day look-ahead), so use it only to compare with the literature.
    ``prior_days``: statistics of the previous ``prior_days`` days; the first ones are dropped.
    ``none``: values as exported (cast to float32). Already-normalized exports are never rescaled.
    """

    mode: Literal["train", "per_day", "prior_days", "none"] = "train"
    prior_days: StrictInt = Field(5, ge=1)
    clip: StrictFloat | StrictInt = Field(10.0, gt=0)
    normalize_dt: StrictBool = True


class LabelsConfig(Frozen):
    """Where labels come from: the export's labels files, or the smoothed-return rule on MID_PRICE.

    ``threshold_bps`` turns a regression export's forward returns (``_regression_labels.npy``,
    basis points) into classes: Down below -threshold_bps, Up above +threshold_bps, Stable
    between. A regression export needs it (searchable as a categorical choice); other exports
    ignore it.
    """

    source: Literal["auto", "file", "computed"] = "auto"
    horizons: tuple[StrictInt, ...] = DEFAULT_HORIZONS
    smoothing: StrictInt = Field(DEFAULT_SMOOTHING, ge=0)
    threshold: StrictFloat | StrictInt = Field(DEFAULT_THRESHOLD, ge=0)
    threshold_bps: StrictFloat | StrictInt | None = Field(None, gt=0)

    @field_validator("horizons")
    @classmethod
    def _positive_horizons(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or min(value) < 1:
            raise ValueError(f"must be a non-empty list of positive row counts (got {list(value)})")
        return value


class PrepConfig(Frozen):
    """The part of the data settings that decides preprocessing (and so the cache key)."""

    gates: GatesConfig = GatesConfig()
    normalization: NormalizationConfig = NormalizationConfig()
    labels: LabelsConfig = LabelsConfig()


class DataConfig(Frozen):
    """Which export, which columns, and how rows become windows."""

    export: Path | None = None
    features: StrictStr | tuple[StrictInt, ...] = "full"
    time_regime_onehot: StrictBool = False
    window: StrictInt = Field(100, ge=1)
    stride: StrictInt = Field(1, ge=1)
    horizon: StrictInt = Field(10, ge=1)
    max_train_windows: StrictInt | None = Field(None, ge=1)
    gates: GatesConfig = GatesConfig()
    normalization: NormalizationConfig = NormalizationConfig()
    labels: LabelsConfig = LabelsConfig()

    @model_validator(mode="before")
    @classmethod
    def _legacy_names(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw
        raw = dict(raw)
        sequence = raw.pop("sequence", None)
        if isinstance(sequence, dict):
            sequence = dict(sequence)
            for old, new in (("window_size", "window"), ("stride", "stride")):
                if old in sequence:
                    raw.setdefault(new, sequence.pop(old))
            for key, value in sequence.items():
                raw[f"sequence.{key}"] = value
        if "data_dir" in raw:
            raw.setdefault("export", raw.pop("data_dir"))
        return raw

    def prep(self) -> PrepConfig:
        """The preprocessing part of these settings."""
        return PrepConfig(gates=self.gates, normalization=self.normalization, labels=self.labels)


class ModelConfig(Frozen):
    """A model name plus its hyperparameters, written flat beside the name.

    The schema takes any name and any hyperparameters; ``model_problems`` checks them against
    the model registry.
    """

    name: StrictStr = "lstm"
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _flat_hyperparameters(cls, raw: Any) -> Any:
        if not isinstance(raw, dict) or "params" in raw:
            return raw
        raw = dict(raw)
        if "model_type" in raw:
            raw.setdefault("name", raw.pop("model_type"))
        name = raw.pop("name", "lstm")
        return {"name": name, "params": raw}


class TrainConfig(Frozen):
    """Optimizer, schedule, loss and loop settings of one training run."""

    epochs: StrictInt = Field(10, ge=1)
    batch_size: StrictInt = Field(256, ge=1)
    learning_rate: StrictFloat = Field(1e-3, gt=0, le=1)
    weight_decay: StrictFloat | StrictInt = Field(1e-4, ge=0)
    schedule: Literal["cosine", "none"] = "cosine"
    warmup_epochs: StrictInt = Field(0, ge=0)
    loss: Literal["cross_entropy", "focal"] = "cross_entropy"
    focal_gamma: StrictFloat | StrictInt = Field(2.0, ge=0)
    class_weights: StrictBool = True
    grad_clip: StrictFloat | StrictInt | None = Field(1.0, gt=0)
    patience: StrictInt | None = Field(5, ge=1)
    seed: StrictInt = 0
    steps_per_epoch: StrictInt | None = Field(None, ge=1)
    eval_batch_size: StrictInt = Field(2048, ge=1)
    max_eval_windows: StrictInt | None = Field(None, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    compile: Literal[
        "auto", "off", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"
    ] = "auto"
    cuda_graphs: Literal["auto", "on", "off"] = "auto"
    num_threads: StrictInt | None = Field(None, ge=1)


MAX_FEE_BPS = 1e4
"""Fees are below this many bps per side (``trading.MAX_FEE_BPS``): 100 % of notional or more
is a unit mistake, not a fee."""


class EvalConfig(Frozen):
    """How the trained model is judged after training: in trading terms, net of costs.

    ``fee_bps``: the fee per side in bps of notional, paid on entry and on exit, on top of
    crossing half the spread each way (``lobsearch.trading``). The default 0.5 bps is a
    conservative round figure for a liquid US equity: an exchange's take fee of about $0.003 a
    share is 0.3 bps of a $100 share, and the regulatory fees are far smaller.
    ``tau_grid``: the action thresholds tried on validation days (a position opens only when the
    predicted class's probability is >= tau; 0 = act on every Up/Down), each in [0, 1]; None is
    0 and 0.35, 0.40, ..., 0.95 (``trading.DEFAULT_TAU_GRID``). The tau with the highest
    validation net bps per day is applied once to test.
    ``trading``: ``auto`` reports trading metrics when the export has raw MID_PRICE and SPREAD
    (columns 40 and 41) and a note when not; ``on`` makes their absence an error before
    training; ``off`` skips them.
    ``n_boot`` and ``level``: resamples and confidence level of the block-bootstrap interval of
    the test lift (``selection.lift_interval``) that the verdict reads.
    """

    fee_bps: StrictFloat | StrictInt = Field(0.5, ge=0, lt=MAX_FEE_BPS)
    tau_grid: tuple[StrictFloat | StrictInt, ...] | None = None
    trading: Literal["auto", "on", "off"] = "auto"
    n_boot: StrictInt = Field(2000, ge=100)
    level: StrictFloat = Field(0.95, gt=0, lt=1)

    @field_validator("tau_grid")
    @classmethod
    def _probabilities(cls, value: tuple[float, ...] | None) -> tuple[float, ...] | None:
        if value is None:
            return value
        outside = [t for t in value if not 0 <= t <= 1]
        if not value or outside:
            raise ValueError("must be a non-empty list of probabilities in [0, 1]")
        return value


class RunConfig(Frozen):
    """One training run: ``python -m lobsearch.train RUN.yaml`` takes this.

    Build one with ``validate_run`` (or ``load_run_config``), which adds the model check to
    the schema's.
    """

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()


def trading_problems(config: EvalConfig, n_features: int, quotes_note: str | None = None) -> list[str]:
    """Why ``eval.trading: on`` cannot be met by an export of ``n_features`` columns (fewer than
    42: no MID_PRICE and SPREAD), or whose prepared data says ``quotes_note`` (``Prepared.
    quotes_note``: why some day has no raw quotes to trade at); [] otherwise, and always with
    auto or off. The column count is known before Ray starts (``validate_export``)."""
    if config.trading != "on":
        return []
    if n_features <= 41:
        quotes_note = f"the export has {n_features} columns, so no MID_PRICE and SPREAD (columns 40 and 41)"
    if quotes_note is None:
        return []
    return [f"eval.trading: 'on' asks for trading metrics, which need raw MID_PRICE and SPREAD, but "
            f"{quotes_note} (got 'on'; use 'auto' to report them only where the export has them, or 'off')"]


def model_problems(model: ModelConfig, window: int | None = None) -> list[str]:
    """What the model registry rejects in ``model``, one line each: an unknown name (with the
    closest match and the choices), unknown or invalid hyperparameters (``model.<key>: ...``),
    its cross-field rules, and ``window`` when given and below the model's minimum."""
    from lobsearch.models import model_spec

    try:
        spec = model_spec(model.name)
    except ConfigError as error:
        return [f"model.name: {p}" for p in error.problems]
    found = spec.problems(model.params, window=window)
    return [f"model.{p}" if p.partition(": ")[0] in model.params else f"model: {p}" for p in found]


def validate_run(raw: Any, source: str) -> RunConfig:
    """Build a RunConfig from ``raw``: the schema, then ``model_problems``; raises ConfigError
    listing the problems of both in one pass, prefixed by ``source``. When the schema fails, the
    model is still checked if its own section is valid (the window if ``data`` is)."""
    try:
        config = validate(RunConfig, raw, source)
    except ConfigError as error:
        model, data = _section(ModelConfig, raw, "model"), _section(DataConfig, raw, "data")
        found = model_problems(model, data.window if data else None) if model else []
        raise ConfigError(source, [*error.problems, *found]) from None
    found = model_problems(config.model, config.data.window)
    if found:
        raise ConfigError(source, found)
    return config


def _section(cls: type[Frozen], raw: Any, key: str) -> Any:
    """``raw[key]`` built as ``cls``, or None when it breaks the schema (reported there)."""
    value = raw.get(key) if isinstance(raw, dict) else None
    try:
        return cls.model_validate({} if value is None else value)
    except ValidationError:
        return None


_FLOAT = re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)$")


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` as a float (YAML 1.1 wants ``1.0e-3``) and records
    every key a mapping repeats in ``duplicates`` as (line, problem); a key merged in with
    ``<<`` may still be overridden."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self.duplicates: list[tuple[int, str]] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key, line = self.construct_object(key_node), key_node.start_mark.line + 1
            if key in first:
                problem = f"line {line}: duplicate key {key!r} (first at line {first[key]})"
                self.duplicates.append((line, problem))
            first.setdefault(key, line)
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


MAX_YAML_BYTES = 1 << 20
"""The largest config or space file read: the shipped ones are under 2 KB, and validating a space
costs time with its size (a 10 MB one took minutes)."""


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file; raises ConfigError naming the file and the line of a syntax error or
    of each repeated key (``line 12: duplicate key 'params' (first at line 3)``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(str(path), ["file not found"])
    size = path.stat().st_size
    if size > MAX_YAML_BYTES:
        raise ConfigError(str(path), [f"{size:,} bytes: a config or space file is at most "
                                      f"{MAX_YAML_BYTES:,} bytes (is this the right file?)"])
    loader = _Loader(path.read_text())
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as error:
        raise ConfigError(str(path), [f"not valid YAML: {error}"]) from None
    finally:
        loader.dispose()
    if loader.duplicates:
        raise ConfigError(str(path), [problem for _, problem in sorted(loader.duplicates)])
    return data


def load_run_config(path: str | Path) -> RunConfig:
    """Read and validate a run config file (``validate_run``); a relative ``data.export`` is
    made absolute (cwd)."""
    return with_absolute_export(validate_run(read_yaml(path), str(path)))


def with_absolute_export(config: RunConfig) -> RunConfig:
    """The same config with ``data.export`` resolved, since trials run in another directory."""
    export = config.data.export
    if export is None or export.is_absolute():
        return config
    data = config.data.model_copy(update={"export": export.resolve()})
    return config.model_copy(update={"data": data})

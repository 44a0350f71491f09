"""Frozen, typed configurations: YAML becomes one of these once, at the edge.

Loading is strict: unknown keys, wrong types, NaN and out-of-range values are errors, and every
problem in a file is reported in one pass, each naming its dotted key, the rule and the value
(``data.window: must be >= 1 (got 0)``). Past this module, code takes plain arguments.

A run config has three sections, as the older trainer's users write them::

    data:  {export, features, window, stride, horizon, normalization, gates, labels}
    model: {name, <hyperparameters of that model>}
    train: {epochs, batch_size, learning_rate, ...}

The older spellings ``data.sequence.window_size``, ``data.sequence.stride``,
``model.model_type`` and ``data.data_dir`` are accepted and mapped onto the names above.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
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
from lobsearch.errors import ConfigError, closest


class Frozen(BaseModel):
    """Base of every config: immutable, unknown keys rejected, NaN and inf rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    def digest(self) -> str:
        """A stable 16-hex-digit hash of the config's content (its canonical JSON)."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


PositiveInt = Field(ge=1)


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
    """Where labels come from: the export's labels files, or the smoothed-return rule on MID_PRICE."""

    source: Literal["auto", "file", "computed"] = "auto"
    horizons: tuple[StrictInt, ...] = DEFAULT_HORIZONS
    smoothing: StrictInt = Field(DEFAULT_SMOOTHING, ge=0)
    threshold: StrictFloat | StrictInt = Field(DEFAULT_THRESHOLD, ge=0)

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
    """A registered model name plus its hyperparameters, written flat beside the name."""

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

    @model_validator(mode="after")
    def _known_model_and_params(self) -> ModelConfig:
        from lobsearch.models import model_spec

        try:
            spec = model_spec(self.name)
        except ConfigError as error:
            raise ValueError("; ".join(error.problems)) from None
        problems = spec.problems(self.params)
        if problems:
            raise ValueError("; ".join(problems))
        return self


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


class RunConfig(Frozen):
    """One training run: ``python -m lobsearch.train RUN.yaml`` takes this."""

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()

    @model_validator(mode="after")
    def _window_fits_model(self) -> RunConfig:
        from lobsearch.models import model_spec

        problems = model_spec(self.model.name).problems(self.model.params, window=self.data.window)
        if problems:
            raise ValueError("; ".join(problems))
        return self


def _unknown_key(where: str, key: str, choices: Any, what: str = "key") -> str:
    hint = closest(key, choices)
    did_you_mean = f"; did you mean {hint!r}?" if hint else ""
    return f"{where}: unknown {what}{did_you_mean} (choices: {', '.join(sorted(choices))})"


def _model_fields(cls: type[BaseModel], loc: tuple) -> list[str]:
    """The field names valid at ``loc`` (a pydantic error location) inside ``cls``."""
    for part in loc[:-1]:
        field = cls.model_fields.get(str(part)) if isinstance(part, str) else None
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        cls = annotation
    return list(cls.model_fields)


def format_problems(error: ValidationError, cls: type[BaseModel], prefix: str = "") -> list[str]:
    """One line per pydantic error: ``dotted.key: rule (got value)``."""
    problems = []
    for item in error.errors():
        loc = tuple(p for p in item["loc"] if not str(p).startswith("function-"))
        key = prefix + ".".join(str(p) for p in loc if not _is_type_tag(p))
        if item["type"] == "extra_forbidden":
            problems.append(_unknown_key(key, str(loc[-1]), _model_fields(cls, loc)))
            continue
        message = item["msg"].removeprefix("Value error, ")
        value = item.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        problems.append(f"{key or '(top level)'}: {message}{shown}")
    return list(dict.fromkeys(problems))


def _is_type_tag(part: Any) -> bool:
    text = str(part)
    return text in {"int", "float", "str", "bool", "none"} or text.startswith(("tuple[", "constrained"))


def validate(cls: type[Frozen], raw: Any, source: str, prefix: str = "") -> Any:
    """Build ``cls`` from ``raw`` or raise ConfigError listing every problem, prefixed by ``source``."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(source, [f"{prefix or '(top level)'}: must be a mapping (got {type(raw).__name__})"])
    try:
        return cls.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(source, format_problems(error, cls, prefix)) from None


_FLOAT = re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)$")


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` as a float (YAML 1.1 wants ``1.0e-3``)."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file; raises ConfigError naming the file and line for syntax errors."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(str(path), ["file not found"])
    try:
        return yaml.load(path.read_text(), Loader=_Loader)
    except yaml.YAMLError as error:
        raise ConfigError(str(path), [f"not valid YAML: {error}"]) from None


def load_run_config(path: str | Path) -> RunConfig:
    """Read and validate a run config file; a relative ``data.export`` is made absolute (cwd)."""
    config = validate(RunConfig, read_yaml(path), str(path))
    return with_absolute_export(config)


def with_absolute_export(config: RunConfig) -> RunConfig:
    """The same config with ``data.export`` resolved, since trials run in another directory."""
    export = config.data.export
    if export is None or export.is_absolute():
        return config
    data = config.data.model_copy(update={"export": export.resolve()})
    return config.model_copy(update={"data": data})

"""Search-space files: YAML -> a validated ``SearchSpace`` -> an Optuna define-by-run function.

A space file has these sections (every one optional but ``models``)::

    name: lstm                           # default search name
    objective: {metric: val_macro_f1}    # mode follows the metric; `also:` adds objectives
    fixed: {data: {...}, train: {...}}   # a run config's fixed values (see config.RunConfig)
    params:                              # searched data/train settings, by dotted key
      data.window: {type: int, low: 10, high: 100, step: 10}
      train.learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
    models:                              # one family, or several: a conditional space
      lstm:
        fixed: {bidirectional: false}
        params: {hidden_size: {type: int, low: 16, high: 128, log: true}}
    search: {num_samples: 20, time_budget_s: 480, ...}
    tracking: {wandb: auto}

Optuna parameter names are the dotted keys for ``params``, ``model.name`` for the family choice,
and ``<family>.<hyperparameter>`` inside a family, so every branch has its own names.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from pydantic import (
    BaseModel, Field, StrictBool, StrictFloat, StrictInt, StrictStr, field_validator, model_validator,
)

from lobsearch.config import DataConfig, PrepConfig, RunConfig, TrainConfig, read_yaml, validate_run
from lobsearch.contract import OBJECTIVES
from lobsearch.errors import ConfigError, closest, unknown_choice
from lobsearch.schema import Frozen, validate

Scalar = StrictBool | StrictInt | StrictFloat | StrictStr


class Param(Frozen):
    """One searched value: ``float``/``int`` over [low, high] (``log`` or ``step``), or ``categorical``.

    Valid when Optuna accepts its distribution (``distribution``): low <= high, ``log`` needs
    low > 0 and no ``step``, ``step`` > 0, non-empty ``choices``; Optuna's message is the error.
    Checked here besides: categorical takes only ``choices``, float and int take no ``choices``
    and need both bounds, and int bounds and step are whole numbers (Optuna would truncate them).
    """

    type: Literal["float", "int", "categorical"]
    low: StrictInt | StrictFloat | None = None
    high: StrictInt | StrictFloat | None = None
    log: StrictBool = False
    step: StrictInt | StrictFloat | None = None
    choices: tuple[Scalar, ...] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Param:
        ranged = self.low is not None or self.high is not None or self.log or self.step is not None
        if self.type == "categorical" and ranged:
            raise ValueError("categorical takes only `choices` (not low/high/log/step)")
        if self.type != "categorical" and self.choices is not None:
            raise ValueError(f"{self.type} takes low/high, not `choices`")
        if self.type != "categorical" and (self.low is None or self.high is None):
            raise ValueError(f"{self.type} needs both `low` and `high`")
        if self.type == "int" and not all(isinstance(v, int) for v in (self.low, self.high, self.step or 1)):
            raise ValueError(f"int needs whole-number low/high/step (got {self.low}, {self.high}, {self.step})")
        self.distribution()
        return self

    def distribution(self) -> BaseDistribution:
        """The Optuna distribution trials sample from; raises Optuna's ValueError when it has none."""
        if self.type == "categorical":
            return CategoricalDistribution(self.choices or ())
        if self.type == "int":
            return IntDistribution(self.low, self.high, log=self.log, step=self.step or 1)
        return FloatDistribution(self.low, self.high, log=self.log, step=self.step)

    def extremes(self) -> list[Any]:
        """The values that bound this parameter: the lowest and highest a trial can get (Optuna
        trims ``high`` to the last step), or every choice."""
        found = self.distribution()
        return list(found.choices) if self.type == "categorical" else [found.low, found.high]

    def suggest(self, trial: Any, name: str) -> Any:
        """Ask ``trial`` (an optuna Trial or FixedTrial) for this parameter under ``name``."""
        if self.type == "categorical":
            return trial.suggest_categorical(name, list(self.choices))
        if self.type == "int":
            return trial.suggest_int(name, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(name, float(self.low), float(self.high), step=self.step, log=self.log)


class Family(Frozen):
    """One model family's fixed hyperparameters and searched ones."""

    fixed: dict[str, Any] = Field(default_factory=dict)
    params: dict[str, Param] = Field(default_factory=dict)


class ObjectiveTerm(Frozen):
    metric: StrictStr
    mode: Literal["max", "min"]


class Objective(Frozen):
    """What the search optimizes: one metric (ASHA stops on it), plus optional extra objectives,
    and on which days it is measured.

    ``protocol: holdout`` (the default) trains on the training days and validates on the
    export's val days. ``walk_forward`` cuts the training days into ``folds`` chronological
    validation blocks (``data.folds``): fold k trains on the days before its block, less
    ``embargo_days``, with that fold's own normalization statistics, and the metric a trial
    reports is the mean over its folds so far of each fold's best epoch. A trial weak at the end
    of a fold does not start the next (``tuner.FoldGate``); the winner is then trained again on
    every training day and chosen on the val days (``reeval``, so ``search.reeval_top`` >= 1).
    """

    metric: StrictStr = "val_macro_f1"
    mode: Literal["max", "min"] | None = None
    also: tuple[ObjectiveTerm, ...] = ()
    protocol: Literal["holdout", "walk_forward"] = "holdout"
    folds: StrictInt = Field(3, ge=2, le=20)
    embargo_days: StrictInt = Field(0, ge=0)

    @model_validator(mode="after")
    def _known_metric(self) -> Objective:
        if self.metric not in OBJECTIVES:
            raise ValueError(unknown_choice("objective metric", self.metric, OBJECTIVES))
        for term in self.also:
            if term.metric not in EXTRA_OBJECTIVES:
                raise ValueError(unknown_choice("extra objective", term.metric, EXTRA_OBJECTIVES))
        return self

    @property
    def direction(self) -> str:
        """``"max"`` or ``"min"``: ``mode`` when given, else the metric's own direction."""
        return self.mode or OBJECTIVES[self.metric]

    @property
    def sign(self) -> int:
        """1 when the objective is maximized, -1 when minimized: ``sign * value`` grows as trials
        get better."""
        return 1 if self.direction == "max" else -1

    @property
    def multi(self) -> bool:
        return bool(self.also)


EXTRA_OBJECTIVES = ("n_params", "latency_ms")
"""Secondary objectives every trial reports: parameter count and inference latency per batch."""


DEFAULT_REEVAL_TOP = 5
"""Configurations re-evaluated with fresh seeds after a search, unless ``search.reeval_top`` says."""


class SearchSettings(Frozen):
    """How many trials, how many at once, with what resources, for how long; and how the winner
    is chosen after them: the best ``reeval_top`` configurations are trained again with
    ``reeval_seeds`` fresh seeds each and the best mean wins (``lobsearch.reeval``; 0 turns it
    off: the best single trial wins)."""

    num_samples: StrictInt = Field(20, ge=1)
    max_concurrent: StrictInt | None = Field(None, ge=1)
    cpus_per_trial: StrictFloat | StrictInt = Field(1, gt=0)
    gpus_per_trial: Annotated[StrictFloat | StrictInt, Field(ge=0)] | Literal["auto"] = "auto"
    searcher: Literal["tpe", "random"] = "tpe"
    scheduler: Literal["asha", "none"] = "asha"
    grace_period: StrictInt = Field(1, ge=1)
    reduction_factor: StrictFloat | StrictInt = Field(3, gt=1)
    seed: StrictInt = 0
    time_budget_s: StrictFloat | StrictInt | None = Field(None, gt=0)
    max_failures: StrictInt = Field(1, ge=0)
    enqueue: tuple[dict[str, Any], ...] = ()
    reeval_top: StrictInt | None = Field(None, ge=0)
    reeval_seeds: StrictInt = Field(3, ge=2)

    @field_validator("gpus_per_trial", mode="before")
    @classmethod
    def _gpus_or_auto(cls, value: Any) -> Any:
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        if value != "auto" and not (numeric and value >= 0):
            raise ValueError("must be a number of GPUs >= 0, or 'auto'")
        return value

    @model_validator(mode="after")
    def _reeval_within_trials(self) -> SearchSettings:
        if self.reeval_top is not None and self.reeval_top > self.num_samples:
            raise ValueError(f"reeval_top: must be at most num_samples ({self.num_samples}): only finished "
                             f"trials can be re-evaluated, got {self.reeval_top}")
        return self

    @property
    def top_to_reevaluate(self) -> int:
        """``reeval_top``, or by default ``DEFAULT_REEVAL_TOP`` capped at ``num_samples``."""
        return min(DEFAULT_REEVAL_TOP, self.num_samples) if self.reeval_top is None else self.reeval_top

    @model_validator(mode="after")
    def _whole_gpus_above_one(self) -> SearchSettings:
        gpus = self.gpus_per_trial
        if gpus != "auto" and gpus > 1 and gpus != int(gpus):
            raise ValueError(f"gpus_per_trial above 1 must be whole (got {self.gpus_per_trial})")
        return self


class Tracking(Frozen):
    """Where trials are recorded: W&B mode (auto = online with an API key, else offline)."""

    wandb: Literal["auto", "online", "offline", "disabled"] = "auto"
    project: StrictStr = "lobsearch"
    entity: StrictStr | None = None


class SpaceFile(Frozen):
    name: StrictStr | None = None
    objective: Objective = Objective()
    fixed: dict[str, Any] = Field(default_factory=dict)
    params: dict[str, Param] = Field(default_factory=dict)
    models: dict[str, Family]
    search: SearchSettings = SearchSettings()
    tracking: Tracking = Tracking()

    @model_validator(mode="after")
    def _walk_forward_is_reevaluated(self) -> SpaceFile:
        if self.objective.protocol == "walk_forward" and self.search.top_to_reevaluate == 0:
            raise ValueError("search.reeval_top: walk_forward needs it >= 1 (the folds' models never trained on every "
                             "training day; the winner is trained again on them), got 0")
        return self


PREP_SECTIONS = ("gates", "normalization", "labels")
"""DataConfig sections that decide preprocessing; searching them multiplies the data to prepare."""


@dataclass(frozen=True)
class SearchSpace:
    """A validated space: turns sampled flat parameters into run configs."""

    name: str
    source: str
    spec: SpaceFile

    @property
    def families(self) -> list[str]:
        return list(self.spec.models)

    @property
    def max_epochs(self) -> int:
        """The most epochs any trial can run: the top of a searched ``train.epochs`` (its highest
        reachable value or choice), else the fixed ``train.epochs``, else TrainConfig's default."""
        searched = self.spec.params.get("train.epochs")
        if searched is not None:
            return max(searched.extremes())
        fixed = _mapping(self.spec.fixed.get("train")).get("epochs")
        return TrainConfig.model_fields["epochs"].default if fixed is None else fixed

    @property
    def max_trial_epochs(self) -> int:
        """The most epochs one trial can run in all: ``max_epochs`` per fold under walk_forward."""
        objective = self.spec.objective
        return self.max_epochs * (objective.folds if objective.protocol == "walk_forward" else 1)

    def define_by_run(self, trial: Any) -> dict[str, Any]:
        """Sample one configuration into ``trial``; returns the constants Tune should add."""
        for key, param in self.spec.params.items():
            param.suggest(trial, key)
        families = self.families
        family = trial.suggest_categorical("model.name", families) if len(families) > 1 else families[0]
        for key, param in self.spec.models[family].params.items():
            param.suggest(trial, f"{family}.{key}")
        return {} if len(families) > 1 else {"model.name": family}

    def run_config(self, flat: dict[str, Any]) -> RunConfig:
        """The full run config of one sampled point (flat Optuna names -> nested sections)."""
        raw = copy.deepcopy(self.spec.fixed)
        family = flat.get("model.name", self.families[0])
        model = {"name": family, **self.spec.models[family].fixed}
        for key, value in flat.items():
            if key.startswith(f"{family}."):
                model[key[len(family) + 1 :]] = value
            elif key.split(".")[0] in ("data", "train"):
                _set_path(raw, key, value)
        raw["model"] = model
        return validate_run(raw, f"{self.source} (sampled {flat})")

    def prep_configs(self) -> list[PrepConfig]:
        """Every preprocessing config a trial can ask for: the product of searched prep choices."""
        keys = [k for k in self.spec.params if k.split(".")[1] in PREP_SECTIONS]
        choices = [self.spec.params[k].choices for k in keys]
        configs = []
        for combo in itertools.product(*choices):
            flat = dict(zip(keys, combo))
            configs.append(self.run_config({**flat, "model.name": self.families[0]}).data.prep())
        return list({c.digest(): c for c in configs}.values())


def _set_path(raw: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(dotted, [f"{dotted}: the fixed value at {part!r} is not a mapping"])
    node[parts[-1]] = value


def _field_at(dotted: str) -> str | None:
    """None when ``dotted`` names a real data/train field, else the problem."""
    roots: dict[str, type[BaseModel]] = {"data": DataConfig, "train": TrainConfig}
    parts = dotted.split(".")
    if parts[0] not in roots or len(parts) < 2:
        return f"params.{dotted}: must start with 'data.' or 'train.' (model settings go under models.<family>.params)"
    cls: type[BaseModel] = roots[parts[0]]
    for i, part in enumerate(parts[1:], start=1):
        fields = cls.model_fields
        if part not in fields:
            hint = closest(part, fields)
            more = f"; did you mean {'.'.join(parts[:i] + [hint])!r}?" if hint else ""
            return f"params.{dotted}: {'.'.join(parts[: i + 1])!r} is not a setting{more} (choices: {', '.join(fields)})"
        annotation = fields[part].annotation
        if i < len(parts) - 1:
            if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
                return f"params.{dotted}: {'.'.join(parts[: i + 1])!r} has no sub-settings"
            cls = annotation
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return f"params.{dotted}: names a whole section; search one of its settings ({', '.join(annotation.model_fields)})"
    return None


def _mapping(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _check_names(raw: dict) -> list[str]:
    """Name problems of a raw space file, checked even when its schema is broken elsewhere."""
    from lobsearch.models import list_models, model_spec

    params, models = _mapping(raw.get("params")), _mapping(raw.get("models"))
    problems = [p for p in (_field_at(str(k)) for k in params) if p]
    for key, param in params.items():
        kind = _mapping(param).get("type")
        if len(str(key).split(".")) > 2 and str(key).split(".")[1] in PREP_SECTIONS and kind != "categorical":
            problems.append(
                f"params.{key}: preprocessing settings are searched as categorical choices "
                f"(data is prepared once per choice before trials start; got type {kind})"
            )
    if "model" in _mapping(raw.get("fixed")):
        problems.append("fixed.model: model settings go under models.<family>.fixed")
    for family, body in models.items():
        if family not in list_models():
            problems.append(f"models.{family}: " + unknown_choice("model", family, list_models()))
            continue
        known = model_spec(family).hyperparameters
        for key in [*_mapping(_mapping(body).get("fixed")), *_mapping(_mapping(body).get("params"))]:
            if key not in known:
                problems.append(f"models.{family}.{key}: " + unknown_choice(f"hyperparameter of {family}", key, known))
    if not models:
        problems.append("models: needs at least one model family")
    names = param_names(params, models)
    enqueue = _mapping(raw.get("search")).get("enqueue") or []
    for i, point in enumerate(enqueue if isinstance(enqueue, list) else []):
        for key in _mapping(point):
            if key not in names:
                problems.append(f"search.enqueue[{i}].{key}: " + unknown_choice("searched parameter", key, names))
    return problems


def param_names(params: dict, models: dict) -> list[str]:
    """Every Optuna parameter name a space with these ``params`` and ``models`` can produce."""
    names = [str(k) for k in params] + (["model.name"] if len(models) > 1 else [])
    return names + [f"{family}.{key}" for family, body in models.items() for key in _mapping(_mapping(body).get("params"))]


def _check_bounds(space: SearchSpace) -> list[str]:
    """Build the run config at every parameter's bounds, so a bad range fails before Ray starts."""
    problems: list[str] = []
    probes: list[dict[str, Any]] = []
    for family, body in space.spec.models.items():
        probes.append({"model.name": family})
        for key, param in body.params.items():
            probes += [{"model.name": family, f"{family}.{key}": v} for v in param.extremes()]
    for key, param in space.spec.params.items():
        probes += [{key: v} for v in param.extremes()]
    for flat in probes:
        try:
            space.run_config(flat)
        except ConfigError as error:
            where = ", ".join(f"{k}={v!r}" for k, v in flat.items() if k != "model.name") or "fixed values"
            problems += [f"{where}: {p}" for p in error.problems]
    return list(dict.fromkeys(problems))


def _without_unknown_families(raw: Any) -> Any:
    """``raw`` less the model families the registry lacks: ``_check_names`` names each of those
    with the registered choices, and their bodies have no schema to be checked against."""
    from lobsearch.models import list_models

    models = raw.get("models") if isinstance(raw, dict) else None
    if not isinstance(models, dict):
        return raw
    return {**raw, "models": {k: v for k, v in models.items() if k in list_models()}}


def load_space(path: str | Path) -> SearchSpace:
    """Read and validate a search-space file; raises ConfigError listing every problem at once."""
    path = Path(path)
    raw = read_yaml(path)
    problems = _check_names(raw) if isinstance(raw, dict) else []
    try:
        spec = validate(SpaceFile, _without_unknown_families(raw), str(path))
    except ConfigError as error:
        raise ConfigError(str(path), list(dict.fromkeys([*error.problems, *problems]))) from None
    if problems:
        raise ConfigError(str(path), problems)
    space = SearchSpace(name=spec.name or path.stem, source=str(path), spec=spec)
    problems = _check_bounds(space)
    if problems:
        raise ConfigError(str(path), problems)
    return space

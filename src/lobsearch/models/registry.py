"""The model registry: names -> builders, their hyperparameters, tiny twins and CUDA settings.

A family module registers a builder with ``@register("lstm", tiny={...}, backend=...)``. The
builder's signature is the model's contract::

    builder(n_features: int, window: int, n_classes: int = 3, *, name: Annotation = default, ...)

Every keyword-only parameter is a hyperparameter; its default is the model's default and its
annotation is the rule a value is checked against: ``int``, ``float``, ``bool``,
``Literal[...]`` (the choices), optionally wrapped as ``Annotated[int, Interval(...)]``. Each
registration also adds the tiny twin ``"<name>_tiny"``: the same builder with the ``tiny``
hyperparameters as its defaults, small enough for fast tests and smoke runs.
"""

from __future__ import annotations

import fnmatch
import inspect
import math
import numbers
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Annotated, Any, Literal

from torch import nn

from lobsearch.errors import ConfigError, unknown_choice

Check = Callable[[Mapping[str, Any], int | None], list[str]]
"""Cross-field rules of a model: (hyperparameters, n_features or None when unknown) -> problems."""


@dataclass(frozen=True)
class Interval:
    """Range a numeric hyperparameter must lie in: ``[low, high]``, or ``[low, high)``."""

    low: float | None = None
    high: float | None = None
    high_open: bool = False

    def contains(self, value: float) -> bool:
        """Whether ``value`` lies in the range."""
        if self.low is not None and value < self.low:
            return False
        if self.high is None:
            return True
        return value < self.high if self.high_open else value <= self.high

    def __str__(self) -> str:
        if self.high is None:
            return f">= {self.low}"
        return f"in [{self.low}, {self.high}{')' if self.high_open else ']'}"


PositiveInt = Annotated[int, Interval(low=1)]
Dropout = Annotated[float, Interval(0.0, 1.0, high_open=True)]


@dataclass(frozen=True)
class Backend:
    """Per-model CUDA settings, chosen by measurement; the training loop applies them on CUDA.

    channels_last: convert the model to ``torch.channels_last`` (pays off for 2-D convolutions).
    bf16: run the forward pass and loss under ``torch.autocast("cuda", dtype=torch.bfloat16)``.
    cudnn_benchmark: set ``torch.backends.cudnn.benchmark`` (autotune for fixed input shapes).
    compile: wrap the model with ``torch.compile`` (minutes of compile time; off by default).
    cuda_graphs: capture the training step in a CUDA graph and replay it (one launch per step).
    """

    channels_last: bool = False
    bf16: bool = False
    cudnn_benchmark: bool = False
    compile: bool = False
    cuda_graphs: bool = False


@dataclass(frozen=True)
class ModelSpec:
    """A registered model.

    name: registry name (``"lstm"``, ``"lstm_tiny"``); family: the module that defines it
    (``"linear"``, ``"recurrent"``, ``"deeplob"``, ``"transformer"``); builder: the function
    ``create_model`` calls; hyperparameters: read-only {name: default} taken from the builder's
    keyword-only parameters (a twin's defaults include its tiny overrides); min_window: an int
    or a function of the full hyperparameters; tiny: the twin's overrides; backend: CUDA
    settings; window_rule: why a minimum window exists; check: cross-field rules; twin_of: the
    full-size name for a tiny twin, else None.
    """

    name: str
    family: str
    builder: Callable[..., nn.Module]
    hyperparameters: Mapping[str, Any]
    min_window: int | Callable[[Mapping[str, Any]], int]
    tiny: Mapping[str, Any]
    backend: Backend
    window_rule: str = ""
    check: Check | None = None
    twin_of: str | None = None

    def __reduce__(self) -> tuple:
        # builders and checks stay in their modules: a spec travels (to Ray workers) by name
        return (model_spec, (self.name,))

    def resolve(self, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The defaults updated with ``overrides`` (not validated: see ``problems``)."""
        return {**self.hyperparameters, **(overrides or {})}

    def minimum_window(self, hyperparameters: Mapping[str, Any] | None = None) -> int:
        """Smallest window (rows) the model accepts with these hyperparameters (defaults filled)."""
        if callable(self.min_window):
            return int(self.min_window(self.resolve(hyperparameters)))
        return self.min_window

    def problems(
        self,
        hyperparameters: Mapping[str, Any],
        *,
        n_features: int | None = None,
        window: int | None = None,
        n_classes: int = 3,
    ) -> list[str]:
        """Every problem with these overrides (unknown names, types, ranges, cross-field rules,
        window and feature counts) in one pass; empty when ``create_model`` would accept them."""
        found = _shape_problems(n_features, window, n_classes)
        found += _value_problems(self.builder, self.hyperparameters, hyperparameters)
        if found:
            return found
        full = self.resolve(hyperparameters)
        if self.check is not None:
            found += self.check(full, n_features)
        minimum = self.minimum_window(full)
        if window is not None and window < minimum:
            rule = f"{self.window_rule}; " if self.window_rule else ""
            found.append(
                f"window={window} is too small for model {self.name!r}: {rule}"
                f"it needs window >= {minimum}"
            )
        return found


_REGISTRY: dict[str, ModelSpec] = {}


def register(
    name: str,
    *,
    tiny: Mapping[str, Any],
    backend: Backend = Backend(),
    min_window: int | Callable[[Mapping[str, Any]], int] = 1,
    window_rule: str = "",
    check: Check | None = None,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register ``builder`` as ``name`` and its tiny twin as ``name + "_tiny"``.

    Raises ValueError when the name is taken, a keyword-only parameter lacks a default or an
    annotation, or ``tiny`` names an unknown hyperparameter or an invalid value.
    """

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        defaults = _keyword_defaults(builder)
        family = builder.__module__.rsplit(".", 1)[-1]
        full = ModelSpec(
            name, family, builder, MappingProxyType(defaults), min_window,
            MappingProxyType(dict(tiny)), backend, window_rule, check,
        )
        bad = full.problems(tiny)
        if bad:
            raise ConfigError(f"tiny twin of model {name!r}", bad)
        twin = ModelSpec(
            f"{name}_tiny", family, builder, MappingProxyType(full.resolve(tiny)), min_window,
            full.tiny, backend, window_rule, check, twin_of=name,
        )
        taken = [spec.name for spec in (full, twin) if spec.name in _REGISTRY]
        if taken:
            raise ValueError(f"model name {taken[0]!r} is already registered")
        _REGISTRY.update({full.name: full, twin.name: twin})
        return builder

    return decorator


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching the fnmatch ``pattern``, sorted; includes the tiny twins."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern))


def model_spec(name: str) -> ModelSpec:
    """The spec registered as ``name``; raises ConfigError naming the choices and closest match."""
    if name not in _REGISTRY:
        raise ConfigError("model registry", [unknown_choice("model", name, _REGISTRY)])
    return _REGISTRY[name]


def create_model(
    name: str, n_features: int, window: int, n_classes: int = 3, **hyperparameters: Any
) -> nn.Module:
    """Build model ``name`` for inputs (B, window, n_features) float32 -> logits (B, n_classes).

    Unset hyperparameters take the registered defaults. Raises ConfigError listing every
    problem at once: unknown model or hyperparameter (with the closest match), a wrong type or
    out-of-range value, a window below the model's minimum, a feature count it cannot use.
    """
    spec = model_spec(name)
    found = spec.problems(
        hyperparameters, n_features=n_features, window=window, n_classes=n_classes
    )
    if found:
        raise ConfigError(f"model {name!r}", found)
    return spec.builder(n_features, window, n_classes, **spec.resolve(hyperparameters))


def _keyword_defaults(builder: Callable[..., nn.Module]) -> dict[str, Any]:
    """{name: default} of the builder's keyword-only parameters; each needs default + annotation."""
    hints = typing.get_type_hints(builder, include_extras=True)
    defaults = {}
    for param in inspect.signature(builder).parameters.values():
        if param.kind is not inspect.Parameter.KEYWORD_ONLY:
            continue
        if param.default is inspect.Parameter.empty or param.name not in hints:
            raise ValueError(
                f"{builder.__qualname__}: hyperparameter {param.name!r} needs a default and an "
                "annotation"
            )
        defaults[param.name] = param.default
    return defaults


def _shape_problems(n_features: int | None, window: int | None, n_classes: int) -> list[str]:
    """Problems with the non-hyperparameter arguments of ``create_model``."""
    found = []
    for arg, value, low in (("n_features", n_features, 1), ("window", window, 1),
                            ("n_classes", n_classes, 2)):
        if value is not None and not (_is_int(value) and value >= low):
            found.append(f"{arg}: expected int >= {low}, got {value!r}")
    return found


def _value_problems(
    builder: Callable[..., nn.Module], defaults: Mapping[str, Any], values: Mapping[str, Any]
) -> list[str]:
    """Unknown names and values that break their annotation, one message each."""
    hints = typing.get_type_hints(builder, include_extras=True)
    found = []
    for key, value in values.items():
        if key not in defaults:
            found.append(unknown_choice("hyperparameter", key, defaults))
        else:
            problem = _annotation_problem(key, value, hints[key])
            if problem:
                found.append(problem)
    return found


def _annotation_problem(key: str, value: Any, hint: Any) -> str | None:
    """Why ``value`` breaks the annotation ``hint`` of hyperparameter ``key``, or None."""
    base, interval = hint, None
    if typing.get_origin(hint) is Annotated:
        base, *extras = typing.get_args(hint)
        interval = next((e for e in extras if isinstance(e, Interval)), None)
    if typing.get_origin(base) is Literal:
        choices = typing.get_args(base)
        if not any(type(value) is type(c) and value == c for c in choices):
            return f"{key}: " + unknown_choice("value", value, choices)
        return None
    if not _has_type(value, base):
        return f"{key}: expected {base.__name__}, got {type(value).__name__} {value!r}"
    if interval is not None and not interval.contains(value):
        return f"{key}: expected {base.__name__} {interval}, got {value!r}"
    return None


def _has_type(value: Any, base: type) -> bool:
    """Strict type test: bool is not an int, an int is a float, NaN and inf are no floats."""
    if base is bool:
        return isinstance(value, bool)
    if base is int:
        return _is_int(value)
    if base is float:
        return _is_real(value) and math.isfinite(value)
    return isinstance(value, base)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)

"""The model registry: names -> builders, their hyperparameters, tiny twins and CUDA settings.

A family module registers a builder with ``@register("lstm", tiny={...}, backend=...)``. The
builder's signature is the model's contract::

    builder(n_features: int, window: int, n_classes: int = 3, *, name: Annotation = default, ...)

Every keyword-only parameter is a hyperparameter; its default is the model's default and its
annotation is the rule a value is checked against, by a strict pydantic model built from the
signature: ``int``, ``float``, ``bool``, ``Literal[...]`` (the choices), optionally constrained
as ``Annotated[int, Field(ge=1)]`` (``PositiveInt``, ``Dropout``). Strict means a bool is no
int, a string is no number, NaN and inf are no floats; an int is a float. Each registration also
adds the tiny twin ``"<name>_tiny"``: the same builder with the ``tiny`` hyperparameters as its
defaults, small enough for fast tests and smoke runs.
"""

from __future__ import annotations

import fnmatch
import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Annotated, Any

import pydantic
from pydantic import ConfigDict, Field
from torch import nn

from lobsearch.schema import Frozen, format_problems
from lobsearch.errors import ConfigError, unknown_choice

Check = Callable[[Mapping[str, Any], int | None], list[str]]
"""Cross-field rules of a model: (hyperparameters, n_features or None when unknown) -> problems."""

PositiveInt = Annotated[int, Field(ge=1)]
Dropout = Annotated[float, Field(ge=0.0, lt=1.0)]


class Hyperparameters(Frozen):
    """Base of every model's hyperparameter schema: Frozen's rules, with strict types (and any
    field name allowed, ``model_*`` included)."""

    model_config = ConfigDict(strict=True, protected_namespaces=())


class _Shape(Hyperparameters):
    """The non-hyperparameter arguments of ``create_model``."""

    n_features: PositiveInt = 1
    window: PositiveInt = 1
    n_classes: Annotated[int, Field(ge=2)] = 3


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
    keyword-only parameters (a twin's defaults include its tiny overrides); schema: the strict
    pydantic model of those parameters, one field per hyperparameter with its annotation as
    the rule; min_window: an int or a function of the full hyperparameters; tiny: the twin's
    overrides; backend: CUDA settings; window_rule: why a minimum window exists; check:
    cross-field rules; twin_of: the full-size name for a tiny twin, else None.
    """

    name: str
    family: str
    builder: Callable[..., nn.Module]
    hyperparameters: Mapping[str, Any]
    schema: type[Hyperparameters]
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
        """Every problem with these overrides in one pass; empty when ``create_model`` would
        accept them. A name or value problem reads ``key: rule (got value)`` (unknown names
        with the closest match and the choices); the cross-field rules and the window minimum
        are checked once every value is valid."""
        shape = {"n_features": n_features, "window": window, "n_classes": n_classes}
        found = _schema_problems(_Shape, {k: v for k, v in shape.items() if v is not None})
        found += self._value_problems(hyperparameters)
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

    def _value_problems(self, values: Mapping[str, Any]) -> list[str]:
        """Unknown names (with the closest match), then the schema's verdict on the known ones."""
        known = {k: v for k, v in values.items() if k in self.hyperparameters}
        unknown = [
            f"{key}: " + unknown_choice("hyperparameter", key, self.hyperparameters)
            for key in values if key not in known
        ]
        return unknown + _schema_problems(self.schema, known)


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

    Raises ValueError when the name is taken or a keyword-only parameter lacks a default or an
    annotation, ConfigError when ``tiny`` names an unknown hyperparameter or an invalid value.
    """

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        parameters = _keyword_parameters(builder)
        defaults = {key: default for key, (_, default) in parameters.items()}
        shared = dict(
            family=builder.__module__.rsplit(".", 1)[-1], builder=builder,
            schema=pydantic.create_model(f"{name}_hyperparameters", __base__=Hyperparameters,
                                         **parameters),
            min_window=min_window, tiny=MappingProxyType(dict(tiny)), backend=backend,
            window_rule=window_rule, check=check,
        )
        full = ModelSpec(name=name, hyperparameters=MappingProxyType(defaults), **shared)
        bad = full.problems(tiny)
        if bad:
            raise ConfigError(f"tiny twin of model {name!r}", bad)
        twin = ModelSpec(name=f"{name}_tiny", hyperparameters=MappingProxyType(full.resolve(tiny)),
                         twin_of=name, **shared)
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


def _keyword_parameters(builder: Callable[..., nn.Module]) -> dict[str, tuple[Any, Any]]:
    """{name: (annotation, default)} of the builder's keyword-only parameters; each needs both."""
    hints = typing.get_type_hints(builder, include_extras=True)
    found = {}
    for param in inspect.signature(builder).parameters.values():
        if param.kind is not inspect.Parameter.KEYWORD_ONLY:
            continue
        if param.default is inspect.Parameter.empty or param.name not in hints:
            raise ValueError(
                f"{builder.__qualname__}: hyperparameter {param.name!r} needs a default and an "
                "annotation"
            )
        found[param.name] = (hints[param.name], param.default)
    return found


def _schema_problems(schema: type[pydantic.BaseModel], values: Mapping[str, Any]) -> list[str]:
    """``key: rule (got value)`` for each value ``schema`` rejects; empty when it accepts all."""
    try:
        schema.model_validate(values)
    except pydantic.ValidationError as error:
        return format_problems(error, schema)
    return []

"""The validation engine of every config, space file and model's hyperparameters.

``Frozen`` is the base of each schema (immutable, unknown keys and NaN rejected); ``validate``
builds one from raw YAML data or raises a ``ConfigError`` listing every problem in one pass;
``format_problems`` turns pydantic's errors into lines that name the dotted key, the rule and the
value received, with the choices and the closest match for an unknown key or a value outside a
``Literal``. ``lobsearch.config``, ``lobsearch.space`` and the model registry all build on it.
"""

from __future__ import annotations

import hashlib
import json
import types
import typing
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, ValidationError

from lobsearch.errors import ConfigError, closest, unknown_choice


class Frozen(BaseModel):
    """Base of every config: immutable, unknown keys rejected, NaN and inf rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    def digest(self) -> str:
        """A stable 16-hex-digit hash of the config's content (its canonical JSON)."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _unknown_key(where: str, key: str, choices: Any, what: str = "key") -> str:
    hint = closest(key, choices)
    did_you_mean = f"; did you mean {hint!r}?" if hint else ""
    return f"{where}: unknown {what}{did_you_mean} (choices: {', '.join(sorted(choices))})"


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _holder(cls: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The model whose field ``loc[-1]`` is (``loc``: a pydantic error location inside ``cls``),
    walking into nested models and the values of ``dict[str, Model]`` fields; None elsewhere."""
    parts = list(loc[:-1])
    while parts:
        field = cls.model_fields.get(str(parts.pop(0)))
        annotation = getattr(field, "annotation", None)
        if typing.get_origin(annotation) is dict and parts:
            annotation = typing.get_args(annotation)[1]
            parts.pop(0)
        if not _is_model(annotation):
            return None
        cls = annotation
    return cls


def _literal_choices(annotation: Any) -> tuple:
    """The choices of a ``Literal[...]`` annotation (or an optional one); () for any other."""
    if typing.get_origin(annotation) is Literal:
        return typing.get_args(annotation)
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return tuple(c for member in typing.get_args(annotation) for c in _literal_choices(member))
    return ()


def _problem(item: Any, cls: type[BaseModel], prefix: str) -> str:
    """One pydantic error as ``dotted.key: rule (got value)``."""
    loc = tuple(p for p in item["loc"] if not str(p).startswith("function-"))
    key = prefix + ".".join(str(p) for p in loc if not _is_type_tag(p))
    holder = _holder(cls, loc)
    if item["type"] == "extra_forbidden":
        return _unknown_key(key, str(loc[-1]), list(holder.model_fields) if holder else [])
    field = holder.model_fields.get(str(loc[-1])) if holder and loc else None
    choices = _literal_choices(getattr(field, "annotation", None))
    if item["type"] == "literal_error" and choices:
        return f"{key}: " + unknown_choice("value", item["input"], choices)
    message = item["msg"].removeprefix("Value error, ")
    value = item.get("input")
    shown = "" if isinstance(value, dict) else f" (got {value!r})"
    return f"{key or '(top level)'}: {message}{shown}"


def format_problems(error: ValidationError, cls: type[BaseModel], prefix: str = "") -> list[str]:
    """One line per pydantic error of ``cls``: ``dotted.key: rule (got value)``; an unknown key
    or a value outside a ``Literal``'s choices names the choices and the closest match."""
    return list(dict.fromkeys(_problem(item, cls, prefix) for item in error.errors()))


def _is_type_tag(part: Any) -> bool:
    text = str(part)
    return text in {"int", "float", "str", "bool", "none"} or text.startswith(("tuple[", "constrained"))


def validate(cls: type[Frozen], raw: Any, source: str, prefix: str = "") -> Any:
    """Build ``cls`` from ``raw`` or raise ConfigError listing every problem, prefixed by ``source``.

    Only the schema: a run config is built with ``validate_run``, which adds the model check.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(source, [f"{prefix or '(top level)'}: must be a mapping (got {type(raw).__name__})"])
    try:
        return cls.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(source, format_problems(error, cls, prefix)) from None

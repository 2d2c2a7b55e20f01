"""Checking a job's parameters against the asset: names, types, bounds, choices, defaults."""

from __future__ import annotations

import math
from typing import Any

from core.assets import Asset, Parameter, ParameterType
from core.errors import ValidationError

MAX_STRING = 4096


def resolve_parameters(asset: Asset, given: dict[str, Any] | None) -> dict[str, Any]:
    """Every declared parameter's value (given, else default); unknown or invalid ones are refused."""
    given = dict(given or {})
    unknown = sorted(set(given) - {p.name for p in asset.parameters})
    if unknown:
        raise ValidationError(f"unknown parameters: {', '.join(unknown)}", field=f"parameters.{unknown[0]}")
    resolved: dict[str, Any] = {}
    for param in asset.parameters:
        if param.name in given and given[param.name] is not None:
            resolved[param.name] = _check(param, given[param.name])
        elif param.default is not None:
            resolved[param.name] = param.default
        elif param.required:
            raise ValidationError(f"parameter {param.name} is required", field=f"parameters.{param.name}")
    return resolved


def _check(param: Parameter, value: Any) -> Any:
    field = f"parameters.{param.name}"
    kind = param.type
    if kind == ParameterType.BOOLEAN:
        if not isinstance(value, bool):
            raise ValidationError(f"{param.name} must be a boolean", field=field)
        return value
    if kind == ParameterType.STRING:
        if not isinstance(value, str) or len(value) > MAX_STRING or "\x00" in value:
            raise ValidationError(f"{param.name} must be a string of at most {MAX_STRING} characters", field)
        if not _is_text(value):  # JSON can carry a lone surrogate; no environment can
            raise ValidationError(f"{param.name} must be Unicode text (it has a lone surrogate)", field)
        _check_choice(param, value, field)
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(f"{param.name} must be a number", field=field)
    try:
        as_float = float(value)
    except OverflowError:  # an int past any float (JSON numbers have no limit)
        raise ValidationError(f"{param.name} is out of range", field=field) from None
    if kind == ParameterType.INTEGER and not (isinstance(value, int) or as_float.is_integer()):
        raise ValidationError(f"{param.name} must be an integer", field=field)
    if not math.isfinite(as_float):
        raise ValidationError(f"{param.name} must be finite", field=field)
    if param.min is not None and value < param.min:
        raise ValidationError(f"{param.name} must be at least {_num(param.min)}", field=field)
    if param.max is not None and value > param.max:
        raise ValidationError(f"{param.name} must be at most {_num(param.max)}", field=field)
    _check_choice(param, value, field)
    return int(value) if kind == ParameterType.INTEGER else float(value)


def _check_choice(param: Parameter, value: Any, field: str) -> None:
    if param.choices is not None and value not in param.choices:
        raise ValidationError(f"{param.name} must be one of {param.choices}", field=field)


def _is_text(value: str) -> bool:
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def as_env(values: dict[str, Any]) -> dict[str, str]:
    """Parameters as environment variables for the worker."""
    out: dict[str, str] = {}
    for name, value in values.items():
        out[name] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return out

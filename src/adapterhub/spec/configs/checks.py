"""Validation shared by the method configs: each check raises a ``ConfigError`` that names the option, the value
given and what is valid."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from adapterhub.errors import ConfigError, did_you_mean


def require(condition: bool, message: str) -> None:
    """Raise a ``ConfigError`` with ``message`` unless ``condition``."""
    if not condition:
        raise ConfigError(message)


def is_number(value: Any) -> bool:
    """Whether ``value`` is a finite int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_bool(name: str, value: Any) -> None:
    """Raise unless option ``name`` is a bool."""
    require(isinstance(value, bool), f"{name} must be true or false, got {value!r} ({type(value).__name__}).")


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    """Raise unless option ``name`` is one of ``choices`` (suggesting the nearest)."""
    require(
        isinstance(value, str) and value in choices,
        f"{name}={value!r} is not valid{did_you_mean(str(value), choices)}; choose one of {', '.join(choices)}.",
    )


def layer_list(name: str, value: Any) -> tuple[int, ...]:
    """A list of layer indices (``leave_out``) validated and frozen: sorted, without repeats."""
    require(
        isinstance(value, (list, tuple))
        and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value),
        f"{name} must be a list of non-negative layer indices, got {value!r}.",
    )
    return tuple(sorted(set(value)))


def freeze_per_layer(name: str, value: Any, check: Callable[[str, Any], None]) -> Any:
    """A number, or a mapping ``{"default": x, "3": y}`` frozen into a sorted tuple of (key, value) pairs."""
    if isinstance(value, Mapping) or (isinstance(value, tuple) and value and isinstance(value[0], tuple)):
        items = dict(value)
        for key, item in items.items():
            require(
                key == "default" or (isinstance(key, str) and key.isdigit()) or isinstance(key, int),
                f"{name}: keys must be layer indices or 'default', got {key!r}.",
            )
            check(f"{name}[{key!r}]", item)
        require(
            "default" in items, f"{name}: a per-layer mapping needs a 'default' entry for the other layers."
        )
        return tuple(sorted((str(k), v) for k, v in items.items()))
    check(name, value)
    return value

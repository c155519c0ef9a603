"""peft's forms of naming modules in a config (``target_modules``, ``exclude_modules``, ``rank_pattern``,
``alpha_pattern``), validated and frozen. Data only: what they select is ``adapterhub.methods.targeting``."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from adapterhub.errors import ConfigError

ALL_LINEAR = "all-linear"


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def module_names(name: str, value: Any) -> str | tuple[str, ...] | None:
    """peft's forms of a module selection: None, a regex (a string, matched against whole module names) or a
    list of names (each matches a module named exactly so or ending in ``"." + name``), frozen to a tuple."""
    if value is None:
        return None
    if isinstance(value, str):
        if value.lower() == ALL_LINEAR:
            return ALL_LINEAR
        try:
            re.compile(value)
        except re.error as error:
            raise ConfigError(
                f"{name}={value!r} is a string, so it is a regular expression over whole module names, but it "
                f"does not compile ({error}). Pass a list of module names to match by suffix instead."
            ) from None
        return value
    _require(
        isinstance(value, (list, tuple, set, frozenset))
        and len(value) > 0
        and all(isinstance(v, str) and v for v in value),
        f"{name} must be a regex string or a non-empty list of module names, got {value!r}.",
    )
    return tuple(sorted(set(value)) if isinstance(value, (set, frozenset)) else dict.fromkeys(value))


def pattern_table(name: str, value: Any, check: Callable[[str, Any], None]) -> tuple[tuple[str, Any], ...]:
    """``rank_pattern`` / ``alpha_pattern``: ``{regex: value}`` frozen as (key, value) pairs in key order (the
    order peft's saved files have: the first key that matches a module wins)."""
    if value is None:
        return ()
    items = dict(value) if isinstance(value, (Mapping, tuple, list)) else None
    _require(items is not None, f"{name} must be a mapping of module-name regex to value, got {value!r}.")
    assert items is not None
    for key, item in items.items():
        _require(
            isinstance(key, str) and key != "", f"{name}: keys must be module-name regexes, got {key!r}."
        )
        try:
            re.compile(key)
        except re.error as error:
            raise ConfigError(f"{name}: key {key!r} is not a valid regular expression ({error}).") from None
        check(f"{name}[{key!r}]", item)
    return tuple(sorted(items.items()))

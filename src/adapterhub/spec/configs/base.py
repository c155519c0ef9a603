"""The base of every method config: a frozen, keyword-only dataclass that is data.

A config can be written as JSON (``to_dict``), read back (``from_dict``), hashed and compared; unknown keys are
rejected with a message that names the valid ones. ``canonical_json`` / ``sha256_hex`` are the one spelling used
for hashing configs (and other JSON) everywhere.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from adapterhub.errors import ConfigError, did_you_mean

C = TypeVar("C", bound="MethodConfig")
# Field metadata key: leave the field out of ``to_dict`` while it has its default value.
OMIT_DEFAULT = "omit_default"


def canonical_json(obj: Any) -> str:
    """The one JSON spelling used for hashing: sorted keys, no spaces, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True, kw_only=True)
class MethodConfig:
    """Base of every method config. Subclasses set ``method`` and validate in ``__post_init__``."""

    method: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict that ``from_dict`` turns back into an equal config; always holds ``"method"``."""
        out: dict[str, Any] = {"method": self.method}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get(OMIT_DEFAULT) and value == f.default:
                continue  # a later option at its default: configs written before it keep their JSON and hash
            out[f.name] = _to_json_value(value)
        return out

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
        """Build a config from a dict, rejecting unknown keys with the list of valid ones."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{cls.__name__} must be built from a dict, got {type(data).__name__}.")
        data = dict(data)
        method = data.pop("method", cls.method)
        if method != cls.method:
            raise ConfigError(f"{cls.__name__} is for method {cls.method!r}, but the dict says {method!r}.")
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in data if k not in valid]
        if unknown:
            hints = "".join(did_you_mean(k, valid) for k in unknown)
            raise ConfigError(
                f"Unknown key(s) {', '.join(repr(k) for k in unknown)} for {cls.__name__}{hints}. "
                f"Valid keys: {', '.join(valid)}."
            )
        return cls(**data)

    def replace(self: C, **changes: Any) -> C:
        """A copy with some fields changed (validated like a new config)."""
        return self.from_dict({**self.to_dict(), **changes})

    def canonical_hash(self) -> str:
        """sha256 of the canonical JSON of ``to_dict()``: equal configs have equal hashes."""
        return sha256_hex(canonical_json(self.to_dict()))


def _to_json_value(value: Any) -> Any:
    if isinstance(value, tuple):
        if value and all(isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str) for v in value):
            return {k: _to_json_value(v) for k, v in value}
        return [_to_json_value(v) for v in value]
    return value

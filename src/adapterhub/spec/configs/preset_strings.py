"""The preset-string syntax: ``name[key=value,...]``, values JSON or bare words (``[q,v]``, ``gelu``)."""

from __future__ import annotations

import json
from typing import Any

from adapterhub.errors import ConfigError


def parse_preset_string(text: str) -> tuple[str, dict[str, Any]]:
    """``"name[key=value,...]"`` -> ``(name lower-cased, {key: value})``; a bare name has no overrides."""
    text = text.strip()
    if "[" not in text:
        return text.lower(), {}
    if not text.endswith("]"):
        raise ConfigError(f"Malformed config string {text!r}: expected 'name[key=value,...]'.")
    name, body = text[: text.index("[")].strip().lower(), text[text.index("[") + 1 : -1]
    overrides: dict[str, Any] = {}
    for part in _split_top_level(body):
        if not part.strip():
            continue
        if "=" not in part:
            raise ConfigError(f"Malformed override {part!r} in {text!r}: expected key=value.")
        key, raw = (s.strip() for s in part.split("=", 1))
        overrides[key] = _parse_value(raw)
    return name, overrides


def _split_top_level(body: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for char in body:
        if char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _parse_value(raw: str) -> Any:
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        if raw.startswith("[") and raw.endswith("]"):  # a list of bare words: [q,v]
            return [_parse_value(part.strip()) for part in _split_top_level(raw[1:-1]) if part.strip()]
        return raw.strip("'\"")

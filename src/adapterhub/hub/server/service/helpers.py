"""Shared pieces of the service layer: error constructors, name suggestions, config presets, error payloads.

:func:`not_found` and :func:`invalid` build the :class:`adapterhub.hub.errors.HubError` subclasses every service
function raises (with an HTTP status and a machine-readable code); :func:`close_matches` suggests names for them;
:func:`preset_hashes` / :func:`preset_hash` map the library's config presets to config hashes;
:func:`hub_error_payload` is the JSON body the API sends for a ``HubError``.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Iterable, Sequence
from typing import Any

from adapterhub.hub.errors import HubError, HubNotFoundError, HubValidationError
from adapterhub.hub.server import library
from adapterhub.hub.server.models import Adapter

TOKEN_PREFIX = "ahub_"
MODEL_TYPE_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
HEX_RE = re.compile(r"^[0-9a-f]{8,64}$")


def not_found(code: str, message: str, candidates: Sequence[str] = (), **details: Any) -> HubNotFoundError:
    return HubNotFoundError(message, code=code, candidates=candidates, status=404, details=details)


def invalid(code: str, message: str, candidates: Sequence[str] = ()) -> HubValidationError:
    return HubValidationError(message, code=code, candidates=candidates, status=422)


def close_matches(word: str, choices: Iterable[str], n: int = 5) -> list[str]:
    """Close matches of ``word``: prefix/substring matches first, then difflib's."""
    choices = sorted(set(choices))
    low = word.lower()
    out = [c for c in choices if c.lower().startswith(low) or (len(low) >= 3 and low in c.lower())]
    out += difflib.get_close_matches(word, choices, n=n, cutoff=0.6)
    seen: list[str] = []
    for c in out:
        if c not in seen:
            seen.append(c)
    return seen[:n]


@functools.lru_cache(maxsize=1)
def preset_hashes() -> dict[str, str]:
    """config_hash -> preset name for the library's presets (for display and ``config=pfeiffer`` filters)."""
    library.load_method_configs()
    try:
        from adapterhub.spec.configs import PRESETS, resolve_config
    except ImportError:  # pragma: no cover
        return {}
    out: dict[str, str] = {}
    for name in PRESETS:
        try:
            out[resolve_config(name).canonical_hash()] = name
        except Exception:  # pragma: no cover - a broken preset must not break the hub
            continue
    return out


def config_label(adapter: Adapter) -> str:
    name = adapter.config_name or preset_hashes().get(adapter.config_hash, "")
    return f"{adapter.method} {name} {adapter.config_hash[:8]}".replace("  ", " ")


def preset_hash(config: str) -> str | None:
    library.load_method_configs()
    try:
        from adapterhub.spec.configs import resolve_config

        return resolve_config(config).canonical_hash()
    except Exception:
        return None


def hub_error_payload(error: HubError) -> dict[str, Any]:
    body: dict[str, Any] = {"code": error.code, "message": error.message, "candidates": error.candidates}
    if error.details:
        body.update({k: v for k, v in error.details.items() if k not in body})
    return {"error": body}

"""The hub: share adapters by name. Client functions are importable without the server's dependencies.

``resolve_to_local_dir`` is what ``model.load_adapter(name)`` calls for a name that is not a local directory.
The names below are imported on first use (PEP 562), so that the CLI's ``--help`` does not load the HTTP client.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from adapterhub.hub.client import (
        download_adapter,
        info,
        login,
        push_adapter_dir,
        resolve,
        resolve_to_local_dir,
        search,
    )
    from adapterhub.hub.identifiers import Identifier, parse_identifier

_LAZY: dict[str, str] = {
    **dict.fromkeys(
        (
            "download_adapter",
            "info",
            "login",
            "push_adapter_dir",
            "resolve",
            "resolve_to_local_dir",
            "search",
        ),
        "adapterhub.hub.client",
    ),
    "Identifier": "adapterhub.hub.identifiers",
    "parse_identifier": "adapterhub.hub.identifiers",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'adapterhub.hub' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "Identifier",
    "download_adapter",
    "info",
    "login",
    "parse_identifier",
    "push_adapter_dir",
    "resolve",
    "resolve_to_local_dir",
    "search",
]

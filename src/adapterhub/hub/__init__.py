"""The hub: share adapters by name. Client functions are importable without the server's dependencies.

``resolve_to_local_dir`` is what ``model.load_adapter(name)`` calls for a name that is not a local directory.
"""

from __future__ import annotations

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

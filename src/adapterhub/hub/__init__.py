"""The hub: share adapters by name. Client functions are importable without the server's dependencies.

Two layers live here. The torch-free server side (``server/``, ``web/``, and ``errors``, ``identifiers``,
``archive``, ``hf_card``, ``threaded_server`` that the client shares) imports only the spec layer. The client side
(``client/``, ``embedded``, ``hf``, ``cli``) may also import io and below. The full library reaches the server
through ``server/library.py``, which this package fills in when it is imported (below).

``resolve_to_local_dir`` is what ``model.load_adapter(name)`` calls for a name that is not a local directory.
The names below are imported on first use (PEP 562), so that the CLI's ``--help`` does not load the HTTP client.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapterhub.hub.server import library as _server_library

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


def _inspect_full(directory: Path, model_type: str | None) -> Any:
    from adapterhub.io.manifest import inspect_adapter_dir

    return inspect_adapter_dir(directory, model_type=model_type)


def _load_method_configs() -> None:
    if importlib.util.find_spec("torch") is not None:  # the methods' configs live beside their torch modules
        import adapterhub.methods  # noqa: F401  (registers every method's config and presets)


# The torch-free server (a subpackage, so this runs first) gets the library's full weights check and method configs.
_server_library.plug_in(inspect_full=_inspect_full, load_method_configs=_load_method_configs)


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

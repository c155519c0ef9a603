"""What the torch-free hub server uses of the full library, handed in from above.

The server imports only the spec layer. Two of its jobs need more of the library where it is installed: the
``full`` weights check (build the method's modules and compare every weight's name and shape: ``adapterhub.io``)
and knowing the configs and presets of the methods that are defined beside their torch modules
(``adapterhub.methods``). The ``adapterhub.hub`` package, which Python initialises before any module of this
server, hands both in with ``plug_in`` when it is imported, without importing torch; each is loaded on first use.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapterhub.hub.errors import HubValidationError

# (adapter directory, model type the card states or None) -> the adapter's manifest
Inspector = Callable[[Path, "str | None"], Any]


@dataclass
class _Library:
    inspect_full: Inspector | None = None
    load_method_configs: Callable[[], None] | None = None


_LIBRARY = _Library()


def plug_in(*, inspect_full: Inspector, load_method_configs: Callable[[], None]) -> None:
    """Hand the server the full weights check and the loader of every method's config (once per process)."""
    _LIBRARY.inspect_full = inspect_full
    _LIBRARY.load_method_configs = load_method_configs


def inspect_full(directory: Path, model_type: str | None) -> Any:
    """The manifest of ``directory`` by the full weights check; raises when nothing provides it."""
    if _LIBRARY.inspect_full is None:
        raise HubValidationError(
            "The full weights check is not available in this process (adapterhub.hub.server.library.plug_in was "
            "never called): import adapterhub.hub before starting the server, or use --weights-check header."
        )
    return _LIBRARY.inspect_full(directory, model_type)


def load_method_configs() -> None:
    """Make every method's config and presets known to ``adapterhub.spec.configs`` where the library can (a hub
    installed without torch knows the bottleneck and LoRA presets only)."""
    if _LIBRARY.load_method_configs is not None:
        _LIBRARY.load_method_configs()

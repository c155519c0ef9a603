"""Exceptions raised for user mistakes. Every message names the problem and what to do next."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class AdapterHubError(Exception):
    """Base class of every error this library raises on purpose (a user mistake or a bad file)."""


class ConfigError(AdapterHubError, ValueError):
    """A configuration is malformed: unknown key or preset, wrong type, impossible value."""


class AdapterNotFoundError(AdapterHubError, KeyError):
    """An adapter, head or fusion name that this model does not have."""

    def __str__(self) -> str:  # KeyError would otherwise print the message with quotes
        return str(self.args[0]) if self.args else ""


class AdapterExistsError(AdapterHubError, ValueError):
    """Adding an adapter (or head, or fusion) under a name that is already taken."""


class IncompatibleModelError(AdapterHubError, ValueError):
    """Weights or a config made for another model type, hidden size or number of layers."""


class AdapterFileError(AdapterHubError, OSError):
    """A directory that is not an adapter, or a missing, truncated or corrupted file."""


class UnsupportedArchitectureError(AdapterHubError, NotImplementedError):
    """The model's architecture has no ArchitectureSpec."""


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest candidate, or an empty string."""
    close = difflib.get_close_matches(word, list(candidates), n=3, cutoff=0.6)
    if not close:
        return ""
    return " (did you mean " + " or ".join(repr(c) for c in close) + "?)"

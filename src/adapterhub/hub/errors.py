"""Errors of the hub client and server.

Every error the hub raises on purpose is an :class:`adapterhub.errors.AdapterHubError`; an identifier that resolves
to nothing is also an :class:`adapterhub.errors.AdapterNotFoundError`. Errors that came from the server keep its
structured payload: ``code`` (a stable machine-readable word), ``message`` and ``candidates`` (fully qualified
identifiers or other values the user can pick from).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from adapterhub.errors import AdapterFileError, AdapterHubError, AdapterNotFoundError, IncompatibleModelError


class HubError(AdapterHubError):
    """Base of hub errors; carries the server's structured error when there was one."""

    def __init__(
        self,
        message: str,
        *,
        code: str = "hub_error",
        candidates: Sequence[str] = (),
        status: int | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.candidates = list(candidates)
        self.status = status
        self.details = details or {}

    def __str__(self) -> str:
        return format_message(self.message, self.candidates)


def format_message(message: str, candidates: Sequence[str]) -> str:
    if not candidates:
        return message
    shown = list(candidates[:25])
    more = len(candidates) - len(shown)
    lines = [message, "Candidates:"] + [f"  {c}" for c in shown]
    if more > 0:
        lines.append(f"  ... and {more} more")
    return "\n".join(lines)


class HubNotFoundError(HubError, AdapterNotFoundError):
    """The identifier (or its owner, task, subtask, version or config) matches nothing for this model."""

    def __str__(self) -> str:  # AdapterNotFoundError (a KeyError) would quote the message
        return format_message(self.message, self.candidates)


class AmbiguousIdentifierError(HubError, AdapterNotFoundError):
    """The identifier matches several adapters; the candidates list each one's fully qualified form."""

    def __str__(self) -> str:
        return format_message(self.message, self.candidates)


class HubModelMismatchError(HubError, IncompatibleModelError):
    """Adapters exist under this identifier, but none for the model that asked."""


class InvalidIdentifierError(HubError, ValueError):
    """The identifier does not follow the grammar ``task/subtask@owner``, ``subtask``, ``task``, ``@owner/name``."""


class HubAuthError(HubError):
    """No token, a wrong token, or a token of someone who may not publish under this owner."""


class HubValidationError(HubError, ValueError):
    """An upload or a request the server refused: bad card, bad archive, too large, unknown task..."""


class HubConflictError(HubError):
    """The thing to create exists already."""


class HubConnectionError(HubError, ConnectionError):
    """The hub could not be reached, or answered with something that is not the hub's API."""


class HubOfflineError(HubError, AdapterNotFoundError):
    """Offline mode and the cache lacks what was asked for."""

    def __str__(self) -> str:
        return format_message(self.message, self.candidates)


class HubIntegrityError(HubError, AdapterFileError):
    """A download whose sha256 or size does not match what the hub announced."""


class HubDependencyError(HubError, ImportError):
    """A module a client step needs does not import (e.g. torch for the model check); the message says what to
    install."""


class UnsafeArchiveError(HubValidationError, AdapterFileError):
    """An archive with path traversal, links, absolute paths, too many files or too many bytes."""


_BY_CODE: dict[str, type[HubError]] = {}


def error_class_for(code: str, status: int | None) -> type[HubError]:
    """The client-side class for a server error code (falls back on the HTTP status)."""
    if not _BY_CODE:
        for cls, codes in (
            (
                HubNotFoundError,
                (
                    "not_found",
                    "unknown_owner",
                    "unknown_adapter",
                    "unknown_name",
                    "unknown_task",
                    "unknown_subtask",
                    "unknown_language",
                    "unknown_version",
                    "unknown_config",
                    "no_adapters",
                    "config_mismatch",
                ),
            ),
            (AmbiguousIdentifierError, ("ambiguous",)),
            (HubModelMismatchError, ("model_mismatch",)),
            (InvalidIdentifierError, ("bad_identifier",)),
            (HubAuthError, ("unauthorized", "forbidden")),
            (HubConflictError, ("conflict", "exists")),
            (UnsafeArchiveError, ("unsafe_archive",)),
        ):
            for c in codes:
                _BY_CODE[c] = cls
    if code in _BY_CODE:
        return _BY_CODE[code]
    if status in (401, 403):
        return HubAuthError
    if status == 404:
        return HubNotFoundError
    if status == 409:
        return HubConflictError
    if status is not None and 400 <= status < 500:
        return HubValidationError
    return HubError

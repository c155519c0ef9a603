"""Errors in the Hugging Face Hub API's shape, as ``huggingface_hub.utils.hf_raise_for_status`` reads them.

Body ``{"error": MESSAGE}``; headers ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``:
the client turns them into ``RepositoryNotFoundError``, ``RevisionNotFoundError``, ``RemoteEntryNotFoundError``)
and ``X-Error-Message`` (one line). A 401 carries the message the client keeps as an authentication error rather
than reading it as "repository not found". Every :class:`HubError` a route raises is answered this way by
:class:`HfRoute`.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.requests import Request

from adapterhub.hub.errors import HubError

REPO_NOT_FOUND = "RepoNotFound"
REVISION_NOT_FOUND = "RevisionNotFound"
ENTRY_NOT_FOUND = "EntryNotFound"
HF_CODES = (REPO_NOT_FOUND, REVISION_NOT_FOUND, ENTRY_NOT_FOUND)
# huggingface_hub treats any other 401 as "repository not found" (its private-repo convention).
INVALID_CREDENTIALS = "Invalid credentials in Authorization header"
_REPO_CODES = ("unknown_owner", "unknown_adapter")


class HfApiError(HubError):
    """An error of the Hub file API; ``headers`` are sent with it (e.g. ``X-Repo-Commit`` of a missing file)."""

    def __init__(
        self, message: str, *, code: str, status: int, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message, code=code, status=status)
        self.headers = dict(headers or {})


def _header_text(text: str) -> str:
    line = " ".join(text.split())
    return line.encode("latin-1", "replace").decode("latin-1")[:1000]


def hf_error_response(error: HubError) -> JSONResponse:
    status = error.status or 400
    code = error.code
    if code in _REPO_CODES and status == 404:
        code = REPO_NOT_FOUND
    message = str(error)
    headers = {"X-Error-Message": INVALID_CREDENTIALS if status == 401 else _header_text(message)}
    if code in HF_CODES:
        headers["X-Error-Code"] = code
    headers.update(getattr(error, "headers", {}))
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class HfRoute(APIRoute):
    """A route whose errors (``HubError``, invalid parameters) are answered in the Hub API's shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def wrapped(request: Request) -> Response:
            try:
                return await handler(request)
            except HubError as error:
                return hf_error_response(error)
            except RequestValidationError as error:
                problems = "; ".join(
                    f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in error.errors()
                )
                return hf_error_response(HubError(f"Invalid request: {problems}", code="invalid", status=400))

        return wrapped


def bad_request(message: str, **kwargs: Any) -> HfApiError:
    return HfApiError(message, code="bad_request", status=400, **kwargs)

"""HTTP to the hub with the standard library: requests, JSON answers, the hub's errors as exceptions, auth.

An error answer of the hub becomes the :class:`adapterhub.hub.errors.HubError` subclass for its ``code`` (with its
candidates); a hub that cannot be reached becomes :class:`adapterhub.hub.errors.HubConnectionError`.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

from adapterhub.hub.client.settings import stored_token
from adapterhub.hub.errors import HubConnectionError, error_class_for

TIMEOUT = 60.0


def _raise_for(status: int, body: bytes, url: str) -> None:
    try:
        payload = json.loads(body)
        err = payload["error"]
        code, message = str(err.get("code", "hub_error")), str(err.get("message", ""))
        candidates = [str(c) for c in err.get("candidates", [])]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise HubConnectionError(
            f"The hub at {url} answered HTTP {status} with something that is not the hub API: {body[:200]!r}",
            code="bad_response",
            status=status,
        ) from None
    hints = err.get("hints") if isinstance(err, dict) else None
    shown = candidates
    if isinstance(hints, list) and len(hints) == len(candidates):
        shown = [f"{c}   {h}" for c, h in zip(candidates, hints)]
    cls = error_class_for(code, status)
    error = cls(message, code=code, candidates=shown, status=status, details=err)
    error.candidates = shown
    error.details["candidates"] = candidates
    raise error


def open_url(
    method: str,
    url: str,
    *,
    params: Mapping[str, Any] | None = None,
    data: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = TIMEOUT,
) -> Any:
    if params:
        url = url + "?" + urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
    req = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    req.add_header("Accept", "application/json")
    req.add_header("User-Agent", "adapterhub-client")
    try:
        return urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as error:
        with error:
            _raise_for(error.code, error.read(), url)
        raise  # pragma: no cover
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise HubConnectionError(
            f"Cannot reach the hub at {url.split('?')[0]}: {reason}. Is it running "
            "(adapterhub hub serve)? Set ADAPTERHUB_HUB_URL, or use offline mode "
            "(ADAPTERHUB_OFFLINE=1) for cached adapters.",
            code="unreachable",
        ) from None


def request_json(method: str, hub_url: str, path: str, **kwargs: Any) -> Any:
    with open_url(method, hub_url + path, **kwargs) as resp:
        body = resp.read()
    try:
        return json.loads(body)
    except ValueError:
        raise HubConnectionError(
            f"The hub at {hub_url} answered with something that is not JSON.", code="bad_response"
        ) from None


def auth_headers(token: str | None, hub_url: str) -> dict[str, str]:
    token = token or stored_token(hub_url)
    if not token:
        raise error_class_for("unauthorized", 401)(
            "Publishing needs an API token: run 'adapterhub login TOKEN', set ADAPTERHUB_TOKEN or pass token=.",
            code="unauthorized",
        )
    return {"Authorization": f"Bearer {token}"}

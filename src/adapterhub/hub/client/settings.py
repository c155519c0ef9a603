"""Client settings from the environment: which hub, online or offline, where the cache is, the stored API token.

Environment:
  ``ADAPTERHUB_HUB_URL``   the hub (default ``http://127.0.0.1:8765``)
  ``ADAPTERHUB_CACHE``     cache folder (default ``~/.cache/adapterhub``)
  ``ADAPTERHUB_OFFLINE=1`` (or ``HF_HUB_OFFLINE=1``) use only the cache
  ``ADAPTERHUB_TOKEN``     API token for publishing (else the one ``adapterhub login`` stored)
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from adapterhub.hub.errors import HubValidationError

DEFAULT_HUB_URL = "http://127.0.0.1:8765"
_TRUE = {"1", "true", "yes", "on"}


def hub_url_from(hub_url: str | None = None) -> str:
    url = hub_url or os.environ.get("ADAPTERHUB_HUB_URL") or DEFAULT_HUB_URL
    if not url.startswith(("http://", "https://")):
        raise HubValidationError(
            f"Hub URL {url!r} must start with http:// or https://.", code="invalid_request"
        )
    return url.rstrip("/")


def is_offline(offline: bool | None = None) -> bool:
    if offline is not None:
        return bool(offline)
    return any(
        os.environ.get(v, "").strip().lower() in _TRUE for v in ("ADAPTERHUB_OFFLINE", "HF_HUB_OFFLINE")
    )


def cache_dir() -> Path:
    env = os.environ.get("ADAPTERHUB_CACHE")
    base = (
        Path(env).expanduser()
        if env
        else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "adapterhub"
    )
    return base / "hub"


def token_file() -> Path:
    from adapterhub.hub.server.settings import adapterhub_home  # no server dependency: plain os/pathlib

    return adapterhub_home() / "tokens.json"


def login(token: str, hub_url: str | None = None) -> Path:
    """Store ``token`` for ``hub_url`` in a file only the user can read (mode 0600); returns its path."""
    token = token.strip()
    if not token or any(c.isspace() for c in token):
        raise HubValidationError("That does not look like an API token.", code="invalid_request")
    path = token_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    tokens = _read_tokens(path)
    tokens[hub_url_from(hub_url)] = token
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(tokens, f, indent=1)
    os.replace(tmp, path)
    os.chmod(path, 0o600)
    return path


def _read_tokens(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def stored_token(hub_url: str | None = None) -> str | None:
    env = os.environ.get("ADAPTERHUB_TOKEN")
    if env:
        return env.strip()
    return _read_tokens(token_file()).get(hub_url_from(hub_url))

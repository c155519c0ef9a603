"""Publishing from the client: upload an adapter directory as the next version of ``@owner/name``; whoami."""

from __future__ import annotations

import json
import os
import secrets
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from adapterhub.errors import AdapterHubError
from adapterhub.hub.archive import pack_directory_bytes
from adapterhub.hub.client.settings import hub_url_from
from adapterhub.hub.client.transport import auth_headers, request_json


def push_adapter_dir(
    path: str | os.PathLike,
    *,
    owner: str,
    name: str | None = None,
    task: str | None = None,
    subtask: str | None = None,
    adapter_type: str = "task",
    language: str | None = None,
    license: str = "",
    description: str = "",
    citation: str = "",
    metrics: Mapping[str, float] | None = None,
    config_name: str = "",
    token: str | None = None,
    hub_url: str | None = None,
    model_type: str | None = None,
) -> dict[str, Any]:
    """Publish the adapter directory ``path`` as the next version of ``@owner/name``; returns the version info.
    ``model_type`` goes into the card: needed for peft-layout directories, whose files do not say it."""
    path = Path(path)
    if not path.is_dir():
        raise AdapterHubError(f"{path} is not a directory; push the folder that save_adapter() wrote.")
    if name is None:
        try:
            name = str(json.loads((path / "adapter_config.json").read_text())["name"])
        except (OSError, ValueError, KeyError, TypeError):
            name = path.name
    url = hub_url_from(hub_url)
    headers = auth_headers(token, url)
    card = {
        "adapter_type": adapter_type,
        "task": task,
        "subtask": subtask,
        "language": language,
        "license": license,
        "description": description,
        "citation": citation,
        "metrics": dict(metrics or {}),
        "config_name": config_name,
        "model_type": model_type,
    }
    card = {k: v for k, v in card.items() if v is not None}
    archive = pack_directory_bytes(path)
    body, content_type = _multipart({"card": json.dumps(card)}, "archive", f"{name}.tar.gz", archive)
    headers = {**headers, "Content-Type": content_type, "Content-Length": str(len(body))}
    return request_json(
        "POST",
        url,
        f"/api/v1/adapters/{urllib.parse.quote(owner)}/{urllib.parse.quote(name)}/versions",
        data=body,
        headers=headers,
        timeout=300,
    )


def _multipart(
    fields: Mapping[str, str], file_field: str, filename: str, content: bytes
) -> tuple[bytes, str]:
    boundary = "adapterhub-" + secrets.token_hex(16)
    parts: list[bytes] = []
    for key, value in fields.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n'
            f"Content-Type: application/json\r\n\r\n".encode()
            + value.encode()
            + b"\r\n"
        )
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; filename="{filename}"\r\n'
        "Content-Type: application/gzip\r\n\r\n".encode()
        + content
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def whoami(*, token: str | None = None, hub_url: str | None = None) -> dict[str, Any]:
    url = hub_url_from(hub_url)
    return request_json("GET", url, "/api/v1/whoami", headers=auth_headers(token, url))

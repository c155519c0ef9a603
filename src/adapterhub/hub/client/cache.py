"""The client's content-addressed cache: where things lie, and downloading an archive verified and unpacked once.

Layout under :func:`adapterhub.hub.client.settings.cache_dir`: ``adapters/<sha256>/`` (unpacked adapters, named by
their archive's sha256), ``resolutions/<hub>/<key>.json`` (what an identifier resolved to for a model, for offline
mode), ``refs/<hub>/<owner>/<name>/<version>.json`` and ``locks/``.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any

from adapterhub.hub.archive import ArchiveLimits, extract_archive
from adapterhub.hub.client.settings import cache_dir
from adapterhub.hub.client.transport import TIMEOUT, open_url
from adapterhub.hub.errors import HubIntegrityError
from adapterhub.hub.identifiers import Identifier, model_key

_CHUNK = 1 << 16


def hub_key(hub_url: str) -> str:
    return hashlib.sha256(hub_url.encode()).hexdigest()[:16]


def resolution_path(
    hub_url: str, ident: Identifier, model_type: str, model_name: str, hidden_size: int, config: str | None
) -> Path:
    key = json.dumps([ident.text, model_type, model_key(model_name), hidden_size, config or ""])
    return (
        cache_dir() / "resolutions" / hub_key(hub_url) / (hashlib.sha256(key.encode()).hexdigest() + ".json")
    )


def ref_dir(hub_url: str, owner: str, name: str) -> Path:
    return cache_dir() / "refs" / hub_key(hub_url) / owner.lower() / name


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def cached_adapter_dir(sha256: str) -> Path:
    return cache_dir() / "adapters" / sha256


def _lock(sha256: str) -> Any:
    from filelock import FileLock

    path = cache_dir() / "locks" / f"{sha256}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path), timeout=600)


def ensure_cached(hub_url: str, archive_url: str, sha256: str, size: int) -> Path:
    """The unpacked adapter with archive ``sha256``: downloaded, verified and unpacked once, under a lock."""
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise HubIntegrityError(f"The hub announced an invalid sha256 {sha256!r}.", code="bad_response")
    final = cached_adapter_dir(sha256)
    if final.is_dir():
        return final
    with _lock(sha256):
        if final.is_dir():
            return final
        work = Path(tempfile.mkdtemp(prefix=".tmp-", dir=_mkdir(cache_dir() / "adapters")))
        try:
            blob = work / "archive.tar.gz"
            _download(hub_url + archive_url, blob, sha256, size)
            limits = ArchiveLimits(max_files=64, max_file_bytes=1 << 30, max_total_bytes=2 << 30)
            extract_archive(blob, work / "adapter", limits)
            os.rename(work / "adapter", final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return final


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def _download(url: str, dest: Path, sha256: str, size: int) -> None:
    digest = hashlib.sha256()
    got = 0
    with open_url("GET", url, timeout=TIMEOUT) as resp, open(dest, "wb") as out:
        while chunk := resp.read(_CHUNK):
            got += len(chunk)
            if got > size:
                raise HubIntegrityError(
                    f"The download of {url} is larger than the {size} bytes the hub announced; "
                    "it was discarded.",
                    code="integrity",
                )
            digest.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    if got != size or digest.hexdigest() != sha256:
        raise HubIntegrityError(
            f"The download of {url} does not match the hub's checksum (sha256 "
            f"{digest.hexdigest()[:16]}..., {got} bytes; expected {sha256[:16]}..., {size} bytes); "
            "it was discarded. Try again.",
            code="integrity",
        )

"""Client of the hub: resolve identifiers for a model, download into a verified content-addressed cache, publish.

Only the standard library (plus ``filelock``, which transformers already needs) is used, so loading adapters by
name does not need the server's dependencies.

Environment:
  ``ADAPTERHUB_HUB_URL``   the hub (default ``http://127.0.0.1:8765``)
  ``ADAPTERHUB_CACHE``     cache folder (default ``~/.cache/adapterhub``)
  ``ADAPTERHUB_OFFLINE=1`` (or ``HF_HUB_OFFLINE=1``) use only the cache
  ``ADAPTERHUB_TOKEN``     API token for publishing (else the one ``adapterhub login`` stored)
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from adapterhub.errors import AdapterHubError, IncompatibleModelError
from adapterhub.hub.archive import ArchiveLimits, extract_archive, pack_directory_bytes
from adapterhub.hub.errors import (
    HubConnectionError,
    HubError,
    HubIntegrityError,
    HubOfflineError,
    HubValidationError,
    error_class_for,
)
from adapterhub.hub.identifiers import Identifier, parse_identifier

DEFAULT_HUB_URL = "http://127.0.0.1:8765"
_TRUE = {"1", "true", "yes", "on"}
_CHUNK = 1 << 16
TIMEOUT = 60.0


# ----------------------------------------------------------------------------------------- configuration


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


# ------------------------------------------------------------------------------------------------- HTTP


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


def _open(
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


def _json(method: str, hub_url: str, path: str, **kwargs: Any) -> Any:
    with _open(method, hub_url + path, **kwargs) as resp:
        body = resp.read()
    try:
        return json.loads(body)
    except ValueError:
        raise HubConnectionError(
            f"The hub at {hub_url} answered with something that is not JSON.", code="bad_response"
        ) from None


def _auth(token: str | None, hub_url: str) -> dict[str, str]:
    token = token or stored_token(hub_url)
    if not token:
        raise error_class_for("unauthorized", 401)(
            "Publishing needs an API token: run 'adapterhub login TOKEN', set ADAPTERHUB_TOKEN or pass token=.",
            code="unauthorized",
        )
    return {"Authorization": f"Bearer {token}"}


# ------------------------------------------------------------------------------------------------ cache


def _model_key(model_name: str | None) -> str:
    if not model_name:
        return ""
    return model_name.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1].lower()


def _hub_key(hub_url: str) -> str:
    return hashlib.sha256(hub_url.encode()).hexdigest()[:16]


def _resolution_path(
    hub_url: str, ident: Identifier, model_type: str, model_name: str, hidden_size: int, config: str | None
) -> Path:
    key = json.dumps([ident.text, model_type, _model_key(model_name), hidden_size, config or ""])
    return (
        cache_dir() / "resolutions" / _hub_key(hub_url) / (hashlib.sha256(key.encode()).hexdigest() + ".json")
    )


def _ref_dir(hub_url: str, owner: str, name: str) -> Path:
    return cache_dir() / "refs" / _hub_key(hub_url) / owner.lower() / name


def _write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _read_json(path: Path) -> Any:
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
    with _open("GET", url, timeout=TIMEOUT) as resp, open(dest, "wb") as out:
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


def _check_model(path: Path, model_type: str, hidden_size: int, what: str) -> None:
    try:
        try:
            from adapterhub.io import inspect_adapter_dir  # type: ignore[attr-defined]
        except ImportError:
            from adapterhub.io.manifest import inspect_adapter_dir
    except ImportError:
        return
    manifest = inspect_adapter_dir(path)
    if manifest.model_type != model_type or manifest.hidden_size != hidden_size:
        raise IncompatibleModelError(
            f"{what} was saved for {manifest.model_type} with hidden size "
            f"{manifest.hidden_size}, not for your {model_type} with {hidden_size}."
        )


# ------------------------------------------------------------------------------------------- public API


def resolve(
    identifier: str,
    *,
    model_type: str,
    model_name: str = "",
    hidden_size: int,
    hub_url: str | None = None,
    config: str | None = None,
) -> dict[str, Any]:
    """Ask the hub which adapter version ``identifier`` means for this model (raises with the candidates)."""
    parse_identifier(identifier)
    url = hub_url_from(hub_url)
    return _json(
        "GET",
        url,
        "/api/v1/resolve",
        params={
            "identifier": identifier,
            "model_type": model_type,
            "model_name": model_name or "",
            "hidden_size": int(hidden_size),
            "config": config,
        },
    )


def resolve_to_local_dir(
    identifier: str,
    *,
    model_type: str,
    model_name: str,
    hidden_size: int,
    hub_url: str | None = None,
    offline: bool | None = None,
    config: str | None = None,
) -> Path:
    """Resolve ``identifier`` for the given model and return the local directory of the adapter.

    Online: the hub picks exactly one adapter version for this model (or raises with every candidate), the archive
    is streamed and verified against its sha256, and unpacked once into the content-addressed cache. Offline
    (``offline=True``, ``ADAPTERHUB_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``): only what an earlier online call cached
    is used, and a clear error names what is missing.
    """
    ident = parse_identifier(identifier)
    url = hub_url_from(hub_url)
    record_path = _resolution_path(url, ident, model_type, model_name, hidden_size, config)
    model_text = f"{model_type} {model_name or '(unnamed)'} (hidden size {hidden_size})"
    if is_offline(offline):
        return _offline_lookup(url, ident, record_path, model_type, model_name, hidden_size, model_text)
    info = resolve(
        identifier,
        model_type=model_type,
        model_name=model_name,
        hidden_size=hidden_size,
        hub_url=url,
        config=config,
    )
    path = ensure_cached(url, info["archive_url"], info["sha256"], int(info["size"]))
    _check_model(path, model_type, hidden_size, info["resolved"])
    record = {
        "identifier": ident.text,
        "resolved": info["resolved"],
        "sha256": info["sha256"],
        "model_type": model_type,
        "model_name": model_name,
        "hidden_size": hidden_size,
        "adapter_model_type": info["model_type"],
        "adapter_hidden_size": info["hidden_size"],
        "adapter_model_name": info["model_name"],
        "hub_url": url,
    }
    _write_json_atomic(record_path, record)
    _write_json_atomic(_ref_dir(url, info["owner"], info["name"]) / f"{info['version']}.json", record)
    return path


def _offline_lookup(
    url: str,
    ident: Identifier,
    record_path: Path,
    model_type: str,
    model_name: str,
    hidden_size: int,
    model_text: str,
) -> Path:
    record = _read_json(record_path)
    if record is None and ident.is_direct:
        assert ident.owner is not None and ident.name is not None
        refs = _ref_dir(url, ident.owner, ident.name)
        versions = sorted((int(p.stem) for p in refs.glob("*.json") if p.stem.isdigit()), reverse=True)
        if ident.version is not None:
            versions = [v for v in versions if v == ident.version]
        for v in versions:
            r = _read_json(refs / f"{v}.json")
            if (
                r
                and r.get("adapter_model_type") == model_type
                and r.get("adapter_hidden_size") == hidden_size
                and (
                    not r.get("adapter_model_name")
                    or not model_name
                    or _model_key(r["adapter_model_name"]) == _model_key(model_name)
                )
            ):
                record = r
                break
    if record and isinstance(record.get("sha256"), str):
        path = cached_adapter_dir(record["sha256"])
        if path.is_dir():
            return path
    cached = sorted(
        {
            r["identifier"] + "  -> " + r["resolved"]
            for r in (_read_json(p) for p in (cache_dir() / "resolutions" / _hub_key(url)).glob("*.json"))
            if r and r.get("model_type") == model_type and r.get("hidden_size") == hidden_size
        }
    )
    raise HubOfflineError(
        f"Offline mode: {ident.text!r} for {model_text} from {url} is not in the cache ({cache_dir()}). "
        f"Load it once while online (or run 'adapterhub pull {ident.text} --model-type {model_type} "
        f"--hidden-size {hidden_size}'), or turn offline mode off (ADAPTERHUB_OFFLINE / HF_HUB_OFFLINE)."
        + (" Cached for this model:" if cached else " Nothing is cached for this model."),
        code="offline_missing",
        candidates=cached,
    )


def download_adapter(
    owner: str, name: str, version: int | None = None, *, hub_url: str | None = None
) -> Path:
    """Download ``@owner/name[:version]`` without model scoping (``adapterhub pull @owner/name``)."""
    url = hub_url_from(hub_url)
    detail = _json("GET", url, f"/api/v1/adapters/{urllib.parse.quote(owner)}/{urllib.parse.quote(name)}")
    versions = {v["version"]: v for v in detail["versions"]}
    number = version if version is not None else detail["latest_version"]
    if number not in versions:
        raise error_class_for("unknown_version", 404)(
            f"@{owner}/{name} has no version {number}.",
            code="unknown_version",
            candidates=[f"@{owner}/{name}:{n}" for n in sorted(versions)],
        )
    v = versions[number]
    path = ensure_cached(url, v["archive_url"], v["sha256"], int(v["size"]))
    record = {
        "identifier": f"@{owner}/{name}:{number}",
        "resolved": f"@{detail['owner']}/{detail['name']}:{number}",
        "sha256": v["sha256"],
        "adapter_model_type": detail["model_type"],
        "adapter_hidden_size": detail["hidden_size"],
        "adapter_model_name": detail["model_name"],
        "hub_url": url,
    }
    _write_json_atomic(_ref_dir(url, detail["owner"], detail["name"]) / f"{number}.json", record)
    return path


def search(q: str | None = None, *, hub_url: str | None = None, **filters: Any) -> dict[str, Any]:
    """Search the hub: ``q`` (text) and filters task, subtask, model_type, model_name, hidden_size, config, owner,
    language, adapter_type, sort (score|recent|downloads|name), page, per_page."""
    url = hub_url_from(hub_url)
    params = {"q": q, **filters}
    return _json(
        "GET", url, "/api/v1/adapters", params={k: v for k, v in params.items() if v not in (None, "")}
    )


def info(
    identifier: str,
    *,
    hub_url: str | None = None,
    model_type: str | None = None,
    model_name: str = "",
    hidden_size: int | None = None,
    config: str | None = None,
) -> dict[str, Any]:
    """Details of an adapter: ``@owner/name`` directly, other identifiers resolved for the given model."""
    ident = parse_identifier(identifier)
    url = hub_url_from(hub_url)
    if ident.is_direct and model_type is None:
        assert ident.owner is not None and ident.name is not None
        detail = _json("GET", url, f"/api/v1/adapters/{ident.owner}/{ident.name}")
        if ident.version is not None and ident.version not in [v["version"] for v in detail["versions"]]:
            raise error_class_for("unknown_version", 404)(
                f"{detail['id']} has no version {ident.version}.",
                code="unknown_version",
                candidates=[f"{detail['id']}:{v['version']}" for v in detail["versions"]],
            )
        return detail
    if model_type is None or hidden_size is None:
        raise HubValidationError(
            f"{identifier!r} depends on the model: pass model_type and hidden_size "
            "(--model-type/--hidden-size), or use the '@owner/name' form.",
            code="invalid_request",
        )
    resolved = resolve(
        identifier,
        model_type=model_type,
        model_name=model_name,
        hidden_size=hidden_size,
        hub_url=url,
        config=config,
    )
    detail = _json("GET", url, f"/api/v1/adapters/{resolved['owner']}/{resolved['name']}")
    detail["resolved"] = resolved["resolved"]
    return detail


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
) -> dict[str, Any]:
    """Publish the adapter directory ``path`` as the next version of ``@owner/name``; returns the version info."""
    path = Path(path)
    if not path.is_dir():
        raise AdapterHubError(f"{path} is not a directory; push the folder that save_adapter() wrote.")
    if name is None:
        try:
            name = str(json.loads((path / "adapter_config.json").read_text())["name"])
        except (OSError, ValueError, KeyError, TypeError):
            name = path.name
    url = hub_url_from(hub_url)
    headers = _auth(token, url)
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
    }
    card = {k: v for k, v in card.items() if v is not None}
    archive = pack_directory_bytes(path)
    body, content_type = _multipart({"card": json.dumps(card)}, "archive", f"{name}.tar.gz", archive)
    headers = {**headers, "Content-Type": content_type, "Content-Length": str(len(body))}
    return _json(
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
    return _json("GET", url, "/api/v1/whoami", headers=_auth(token, url))


def iter_cached() -> Iterator[dict[str, Any]]:
    for p in sorted((cache_dir() / "resolutions").glob("*/*.json")):
        r = _read_json(p)
        if r:
            yield r


__all__ = [
    "HubError",
    "download_adapter",
    "info",
    "login",
    "push_adapter_dir",
    "resolve",
    "resolve_to_local_dir",
    "search",
    "whoami",
]

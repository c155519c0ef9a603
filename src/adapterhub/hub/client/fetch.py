"""Getting adapters from the hub: resolve an identifier for a model, download it into the cache, search, info.

:func:`resolve_to_local_dir` is what ``model.load_adapter(name)`` calls; offline it uses only what an earlier
online call cached. :func:`iter_cached` lists the resolutions the cache holds.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from adapterhub.hub.client.cache import (
    cached_adapter_dir,
    ensure_cached,
    hub_key,
    read_json,
    ref_dir,
    resolution_path,
    write_json_atomic,
)
from adapterhub.hub.client.compatibility import check_model
from adapterhub.hub.client.settings import cache_dir, hub_url_from, is_offline
from adapterhub.hub.client.transport import request_json
from adapterhub.hub.errors import HubOfflineError, HubValidationError, error_class_for
from adapterhub.hub.identifiers import Identifier, model_key, parse_identifier


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
    return request_json(
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
    record_path = resolution_path(url, ident, model_type, model_name, hidden_size, config)
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
    check_model(path, model_type, hidden_size, info["resolved"])
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
    write_json_atomic(record_path, record)
    write_json_atomic(ref_dir(url, info["owner"], info["name"]) / f"{info['version']}.json", record)
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
    record = read_json(record_path)
    if record is None and ident.is_direct:
        assert ident.owner is not None and ident.name is not None
        refs = ref_dir(url, ident.owner, ident.name)
        versions = sorted((int(p.stem) for p in refs.glob("*.json") if p.stem.isdigit()), reverse=True)
        if ident.version is not None:
            versions = [v for v in versions if v == ident.version]
        for v in versions:
            r = read_json(refs / f"{v}.json")
            if (
                r
                and r.get("adapter_model_type") == model_type
                and r.get("adapter_hidden_size") == hidden_size
                and (
                    not r.get("adapter_model_name")
                    or not model_name
                    or model_key(r["adapter_model_name"]) == model_key(model_name)
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
            for r in (read_json(p) for p in (cache_dir() / "resolutions" / hub_key(url)).glob("*.json"))
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
    detail = request_json(
        "GET", url, f"/api/v1/adapters/{urllib.parse.quote(owner)}/{urllib.parse.quote(name)}"
    )
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
    write_json_atomic(ref_dir(url, detail["owner"], detail["name"]) / f"{number}.json", record)
    return path


def search(q: str | None = None, *, hub_url: str | None = None, **filters: Any) -> dict[str, Any]:
    """Search the hub: ``q`` (text) and filters task, subtask, model_type, model_name, hidden_size, config, owner,
    language, adapter_type, method (lora, dora, ia3, bottleneck, ...), sort (score|recent|downloads|name), page,
    per_page."""
    url = hub_url_from(hub_url)
    params = {"q": q, **filters}
    return request_json(
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
        detail = request_json("GET", url, f"/api/v1/adapters/{ident.owner}/{ident.name}")
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
    detail = request_json("GET", url, f"/api/v1/adapters/{resolved['owner']}/{resolved['name']}")
    detail["resolved"] = resolved["resolved"]
    return detail


def iter_cached() -> Iterator[dict[str, Any]]:
    for p in sorted((cache_dir() / "resolutions").glob("*/*.json")):
        r = read_json(p)
        if r:
            yield r

"""Read side of the Hub file API: repo info, the file tree and file downloads (what ``hf_hub_download``,
``snapshot_download``, ``HfApi.model_info`` and ``list_repo_files`` call).

* ``GET /api/models/{owner}/{name}`` and ``.../revision/{revision}``: the Hub's model info (``sha`` = the commit
  id, ``siblings`` with size and blob id, ``cardData`` = the README's metadata, plus an ``adapterhub`` section).
* ``GET /api/models/{owner}/{name}/tree/{revision}``: the files (repos are flat: no folders).
* ``GET|HEAD /{owner}/{name}/resolve/{revision}/{file}``: the file, with ``X-Repo-Commit``, ``ETag`` (git blob
  sha1), ``Content-Length`` and byte ranges. No ``X-Xet-Hash`` header is ever sent, so clients download over plain
  HTTP. Reads need no token (every adapter on the hub is public).
"""

from __future__ import annotations

import contextlib
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse
from sqlalchemy.exc import OperationalError

from adapterhub.hub.hf_card import ModelCardError, split_card
from adapterhub.hub.server import service
from adapterhub.hub.server.hf_api import snapshots
from adapterhub.hub.server.hf_api.errors import ENTRY_NOT_FOUND, HfApiError, HfRoute

router = APIRouter(route_class=HfRoute, tags=["hugging face hub api"])


def _snapshot(request: Request, owner: str, name: str, revision: str) -> snapshots.Snapshot:
    with request.app.state.hub.sessions() as s:
        return snapshots.resolve(s, owner, name, revision)


def _files(request: Request, snap: snapshots.Snapshot) -> tuple[Any, dict[str, snapshots.FileEntry]]:
    directory = snapshots.snapshot_dir(request.app.state.hub.storage, snap)
    return directory, snapshots.file_entries(directory)


def model_info(request: Request, owner: str, name: str, revision: str) -> dict[str, Any]:
    snap = _snapshot(request, owner, name, revision)
    directory, files = _files(request, snap)
    meta: dict[str, Any] = {}
    if "README.md" in files:
        with contextlib.suppress(ModelCardError, UnicodeDecodeError):
            meta, _ = split_card((directory / "README.md").read_text(encoding="utf-8"))
    tags = (
        [t for t in meta.get("tags", []) if isinstance(t, str)] if isinstance(meta.get("tags"), list) else []
    )
    tags = list(dict.fromkeys([*tags, "adapterhub", snap.method, snap.model_type]))
    return {
        "_id": snap.commit,
        "id": snap.repo_id,
        "modelId": snap.repo_id,
        "author": snap.owner,
        "sha": snap.commit,
        "lastModified": snapshots.iso(snap.created_at),
        "createdAt": snapshots.iso(snap.repo_created_at),
        "private": False,
        "disabled": False,
        "gated": False,
        "downloads": snap.downloads,
        "likes": 0,
        "library_name": meta.get("library_name") if isinstance(meta.get("library_name"), str) else None,
        "tags": tags,
        "pipeline_tag": None,
        "cardData": meta or None,
        "siblings": [{"rfilename": f.name, "size": f.size, "blobId": f.oid} for f in files.values()],
        "usedStorage": sum(f.size for f in files.values()),
        "adapterhub": {
            "id": f"@{snap.owner}/{snap.name}",
            "version": snap.number,
            "latest_version": snap.latest,
            "sha256": snap.sha256,
            "method": snap.method,
            "layout": snap.layout,
            "model_type": snap.model_type,
            "model_name": snap.model_name,
            "hidden_size": snap.hidden_size,
        },
    }


@router.get("/api/models/{owner}/{name}")
def get_model_info(request: Request, owner: str, name: str) -> dict[str, Any]:
    return model_info(request, owner, name, snapshots.MAIN)


@router.get("/api/models/{owner}/{name}/revision/{revision}")
def get_model_info_at(request: Request, owner: str, name: str, revision: str) -> dict[str, Any]:
    return model_info(request, owner, name, revision)


@router.get("/api/models/{owner}/{name}/tree/{revision}")
@router.get("/api/models/{owner}/{name}/tree/{revision}/{path:path}")
def get_tree(
    request: Request, owner: str, name: str, revision: str, path: str = "", expand: bool = False
) -> list[dict[str, Any]]:
    snap = _snapshot(request, owner, name, revision)
    if path.strip("/"):
        raise HfApiError(
            f"{snap.repo_id} has no folder {path!r} (adapter repos are flat).",
            code=ENTRY_NOT_FOUND,
            status=404,
            headers={"X-Repo-Commit": snap.commit},
        )
    _, files = _files(request, snap)
    out = []
    for f in files.values():
        item: dict[str, Any] = {"type": "file", "oid": f.oid, "size": f.size, "path": f.name}
        if expand:
            item["lastCommit"] = {
                "id": snap.commit,
                "title": f"v{snap.number}",
                "date": snapshots.iso(snap.created_at),
            }
        out.append(item)
    return out


@router.get("/{owner}/{name}/resolve/{revision}/{filename:path}", operation_id="hf_resolve_file")
@router.head("/{owner}/{name}/resolve/{revision}/{filename:path}", operation_id="hf_resolve_file_metadata")
def resolve_file(request: Request, owner: str, name: str, revision: str, filename: str) -> FileResponse:
    snap = _snapshot(request, owner, name, revision)
    directory, files = _files(request, snap)
    entry = files.get(filename)
    if entry is None:
        raise HfApiError(
            f"{snap.repo_id} (v{snap.number}) has no file {filename!r}; it has: {', '.join(files) or 'nothing'}.",
            code=ENTRY_NOT_FOUND,
            status=404,
            headers={"X-Repo-Commit": snap.commit},
        )
    if request.method == "GET" and filename == "adapter_config.json":  # every loader reads it once
        _count_download(request, snap)
    immutable = revision != snapshots.MAIN
    headers = {
        "X-Repo-Commit": snap.commit,
        "ETag": f'"{entry.oid}"',
        "X-Adapterhub-Sha256": entry.sha256,
        "Cache-Control": "public, max-age=31536000, immutable" if immutable else "no-cache",
    }
    return FileResponse(directory / entry.name, headers=headers, media_type="application/octet-stream")


def _count_download(request: Request, snap: snapshots.Snapshot) -> None:
    with request.app.state.hub.sessions() as s:
        try:
            service.count_download(s, snap.adapter_id, snap.version_id)
            s.commit()
        except OperationalError:  # a busy counter must not fail a download
            s.rollback()

"""Write side of the Hub file API: ``create_repo``, README validation, ``preupload`` and ``commit`` (what
``HfApi.create_repo``, ``upload_folder``, ``upload_file`` and ``create_commit`` call).

A commit to ``main`` publishes the next immutable version of ``@owner/name``: the newest version's files, with the
commit's additions and deletions applied, are packed and go through the hub's own publish (same checks, same
atomic commit), with the card taken from the README's metadata (:mod:`adapterhub.hub.hf_card`). Every file travels
inline in the commit (``preupload`` answers ``uploadMode: regular`` for every file): ``huggingface_hub`` 2.x, when
``hf_xet`` is installed, sends every non-regular file through Xet storage and has no plain-LFS fallback, so this hub
never asks for LFS or Xet. ``lfsFile`` operations are refused.
"""

from __future__ import annotations

import base64
import binascii
import json
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from adapterhub.hub.archive import FILE_NAME_RE, pack_directory
from adapterhub.hub.errors import HubError
from adapterhub.hub.hf_card import ModelCardError, card_from_metadata, split_card
from adapterhub.hub.identifiers import ADAPTER_NAME_RE
from adapterhub.hub.server import publish as publishing
from adapterhub.hub.server import service
from adapterhub.hub.server.hf_api import snapshots
from adapterhub.hub.server.hf_api.errors import ENTRY_NOT_FOUND, HfApiError, HfRoute, bad_request

router = APIRouter(route_class=HfRoute, tags=["hugging face hub api"])
README = "README.md"


def _token(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _base_url(request: Request) -> str:
    return (request.app.state.hub.settings.public_url or str(request.base_url)).rstrip("/")


def _check_writer(request: Request, owner: str) -> str:
    """Authenticate; the caller must be allowed to publish under ``owner``. Returns the owner's name."""
    with request.app.state.hub.sessions() as s:
        _, owner_row = service.require_publisher(s, _token(request), owner)
        return owner_row.name


def _check_name(name: str) -> None:
    if not ADAPTER_NAME_RE.match(name):
        raise bad_request(
            f"{name!r} is not a valid repo name here (letters, digits, '_' and '-', at most 100)."
        )


def _check_revision(revision: str, create_pr: str | None) -> None:
    if create_pr not in (None, "", "0", "false"):
        raise bad_request(
            "This hub has no pull requests; commit to 'main' (each commit publishes a new version)."
        )
    if revision != snapshots.MAIN:
        raise bad_request(
            f"Commits go to 'main' only (each publishes a new version); {revision!r} names an immutable version."
        )


def _check_path(path: str) -> None:
    if not isinstance(path, str) or "/" in path.strip("/") or not FILE_NAME_RE.match(path.strip("/")):
        raise bad_request(
            f"File path {path!r} is not allowed: adapter repos are flat (no folders) and names use letters, digits, "
            "'_', '-' and '.', not starting with '.' (leave out .gitattributes and the like with ignore_patterns)."
        )


def card_for_readme(text: str) -> dict[str, Any]:
    """The publish card of a README, checked as a publish checks it (types, then task/subtask/language exist)."""
    try:
        meta, _ = split_card(text)
        card = card_from_metadata(meta)
    except ModelCardError as error:
        raise service.invalid("invalid_card", str(error)) from None
    return card


def _check_card(request: Request, card: dict[str, Any]) -> None:
    parsed = publishing.parse_card(json.dumps(card, default=str))
    with request.app.state.hub.sessions() as s:
        publishing.check_references(s, parsed)


@router.post("/api/repos/create")
async def create_repo(request: Request) -> JSONResponse:
    body = await _json(request)
    name = body.get("name")
    if not isinstance(name, str):
        raise bad_request("'name' is required.")
    if body.get("type") not in (None, "model"):
        raise bad_request(f"This hub holds model repos only, not {body.get('type')!r} repos.")
    if body.get("private") or body.get("visibility") not in (None, "public"):
        raise bad_request("This hub holds public repos only.")
    with request.app.state.hub.sessions() as s:
        user = service.authenticate(s, _token(request))
        namespace = body.get("organization") or user.name
    owner = _check_writer(request, str(namespace))
    _check_name(name)
    url = f"{_base_url(request)}/{owner}/{name}"
    with request.app.state.hub.sessions() as s:
        exists = snapshots.find_adapter(s, owner, name) is not None
    if exists:
        return JSONResponse({"error": "You already created this model repo", "url": url}, status_code=409)
    return JSONResponse({"url": url, "name": f"{owner}/{name}"})


@router.post("/api/validate-yaml")
async def validate_yaml(request: Request) -> JSONResponse:
    body = await _json(request)
    content = body.get("content")
    if not isinstance(content, str):
        raise bad_request("'content' (the README text) is required.")
    try:
        _check_card(request, card_for_readme(content))
    except HubError as error:
        return JSONResponse(
            {"error": str(error), "errors": [{"message": str(error)}], "warnings": []}, status_code=400
        )
    return JSONResponse({"errors": [], "warnings": []})


@router.post("/api/models/{owner}/{name}/preupload/{revision}")
async def preupload(request: Request, owner: str, name: str, revision: str) -> dict[str, Any]:
    owner = _check_writer(request, owner)
    _check_name(name)
    _check_revision(revision, request.query_params.get("create_pr"))
    body = await _json(request)
    files = body.get("files")
    if not isinstance(files, list) or not all(isinstance(f, dict) and "path" in f for f in files):
        raise bad_request("'files' must be a list of {path, sample, size}.")
    with request.app.state.hub.sessions() as s:
        current = snapshots.head(s, owner, name)
    entries = {}
    if current is not None:
        entries = snapshots.file_entries(snapshots.snapshot_dir(request.app.state.hub.storage, current))
    out = []
    for f in files:
        _check_path(f["path"])
        existing = entries.get(f["path"].strip("/"))
        out.append(
            {
                "path": f["path"],
                "uploadMode": "regular",
                "shouldIgnore": False,
                "oid": existing.oid if existing else None,
            }
        )
    return {"files": out, "commitOid": current.commit if current else None}


@router.post("/api/models/{owner}/{name}/commit/{revision}")
async def commit(request: Request, owner: str, name: str, revision: str) -> JSONResponse:
    hub = request.app.state.hub
    owner = _check_writer(request, owner)  # before a byte of the body is read
    _check_name(name)
    _check_revision(revision, request.query_params.get("create_pr"))
    limit = hub.settings.max_upload_bytes * 4 // 3 + (1 << 16)  # files travel base64-encoded
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise publishing.spool_limit_error(hub.settings.max_upload_bytes)
    work = Path(tempfile.mkdtemp(prefix="adapterhub-hf-commit-"))
    try:
        body = work / "body.ndjson"
        seen = 0
        with open(body, "wb") as out:
            async for chunk in request.stream():
                seen += len(chunk)
                if seen > limit:
                    raise publishing.spool_limit_error(hub.settings.max_upload_bytes)
                out.write(chunk)
        with hub.sessions() as s:
            current = snapshots.head(s, owner, name)
        base = None if current is None else snapshots.snapshot_dir(hub.storage, current)
        result, created = await run_in_threadpool(
            _apply_and_publish, request, owner, name, body, work, current, base
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    oid = snapshots.commit_id(owner, name, int(result["version"]), str(result["sha256"]))
    return JSONResponse(
        {
            "success": True,
            "commitOid": oid,
            "commitUrl": f"{_base_url(request)}/{owner}/{name}/commit/{oid}",
            "hookOutput": "",
            "pullRequestUrl": None,
            "adapterhub": {"id": f"@{owner}/{name}", "version": result["version"], "created": created},
        }
    )


def _apply_and_publish(
    request: Request,
    owner: str,
    name: str,
    body: Path,
    work: Path,
    current: snapshots.Snapshot | None,
    base: Path | None,
) -> tuple[dict[str, Any], bool]:
    files = work / "files"
    files.mkdir()
    if base is not None:
        for p in base.iterdir():
            shutil.copyfile(p, files / p.name)
    with open(body, "rb") as f:
        lines = [line for line in f if line.strip()]
    ops = []
    for number, raw in enumerate(lines, 1):
        try:
            item = json.loads(raw)
        except ValueError:
            raise bad_request(f"Line {number} of the commit is not JSON (the body is NDJSON).") from None
        if not isinstance(item, dict) or not isinstance(item.get("value"), dict):
            raise bad_request(f"Line {number} of the commit is not a {{key, value}} object.")
        ops.append((item.get("key"), item["value"]))
    if not ops or ops[0][0] != "header":
        raise bad_request("The commit must start with a 'header' line.")
    parent = ops[0][1].get("parentCommit")
    if parent is not None and (current is None or parent != current.commit):
        raise HfApiError(
            f"parentCommit {parent} is not the head of main ({current.commit if current else 'no commit yet'}).",
            code="conflict",
            status=412,
        )
    for key, value in ops[1:]:
        path = value.get("path")
        if key == "file":
            _check_path(path)
            if value.get("encoding", "base64") != "base64":
                raise bad_request(f"{path}: only base64 file content is supported.")
            try:
                data = base64.b64decode(value.get("content", ""), validate=True)
            except (binascii.Error, ValueError, TypeError):
                raise bad_request(f"{path}: the content is not valid base64.") from None
            (files / path.strip("/")).write_bytes(data)
        elif key in ("deletedFile", "deletedFolder"):
            target = files / str(PurePosixPath(str(path)).name)
            if key == "deletedFolder" or not target.is_file() or "/" in str(path).strip("/"):
                raise HfApiError(
                    f"A file with this name doesn't exist: {path!r} (adapter repos are flat).",
                    code=ENTRY_NOT_FOUND,
                    status=404,
                )
            target.unlink()
        elif key == "lfsFile":
            raise bad_request(
                f"{path}: this hub takes no LFS or Xet uploads; every file goes inline in the commit "
                "(preupload answers uploadMode 'regular')."
            )
        else:
            raise bad_request(f"Unsupported commit operation {key!r} (file and deletedFile are supported).")
    readme = files / README
    if not readme.is_file():
        raise service.invalid(
            "invalid_card",
            "The repo needs a README.md whose metadata gives the adapter's card "
            "('adapterhub: {task: ..., subtask: ...}'; see docs/hub.md).",
        )
    try:
        card = card_for_readme(readme.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise service.invalid("invalid_card", "README.md is not UTF-8 text.") from None
    archive = work / "snapshot.tar.gz"
    pack_directory(files, archive)
    hub = request.app.state.hub
    return publishing.publish(
        settings=hub.settings,
        sessions=hub.sessions,
        storage=hub.storage,
        token=_token(request),
        owner_name=owner,
        adapter_name=name,
        card_text=json.dumps(card, default=str),
        archive=archive,
    )


async def _json(request: Request, limit: int = 16 * 1024 * 1024) -> dict[str, Any]:
    """The JSON object body, refused past ``limit`` bytes (counted while it arrives)."""
    chunks, seen = [], 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > limit:
            raise bad_request(f"The JSON body is larger than {limit} bytes.")
        chunks.append(chunk)
    try:
        data = json.loads(b"".join(chunks) or b"{}")
    except ValueError:
        raise bad_request("The body is not JSON.") from None
    if not isinstance(data, dict):
        raise bad_request("The body must be a JSON object.")
    return data

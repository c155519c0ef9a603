"""The hub's FastAPI application: JSON API under ``/api/v1``; the website mounts itself from ``adapterhub.hub.web``.

Every error is JSON ``{"error": {"code", "message", "candidates", ...}}`` with a 4xx status for bad input; a 500
means a bug. The OpenAPI schema is at ``/openapi.json`` and the interactive docs at ``/docs``.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import logging
import os
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from adapterhub.hub.errors import HubAuthError, HubError
from adapterhub.hub.server import publish as publishing
from adapterhub.hub.server import service
from adapterhub.hub.server.database import make_engine, migrate, session_factory
from adapterhub.hub.server.models import Membership, Owner
from adapterhub.hub.server.settings import HubSettings
from adapterhub.hub.server.storage import Storage, open_storage

log = logging.getLogger("adapterhub.hub")
API = "/api/v1"
Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


@dataclass
class Hub:
    """What a request handler (API or website) needs: settings, database sessions and blob storage."""

    settings: HubSettings
    engine: Engine
    sessions: sessionmaker[Session]
    storage: Storage


def open_hub(settings: HubSettings, *, run_migrations: bool = True) -> Hub:
    engine = make_engine(settings.db_url)
    if run_migrations:
        migrate(engine)
    return Hub(
        settings,
        engine,
        session_factory(engine),
        open_storage(settings.storage_url, settings.s3_endpoint_url),
    )


def error_response(error: HubError) -> JSONResponse:
    return JSONResponse(service.hub_error_payload(error), status_code=error.status or 400)


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, "candidates": []}}, status_code=status)


class RejectNulMiddleware:
    """NUL bytes in a path or query are refused up front (PostgreSQL cannot even compare them)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            raw = scope.get("raw_path") or b""
            qs = scope.get("query_string") or b""
            if (
                b"%00" in raw.lower()
                or b"%00" in qs.lower()
                or "\x00" in scope.get("path", "")
                or b"\x00" in qs
            ):
                await _error(400, "invalid_request", "NUL characters are not allowed in URLs.")(
                    scope, receive, send
                )
                return
        await self.app(scope, receive, send)


class _TooLarge(Exception):
    pass


def _capped_receive(receive: Callable[[], Awaitable[Any]], limit: int) -> Callable[[], Awaitable[Any]]:
    seen = 0

    async def wrapped() -> Any:
        nonlocal seen
        message = await receive()
        if message.get("type") == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _TooLarge()
        return message

    return wrapped


class NewToken(BaseModel):
    name: str = Field(default="", max_length=100)


class NewUser(BaseModel):
    name: str = Field(max_length=39)
    display_name: str = Field(default="", max_length=200)
    admin: bool = False


class NewOrg(BaseModel):
    name: str = Field(max_length=39)
    display_name: str = Field(default="", max_length=200)


class NewMember(BaseModel):
    user: str = Field(max_length=39)
    role: str = Field(default="member", max_length=8)


class NewTask(BaseModel):
    name: str = Field(max_length=64)
    display_name: str = Field(default="", max_length=200)
    description: str = Field(default="", max_length=20000)


class NewSubtask(NewTask):
    metric: str = Field(default="accuracy", max_length=64)
    metric_direction: str = Field(default="max", max_length=4)
    url: str = Field(default="", max_length=500)


class NewLanguage(BaseModel):
    code: str = Field(max_length=64)
    display_name: str = Field(default="", max_length=200)
    description: str = Field(default="", max_length=20000)


def _bearer(authorization: Annotated[str | None, Header()] = None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _session(request: Request) -> Any:
    with request.app.state.hub.sessions() as s:
        yield s


Db = Annotated[Session, Depends(_session)]
Token = Annotated[str | None, Depends(_bearer)]


def _no_nul(*values: Any) -> None:
    for v in values:
        if isinstance(v, str) and "\x00" in v:
            raise service.invalid("invalid_request", "NUL characters are not allowed.")


def _etag_response(request: Request, payload: Any, max_age: int = 60) -> Response:
    body = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    etag = '"' + hashlib.sha256(body).hexdigest() + '"'
    headers = {"ETag": etag, "Cache-Control": f"public, max-age={max_age}, must-revalidate"}
    inm = request.headers.get("if-none-match")
    if inm:
        tags = [t.strip().removeprefix("W/") for t in inm.split(",")]
        if "*" in tags or etag in tags:
            return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)


def create_app(settings: HubSettings | None = None, *, hub: Hub | None = None, web: bool = True) -> FastAPI:
    """Build the app. With ``web=True`` and ``adapterhub.hub.web`` installed, its ``mount(app, hub)`` is called."""
    if hub is None:
        hub = open_hub(settings or HubSettings())
    app = FastAPI(
        title="AdapterHub registry",
        version="1",
        description=__doc__,
        openapi_url="/openapi.json",
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.hub = hub
    app.add_middleware(RejectNulMiddleware)

    @app.exception_handler(HubError)
    async def _hub_error(_request: Request, error: HubError) -> JSONResponse:
        return error_response(error)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in error.errors()
        )
        return _error(422, "invalid_request", f"Invalid request: {problems}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, error: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        return _error(error.status_code, code, str(error.detail))

    @app.exception_handler(OperationalError)
    async def _db_busy(_request: Request, error: OperationalError) -> JSONResponse:
        log.warning("database error: %s", error)
        return _error(503, "busy", "The hub's database is busy or unreachable; try again.")

    @app.get(API + "/health", tags=["meta"])
    def health(s: Db) -> dict[str, Any]:
        return {"status": "ok", "stats": service.stats(s)}

    @app.get(API + "/stats", tags=["meta"])
    def get_stats(s: Db) -> dict[str, int]:
        return service.stats(s)

    # ------------------------------------------------------------------ accounts
    @app.get(API + "/whoami", tags=["accounts"])
    def whoami(s: Db, token: Token) -> dict[str, Any]:
        user = service.authenticate(s, token)
        orgs = (
            s.execute(
                sa.select(Owner.name)
                .join(Membership, Membership.org_id == Owner.id)
                .where(Membership.user_id == user.id)
            )
            .scalars()
            .all()
        )
        return {"name": user.name, "kind": user.kind, "is_admin": user.is_admin, "orgs": sorted(orgs)}

    @app.post(API + "/tokens", tags=["accounts"], status_code=201)
    def new_token(body: NewToken, s: Db, token: Token) -> dict[str, Any]:
        user = service.authenticate(s, token)
        value = service.create_token(s, user, body.name)
        s.commit()
        return {"token": value, "user": user.name}

    @app.post(API + "/users", tags=["accounts"], status_code=201)
    def new_user(body: NewUser, s: Db, token: Token) -> dict[str, Any]:
        service.require_admin(service.authenticate(s, token))
        user = service.create_owner(s, body.name, display_name=body.display_name, is_admin=body.admin)
        value = service.create_token(s, user, "initial")
        s.commit()
        return {"name": user.name, "token": value}

    @app.post(API + "/orgs", tags=["accounts"], status_code=201)
    def new_org(body: NewOrg, s: Db, token: Token) -> dict[str, Any]:
        user = service.authenticate(s, token)
        org = service.create_owner(s, body.name, kind="org", display_name=body.display_name)
        service.add_member(s, org, user, "admin")
        s.commit()
        return {"name": org.name, "kind": "org", "members": [user.name]}

    @app.post(API + "/orgs/{org}/members", tags=["accounts"], status_code=201)
    def new_member(org: str, body: NewMember, s: Db, token: Token) -> dict[str, Any]:
        user = service.authenticate(s, token)
        org_row = service.require_owner(s, org)
        if org_row.kind != "org":
            raise service.invalid("invalid_request", f"{org!r} is a user, not an organisation.")
        if not user.is_admin and service.membership_role(s, org_row, user) != "admin":
            raise HubAuthError(
                f"Only admins of @{org_row.name} may add members.", code="forbidden", status=403
            )
        service.add_member(s, org_row, service.require_owner(s, body.user), body.role)
        s.commit()
        return {"org": org_row.name, "user": body.user, "role": body.role}

    @app.get(API + "/owners/{owner}", tags=["accounts"])
    def get_owner(owner: str, s: Db) -> dict[str, Any]:
        row = service.require_owner(s, owner)
        found = service.search(s, owner=row.name, sort="recent", per_page=100)
        return {
            "name": row.name,
            "kind": row.kind,
            "display_name": row.display_name,
            "adapters": found["items"],
            "total_adapters": found["total"],
        }

    # ------------------------------------------------------------------ taxonomy
    @app.get(API + "/tasks", tags=["taxonomy"])
    def get_tasks(s: Db) -> list[dict[str, Any]]:
        return service.list_tasks(s)

    @app.get(API + "/tasks/{task}", tags=["taxonomy"])
    def get_task(task: str, s: Db) -> dict[str, Any]:
        _no_nul(task)
        name = service.require_task(s, task).name
        return next(t for t in service.list_tasks(s) if t["name"] == name)

    @app.post(API + "/tasks", tags=["taxonomy"], status_code=201)
    def post_task(body: NewTask, s: Db, token: Token) -> dict[str, Any]:
        service.require_admin(service.authenticate(s, token))
        _no_nul(body.name, body.display_name, body.description)
        task = service.create_task(s, body.name, body.display_name, body.description)
        s.commit()
        return service.task_dict(task)

    @app.post(API + "/tasks/{task}/subtasks", tags=["taxonomy"], status_code=201)
    def post_subtask(task: str, body: NewSubtask, s: Db, token: Token) -> dict[str, Any]:
        service.require_admin(service.authenticate(s, token))
        _no_nul(body.name, body.display_name, body.description, body.metric, body.url)
        sub = service.create_subtask(
            s,
            task,
            body.name,
            body.display_name,
            body.description,
            body.metric,
            body.metric_direction,
            body.url,
        )
        s.commit()
        return service.subtask_dict(sub)

    @app.get(API + "/languages", tags=["taxonomy"])
    def get_languages(s: Db) -> list[dict[str, Any]]:
        return service.list_languages(s)

    @app.post(API + "/languages", tags=["taxonomy"], status_code=201)
    def post_language(body: NewLanguage, s: Db, token: Token) -> dict[str, Any]:
        service.require_admin(service.authenticate(s, token))
        _no_nul(body.code, body.display_name, body.description)
        lang = service.create_language(s, body.code, body.display_name, body.description)
        s.commit()
        return {"code": lang.code, "display_name": lang.display_name, "description": lang.description}

    # ------------------------------------------------------------------ adapters
    @app.get(API + "/adapters", tags=["adapters"])
    def search(
        s: Db,
        q: Annotated[str | None, Query(max_length=200)] = None,
        task: Annotated[str | None, Query(max_length=64)] = None,
        subtask: Annotated[str | None, Query(max_length=64)] = None,
        model_type: Annotated[str | None, Query(max_length=64)] = None,
        model_name: Annotated[str | None, Query(max_length=300)] = None,
        hidden_size: Annotated[int | None, Query(ge=1, le=10_000_000)] = None,
        config: Annotated[str | None, Query(max_length=500)] = None,
        owner: Annotated[str | None, Query(max_length=39)] = None,
        language: Annotated[str | None, Query(max_length=64)] = None,
        adapter_type: Annotated[str | None, Query(pattern="^(task|language)$")] = None,
        method: Annotated[str | None, Query(max_length=64)] = None,
        sort: Annotated[str, Query(pattern="^(score|recent|downloads|name)$")] = "score",
        page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
        per_page: Annotated[int, Query(ge=1, le=100)] = 20,
    ) -> dict[str, Any]:
        return service.search(
            s,
            q=q,
            task=task,
            subtask=subtask,
            model_type=model_type,
            model_name=model_name,
            hidden_size=hidden_size,
            config=config,
            owner=owner,
            language=language,
            adapter_type=adapter_type,
            method=method,
            sort=sort,
            page=page,
            per_page=per_page,
        )

    @app.get(API + "/resolve", tags=["adapters"])
    def resolve(
        s: Db,
        identifier: Annotated[str, Query(max_length=300)],
        model_type: Annotated[str, Query(max_length=64)],
        hidden_size: Annotated[int, Query(ge=1, le=10_000_000)],
        model_name: Annotated[str, Query(max_length=300)] = "",
        config: Annotated[str | None, Query(max_length=500)] = None,
    ) -> dict[str, Any]:
        return service.resolve(
            s,
            identifier,
            model_type=model_type,
            model_name=model_name,
            hidden_size=hidden_size,
            config=config,
        )

    @app.get(API + "/adapters/{owner}/{name}", tags=["adapters"])
    def adapter_detail(owner: str, name: str, s: Db) -> dict[str, Any]:
        return service.adapter_detail(s, owner, name)

    @app.get(API + "/adapters/{owner}/{name}/versions/{number}", tags=["adapters"])
    def version_detail(
        owner: str, name: str, number: Annotated[int, PathParam(ge=1, le=1_000_000_000)], s: Db
    ) -> dict[str, Any]:
        adapter = service.require_adapter(s, owner, name)
        return service.version_dict(adapter, service.require_version(s, adapter, number))

    @app.get(
        API + "/adapters/{owner}/{name}/versions/{number}/archive",
        tags=["adapters"],
        response_class=Response,
        responses={200: {"content": {"application/gzip": {}}}},
    )
    def download(
        owner: str, name: str, number: Annotated[int, PathParam(ge=1, le=1_000_000_000)], s: Db
    ) -> Response:
        adapter = service.require_adapter(s, owner, name)
        version = service.require_version(s, adapter, number)
        key, sha, size = version.storage_key, version.sha256, version.size
        try:
            service.count_download(s, adapter.id, version.id)
            s.commit()
        except OperationalError:  # a busy counter must not fail a download
            s.rollback()
        headers = {
            "ETag": f'"{sha}"',
            "X-Adapterhub-Sha256": sha,
            "Cache-Control": "public, max-age=31536000, immutable",
            "Content-Disposition": f'attachment; filename="{adapter.owner.name}--{adapter.name}--v{number}.tar.gz"',
        }
        local = hub.storage.local_path(key)
        if local is not None:
            if not local.is_file():
                raise HubError(
                    f"The archive of @{owner}/{name}:{number} is missing from storage.",
                    code="storage_error",
                    status=503,
                )
            return FileResponse(local, media_type="application/gzip", headers=headers)
        headers["Content-Length"] = str(size)
        return StreamingResponse(hub.storage.iter_bytes(key), media_type="application/gzip", headers=headers)

    @app.post(
        API + "/adapters/{owner}/{name}/versions",
        tags=["adapters"],
        status_code=201,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "required": ["card", "archive"],
                            "properties": {
                                "card": {
                                    "type": "string",
                                    "description": "JSON card (task, subtask, license, ...)",
                                },
                                "archive": {
                                    "type": "string",
                                    "format": "binary",
                                    "description": "tar.gz or zip of the adapter directory",
                                },
                            },
                        }
                    }
                },
            }
        },
    )
    async def upload(owner: str, name: str, request: Request, token: Token) -> Response:
        limit = hub.settings.max_upload_bytes
        length = request.headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                raise service.invalid("invalid_request", "Content-Length is not a number.")
            if int(length) > limit:
                raise publishing.spool_limit_error(limit)
        with hub.sessions() as s:  # refuse bad tokens before reading the body
            service.require_publisher(s, token, owner)
        capped = Request(request.scope, _capped_receive(request.receive, limit))
        spool = publishing.new_spool_path()
        try:
            try:
                form = await capped.form(max_files=1, max_fields=4, max_part_size=1024 * 1024)
            except _TooLarge:
                raise publishing.spool_limit_error(limit) from None
            except (HubError, StarletteHTTPException):
                raise
            except Exception as error:
                raise service.invalid(
                    "invalid_request",
                    f"The upload is not valid multipart form data ({type(error).__name__}).",
                ) from None
            card = form.get("card")
            archive = form.get("archive")
            if not isinstance(card, str):
                raise service.invalid("invalid_request", "The form needs a 'card' text field (JSON).")
            if archive is None or isinstance(archive, str):
                raise service.invalid("invalid_request", "The form needs an 'archive' file field.")
            await run_in_threadpool(_spool, archive.file, spool)
            await form.close()
            result, created = await run_in_threadpool(
                publishing.publish,
                settings=hub.settings,
                sessions=hub.sessions,
                storage=hub.storage,
                token=token,
                owner_name=owner,
                adapter_name=name,
                card_text=card,
                archive=spool,
            )
        finally:
            spool.unlink(missing_ok=True)
        return JSONResponse(result | {"created": created}, status_code=201 if created else 200)

    # ------------------------------------------------------------------ index
    @app.get(API + "/index.json", tags=["index"])
    def index_root(request: Request, s: Db) -> Response:
        return _etag_response(request, {"model_types": service.model_types(s)})

    @app.get(API + "/index/{model_type}.json", tags=["index"])
    def index_model(model_type: str, request: Request, s: Db) -> Response:
        if not service.MODEL_TYPE_RE.match(model_type):
            raise service.invalid("invalid_request", f"{model_type!r} is not a valid model type.")
        return _etag_response(request, service.model_index(s, model_type))

    from adapterhub.hub.server import hf_api

    hf_api.mount(app)  # the Hugging Face Hub file API (/api/models/..., /{owner}/{name}/resolve/...)
    if web and importlib.util.find_spec("adapterhub.hub.web") is not None:
        web_module = importlib.import_module("adapterhub.hub.web")
        if hasattr(web_module, "mount"):
            web_module.mount(app, hub)
    return app


def _spool(src: Any, dest: Path) -> None:
    src.seek(0)
    with open(dest, "wb") as out:
        while chunk := src.read(1 << 16):
            out.write(chunk)


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory adapterhub.hub.server.app:app_from_env`` (settings from environment)."""
    return create_app(
        HubSettings(
            db_url=os.environ.get("ADAPTERHUB_HUB_DB", ""),
            storage_url=os.environ.get("ADAPTERHUB_HUB_STORAGE", ""),
        )
    )

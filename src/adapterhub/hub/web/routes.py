"""The hub website: server-rendered pages (Jinja2, autoescaped) on the API's process.

``mount(app, hub)`` adds the pages, ``/static`` and HTML error pages for every path outside ``/api``; the app factory
(:func:`adapterhub.hub.server.app.create_app`) calls it when ``web=True``. Pages read the database through
:mod:`adapterhub.hub.server.service`, the same functions the JSON API uses, so both always agree.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import sqlalchemy as sa
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy.orm import Session
from starlette.exceptions import HTTPException as StarletteHTTPException

from adapterhub.hub.errors import HubError, HubNotFoundError
from adapterhub.hub.server import service
from adapterhub.hub.server.models import Adapter, AdapterVersion, Membership, Owner
from adapterhub.hub.web import views

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
SORTS = {"score": "Best score", "recent": "Most recent", "downloads": "Most downloaded", "name": "Name"}
PER_PAGE = 20
API_PREFIXES = ("/api/", "/openapi.json", "/docs")
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_FILTER_LIMITS = {
    "q": 200,
    "task": 64,
    "subtask": 64,
    "model_type": 64,
    "model_name": 300,
    "config": 500,
    "owner": 39,
    "language": 64,
    "method": 64,
}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _static_version() -> str:
    digest = hashlib.sha256()
    for path in sorted(STATIC.glob("*")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:10]


def make_environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(TEMPLATES)),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["human_size"] = views.human_size
    env.filters["human_count"] = views.human_count
    env.filters["metric"] = views.format_metric
    env.filters["date"] = _date
    env.filters["adapter_url"] = adapter_url
    env.globals["static_version"] = _static_version()
    env.globals["SORTS"] = SORTS
    return env


def _date(value: Any) -> str:
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            return value
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d")
    return ""


def adapter_url(item: Mapping[str, Any] | Adapter) -> str:
    if isinstance(item, Adapter):
        owner, name = item.owner.name, item.name
    else:
        owner, name = item["owner"], item["name"]
    return f"/adapters/{quote(owner, safe='')}/{quote(name, safe='')}"


# --------------------------------------------------------------------------------------------- rendering


class Site:
    def __init__(self, hub: Any) -> None:
        self.hub = hub
        self.env = make_environment()

    def render(self, request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        context.setdefault("title", "")
        context["request_path"] = request.url.path
        html = self.env.get_template(template).render(**context)
        return HTMLResponse(
            html,
            status_code=status,
            headers={
                "Content-Security-Policy": CSP,
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "same-origin",
                "Cache-Control": "no-cache",
            },
        )

    def hub_url(self, request: Request) -> str:
        public = getattr(self.hub.settings, "public_url", None)
        return (public or str(request.base_url)).rstrip("/")


def _site(request: Request) -> Site:
    return request.app.state.web_site


def _sessions(request: Request) -> Session:
    return request.app.state.hub.sessions()


def _clean(value: str | None, limit: int) -> str:
    if not value:
        return ""
    return _CONTROL.sub("", value).strip()[:limit]


def read_filters(request: Request, **fixed: str) -> dict[str, Any]:
    """Search filters from the query string, cleaned: never raises on odd input."""
    params = request.query_params
    out: dict[str, Any] = {k: _clean(params.get(k), n) for k, n in _FILTER_LIMITS.items()}
    out.update(fixed)
    adapter_type = params.get("adapter_type", "")
    out["adapter_type"] = adapter_type if adapter_type in ("task", "language") else ""
    sort = params.get("sort", "")
    out["sort"] = sort if sort in SORTS else "score"
    page = params.get("page", "1")
    out["page"] = min(int(page), 10_000) if page.isdigit() and int(page) >= 1 else 1
    return out


def run_search(s: Session, filters: Mapping[str, Any]) -> dict[str, Any]:
    args = {k: (v or None) for k, v in filters.items() if k not in ("sort", "page")}
    return service.search(s, **args, sort=filters["sort"], page=filters["page"], per_page=PER_PAGE)


def facets(s: Session, **where: Any) -> dict[str, list[tuple[str, str]]]:
    """Values the filter drop-downs offer (among adapters matching ``where``): (value, label) pairs."""
    stmt = sa.select(
        Adapter.model_type, Adapter.model_name, Adapter.config_hash, Adapter.config_name, Adapter.method
    )
    if where.get("task_id") is not None:
        stmt = stmt.where(Adapter.task_id == where["task_id"])
    if where.get("subtask_id") is not None:
        stmt = stmt.where(Adapter.subtask_id == where["subtask_id"])
    if where.get("language_id") is not None:
        stmt = stmt.where(Adapter.language_id == where["language_id"])
    rows = s.execute(stmt.distinct().limit(2000)).all()
    presets = service.preset_hashes()
    model_types = sorted({r.model_type for r in rows})
    model_names = sorted({r.model_name for r in rows if r.model_name})
    configs: dict[str, str] = {}
    for r in rows:
        label = r.config_name or presets.get(r.config_hash, "")
        configs[r.config_hash[:12]] = f"{label} ({r.config_hash[:8]})" if label else r.config_hash[:12]
    return {
        "model_types": [(m, m) for m in model_types],
        "model_names": [(m, m) for m in model_names],
        "methods": [(m, m) for m in sorted({r.method for r in rows})],
        "configs": sorted(configs.items(), key=lambda kv: kv[1]),
    }


def page_links(path: str, filters: Mapping[str, Any], total: int) -> dict[str, Any]:
    pages = max(1, -(-total // PER_PAGE))
    page = min(filters["page"], pages)

    def link(n: int) -> str:
        query = {k: v for k, v in filters.items() if v and k != "page" and k not in ("task", "subtask")}
        query |= {"page": n} if n > 1 else {}
        return path + ("?" + urlencode(query) if query else "")

    return {
        "page": page,
        "pages": pages,
        "prev": link(page - 1) if page > 1 else None,
        "next": link(page + 1) if page < pages else None,
    }


def candidate_url(candidate: str) -> str | None:
    """Where a suggestion from an error's candidates leads on the site."""
    text = candidate.split(":", 1)[0]
    m = re.fullmatch(r"@([A-Za-z0-9_\-]+)/([A-Za-z0-9_\-]+)", text)
    if m:
        return f"/adapters/{m.group(1)}/{m.group(2)}"
    m = re.fullmatch(r"@([A-Za-z0-9_\-]+)", text)
    if m:
        return f"/owners/{m.group(1)}"
    m = re.fullmatch(r"([A-Za-z0-9_.\-]+)/([A-Za-z0-9_.\-]+)", text)
    if m:
        return f"/explore/tasks/{quote(m.group(1))}/{quote(m.group(2))}"
    if re.fullmatch(r"[A-Za-z0-9_.\-]+", text):
        return "/search?" + urlencode({"q": text})
    return None


def snippet_identifier(s: Session, adapter: Adapter) -> tuple[str, bool]:
    """The shortest identifier that names only this adapter for its model: (identifier, is_short)."""
    short = service.short_form(adapter)
    if short is None:
        return service.qualified(adapter), False
    stmt = sa.select(Adapter).where(
        Adapter.owner_id == adapter.owner_id,
        Adapter.model_type == adapter.model_type,
        Adapter.hidden_size == adapter.hidden_size,
    )
    if adapter.subtask_id is not None:
        stmt = stmt.where(Adapter.subtask_id == adapter.subtask_id)
    else:
        stmt = stmt.where(Adapter.language_id == adapter.language_id, Adapter.subtask_id.is_(None))
    rivals = [
        a
        for a in s.scalars(stmt).unique().all()
        if not a.model_key or not adapter.model_key or a.model_key == adapter.model_key
    ]
    if len(rivals) <= 1:
        return short, True
    return service.qualified(adapter), False


def _bibtex_escape(text: str) -> str:
    return re.sub(r"[{}\\]", "", text)


def default_citation(adapter: Adapter, url: str) -> str:
    key = re.sub(r"[^A-Za-z0-9]", "", f"{adapter.owner.name}{adapter.name}") or "adapter"
    year = adapter.created_at.year if adapter.created_at else dt.date.today().year
    return (
        f"@misc{{{key}{year},\n"
        f"  title = {{{_bibtex_escape(adapter.name)}: "
        f"{_bibtex_escape(service.short_form(adapter) or adapter.method)} adapter}},\n"
        f"  author = {{{_bibtex_escape(adapter.owner.display_name or adapter.owner.name)}}},\n"
        f"  year = {{{year}}},\n"
        f"  howpublished = {{\\url{{{_bibtex_escape(url)}}}}},\n"
        f"  note = {{AdapterHub, {_bibtex_escape(service.qualified(adapter))}}}\n"
        "}"
    )


def fusion_rows(s: Session, limit: int = 500) -> list[Adapter]:
    """Adapters that are fusion setups (method ``fusion`` or with ``fusion/`` activations), newest first."""
    rows = s.scalars(sa.select(Adapter).order_by(Adapter.updated_at.desc()).limit(limit)).unique().all()
    return [a for a in rows if views.is_fusion(a.method, a.metrics, a.config)]


# ------------------------------------------------------------------------------------------------- pages

router = APIRouter(include_in_schema=False)


@router.get("/", response_class=HTMLResponse)
def home(request: Request) -> Response:
    with _sessions(request) as s:
        counts = service.stats(s)
        recent = service.search(s, sort="recent", per_page=6)["items"]
        tasks = sorted(
            service.list_tasks(s),
            key=lambda t: (-sum(st.get("adapters", 0) for st in t["subtasks"]), t["name"]),
        )
    return _site(request).render(request, "home.html", counts=counts, recent=recent, tasks=tasks[:8])


@router.get("/explore", response_class=HTMLResponse)
def explore(request: Request) -> Response:
    return RedirectResponse("/explore/tasks", status_code=307)


@router.get("/explore/tasks", response_class=HTMLResponse)
def explore_tasks(request: Request) -> Response:
    with _sessions(request) as s:
        tasks = service.list_tasks(s)
    for t in tasks:
        t["adapters"] = sum(st.get("adapters", 0) for st in t["subtasks"])
    return _site(request).render(request, "explore_tasks.html", title="Tasks", tasks=tasks, tab="tasks")


@router.get("/explore/languages", response_class=HTMLResponse)
def explore_languages(request: Request) -> Response:
    with _sessions(request) as s:
        languages = service.list_languages(s)
    return _site(request).render(
        request, "explore_languages.html", title="Languages", languages=languages, tab="languages"
    )


def _listing(
    request: Request, s: Session, path: str, fixed: dict[str, str], facet_where: dict[str, Any]
) -> dict[str, Any]:
    filters = read_filters(request, **fixed)
    result = run_search(s, filters)
    return {
        "filters": filters,
        "result": result,
        "facets": facets(s, **facet_where),
        "pager": page_links(path, filters, result["total"]),
        "action": path,
    }


@router.get("/explore/tasks/{task}", response_class=HTMLResponse)
def task_page(task: str, request: Request) -> Response:
    with _sessions(request) as s:
        row = service.require_task(s, task)
        info = next(t for t in service.list_tasks(s) if t["name"] == row.name)
        listing = _listing(
            request, s, f"/explore/tasks/{quote(row.name)}", {"task": row.name}, {"task_id": row.id}
        )
    return _site(request).render(
        request, "task.html", title=info["display_name"] or row.name, task=info, **listing
    )


@router.get("/explore/tasks/{task}/{subtask}", response_class=HTMLResponse)
def subtask_page(task: str, subtask: str, request: Request) -> Response:
    with _sessions(request) as s:
        task_row = service.require_task(s, task)
        sub = service.require_subtask(s, task_row, subtask)
        info = service.subtask_dict(sub)
        listing = _listing(
            request,
            s,
            f"/explore/tasks/{quote(task_row.name)}/{quote(sub.name)}",
            {"task": task_row.name, "subtask": sub.name},
            {"subtask_id": sub.id},
        )
        task_info = service.task_dict(task_row)
    return _site(request).render(
        request,
        "subtask.html",
        title=f"{info['display_name'] or sub.name} · {task_info['display_name'] or task_row.name}",
        task=task_info,
        subtask=info,
        **listing,
    )


@router.get("/explore/languages/{code}", response_class=HTMLResponse)
def language_page(code: str, request: Request) -> Response:
    with _sessions(request) as s:
        lang = service.require_language(s, code)
        info = {"code": lang.code, "display_name": lang.display_name, "description": lang.description}
        listing = _listing(
            request,
            s,
            f"/explore/languages/{quote(lang.code)}",
            {"language": lang.code},
            {"language_id": lang.id},
        )
    return _site(request).render(
        request, "language.html", title=info["display_name"] or lang.code, language=info, **listing
    )


@router.get("/search", response_class=HTMLResponse)
def search_page(request: Request) -> Response:
    with _sessions(request) as s:
        listing = _listing(request, s, "/search", {}, {})
        suggestions: list[str] = []
        q = listing["filters"]["q"]
        if q and not listing["result"]["total"]:
            names = [
                *s.scalars(sa.select(Adapter.name).limit(5000)).all(),
                *(f"{t['name']}/{st['name']}" for t in service.list_tasks(s) for st in t["subtasks"]),
            ]
            suggestions = service.close_matches(q, names)
        tasks = service.list_tasks(s)
        languages = service.list_languages(s)
    title = f"Search: {q}" if q else "Search"
    return _site(request).render(
        request,
        "search.html",
        title=title,
        suggestions=[(c, candidate_url(c)) for c in suggestions],
        tasks=tasks,
        languages=languages,
        **listing,
    )


@router.get("/fusion", response_class=HTMLResponse)
def fusion_page(request: Request) -> Response:
    with _sessions(request) as s:
        items = [service.adapter_summary(a) for a in fusion_rows(s)]
    return _site(request).render(request, "fusion.html", title="Fusion setups", items=items)


@router.get("/owners/{owner}", response_class=HTMLResponse)
def owner_page(owner: str, request: Request) -> Response:
    with _sessions(request) as s:
        row = service.require_owner(s, owner)
        info = {"name": row.name, "kind": row.kind, "display_name": row.display_name}
        members: list[str] = []
        if row.kind == "org":
            members = sorted(
                s.scalars(
                    sa.select(Owner.name)
                    .join(Membership, Membership.user_id == Owner.id)
                    .where(Membership.org_id == row.id)
                ).all()
            )
        listing = _listing(request, s, f"/owners/{quote(row.name)}", {"owner": row.name}, {})
    return _site(request).render(
        request, "owner.html", title=f"@{info['name']}", owner=info, members=members, **listing
    )


@router.get("/adapters/{owner}/{name}", response_class=HTMLResponse)
def adapter_page(owner: str, name: str, request: Request) -> Response:
    site = _site(request)
    with _sessions(request) as s:
        try:
            adapter = service.require_adapter(s, owner, name)
        except HubNotFoundError as error:
            return not_found_adapter(request, s, owner, name, error)
        versions = service.versions_of(s, adapter)
        wanted = request.query_params.get("version", "")
        selected = next((v for v in versions if wanted.isdigit() and v.number == int(wanted)), None)
        if selected is None:
            selected = next((v for v in versions if v.number == adapter.latest_version), None)
        if selected is None and versions:
            selected = versions[-1]
        identifier, is_short = snippet_identifier(s, adapter)
        summary = service.adapter_summary(adapter)
        model_for_snippet = _clean(request.query_params.get("model"), 300) or adapter.model_name
        hub_url = site.hub_url(request)
        page_url = hub_url + adapter_url(adapter)
        version_rows = [_version_row(adapter, v) for v in reversed(versions)]
        config = selected.config if selected else adapter.config
        metrics = selected.metrics if selected else adapter.metrics
        heatmap = views.fusion_heatmap(metrics, config)
        subtask_info = service.subtask_dict(adapter.subtask) if adapter.subtask else None
        return site.render(
            request,
            "adapter.html",
            title=service.qualified(adapter),
            a=summary,
            qualified=service.qualified(adapter),
            identifier=identifier,
            identifier_is_short=is_short,
            snippet=views.load_snippet(identifier, model_for_snippet, hub_url, has_head=adapter.has_head),
            snippet_model=model_for_snippet,
            pinned=f"{service.qualified(adapter)}:{selected.number}"
            if selected
            else service.qualified(adapter),
            cli=views.cli_snippet(identifier, hub_url),
            versions=version_rows,
            selected=_version_row(adapter, selected) if selected else None,
            config_json=views.pretty_json(config),
            method_params=views.method_parameters(config),
            metrics=views.plain_metrics(metrics),
            main_metric=subtask_info["metric"] if subtask_info else None,
            subtask=subtask_info,
            id2label=sorted(
                (adapter.id2label or {}).items(),
                key=lambda kv: (not kv[0].isdigit(), int(kv[0]) if kv[0].isdigit() else 0, kv[0]),
            ),
            citation=adapter.citation.strip(),
            default_citation=default_citation(adapter, page_url),
            heatmap=heatmap,
            is_fusion=views.is_fusion(adapter.method, metrics, config),
            api_url=f"/api/v1/adapters/{quote(adapter.owner.name)}/{quote(adapter.name)}",
        )


def _version_row(adapter: Adapter, v: AdapterVersion) -> dict[str, Any]:
    row = service.version_dict(adapter, v)
    row["metrics"] = views.plain_metrics(row["metrics"])
    main = adapter.subtask.metric if adapter.subtask else None
    row["main_metric_value"] = row["metrics"].get(main) if main else None
    return row


def not_found_adapter(
    request: Request, s: Session, owner: str, name: str, error: HubNotFoundError
) -> HTMLResponse:
    suggestions = list(error.candidates)
    everything = s.execute(
        sa.select(Owner.name, Adapter.name).join(Owner, Adapter.owner_id == Owner.id).limit(5000)
    ).all()
    by_name: dict[str, list[str]] = {}
    for o, n in everything:
        by_name.setdefault(n, []).append(f"@{o}/{n}")
    for close in service.close_matches(name, by_name):
        for cand in by_name[close]:
            if cand not in suggestions:
                suggestions.append(cand)
    return _site(request).render(
        request,
        "not_found.html",
        status=404,
        title="Adapter not found",
        heading=f"No adapter @{owner}/{name}",
        message=error.message,
        suggestions=[(c, candidate_url(c)) for c in suggestions[:10]],
    )


# ---------------------------------------------------------------------------------------------- mounting


def _is_api(path: str) -> bool:
    return path.startswith(API_PREFIXES)


def mount(app: FastAPI, hub: Any) -> None:
    """Add the website to ``app``: pages, ``/static``, and HTML error pages outside the API."""
    app.state.web_site = Site(hub)
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    json_http = app.exception_handlers.get(StarletteHTTPException)
    json_hub = app.exception_handlers.get(HubError)

    async def http_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, StarletteHTTPException)
        if _is_api(request.url.path) and json_http is not None:
            return await json_http(request, error)
        status = error.status_code
        heading = "Page not found" if status == 404 else f"Error {status}"
        message = (
            "There is no page at this address." if status == 404 else str(error.detail or "Request failed.")
        )
        return app.state.web_site.render(
            request,
            "not_found.html",
            status=status,
            title=heading,
            heading=heading,
            message=message,
            suggestions=[],
        )

    async def hub_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, HubError)
        if _is_api(request.url.path) and json_hub is not None:
            return await json_hub(request, error)
        status = error.status or 400
        heading = "Not found" if status == 404 else f"Error {status}"
        return app.state.web_site.render(
            request,
            "not_found.html",
            status=status,
            title=heading,
            heading=heading,
            message=error.message,
            suggestions=[(c, candidate_url(c)) for c in error.candidates[:10]],
        )

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(HubError, hub_error)


mount_web = mount

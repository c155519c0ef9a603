"""The hub's logic, independent of HTTP: accounts and tokens, taxonomy, publish, search, resolve, index.

Functions take a SQLAlchemy session and raise :class:`adapterhub.hub.errors.HubError` subclasses with an HTTP
status and a machine-readable code; :mod:`adapterhub.hub.server.app` turns them into JSON error responses. The
website (``adapterhub.hub.web``) calls these functions too.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, aliased

from adapterhub.hub.errors import (
    AmbiguousIdentifierError,
    HubAuthError,
    HubConflictError,
    HubError,
    HubModelMismatchError,
    HubNotFoundError,
    HubValidationError,
)
from adapterhub.hub.identifiers import OWNER_RE, SLUG_RE, Identifier, parse_identifier
from adapterhub.hub.server.models import (
    Adapter,
    AdapterVersion,
    ApiToken,
    Language,
    Membership,
    Owner,
    Subtask,
    Task,
    utcnow,
)

TOKEN_PREFIX = "ahub_"
MODEL_TYPE_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
HEX_RE = re.compile(r"^[0-9a-f]{8,64}$")


# ------------------------------------------------------------------------------------------------ helpers


def not_found(code: str, message: str, candidates: Sequence[str] = (), **details: Any) -> HubNotFoundError:
    return HubNotFoundError(message, code=code, candidates=candidates, status=404, details=details)


def invalid(code: str, message: str, candidates: Sequence[str] = ()) -> HubValidationError:
    return HubValidationError(message, code=code, candidates=candidates, status=422)


def close_matches(word: str, choices: Iterable[str], n: int = 5) -> list[str]:
    """Close matches of ``word``: prefix/substring matches first, then difflib's."""
    choices = sorted(set(choices))
    low = word.lower()
    out = [c for c in choices if c.lower().startswith(low) or (len(low) >= 3 and low in c.lower())]
    out += difflib.get_close_matches(word, choices, n=n, cutoff=0.6)
    seen: list[str] = []
    for c in out:
        if c not in seen:
            seen.append(c)
    return seen[:n]


def model_key(model_name: str | None) -> str:
    """Compare model names by their last path component, lower-cased (a local copy of a model matches it)."""
    if not model_name:
        return ""
    return model_name.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1].lower()


@functools.lru_cache(maxsize=1)
def preset_hashes() -> dict[str, str]:
    """config_hash -> preset name for the library's presets (for display and ``config=pfeiffer`` filters)."""
    try:
        from adapterhub.configs import PRESETS, resolve_config
    except ImportError:  # pragma: no cover
        return {}
    out: dict[str, str] = {}
    for name in PRESETS:
        try:
            out[resolve_config(name).canonical_hash()] = name
        except Exception:  # pragma: no cover - a broken preset must not break the hub
            continue
    return out


def config_label(adapter: Adapter) -> str:
    name = adapter.config_name or preset_hashes().get(adapter.config_hash, "")
    return f"{adapter.method} {name} {adapter.config_hash[:8]}".replace("  ", " ")


# ------------------------------------------------------------------------------------------ accounts, tokens


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def get_owner(s: Session, name: str) -> Owner | None:
    if not isinstance(name, str) or not OWNER_RE.match(name):
        return None
    return s.scalar(sa.select(Owner).where(Owner.name_key == name.lower()))


def require_owner(s: Session, name: str) -> Owner:
    owner = get_owner(s, name)
    if owner is None:
        names = s.scalars(sa.select(Owner.name)).all()
        raise not_found(
            "unknown_owner",
            f"There is no user or organisation {name!r} on this hub.",
            [f"@{c}" for c in close_matches(name, names)],
        )
    return owner


def create_owner(
    s: Session, name: str, *, kind: str = "user", display_name: str = "", is_admin: bool = False
) -> Owner:
    if not OWNER_RE.match(name or ""):
        raise invalid(
            "invalid_name", f"{name!r} is not a valid owner name (letters, digits, '_', '-'; at most 39)."
        )
    if get_owner(s, name) is not None:
        raise HubConflictError(f"The name {name!r} is taken.", code="exists", status=409)
    owner = Owner(
        name=name, name_key=name.lower(), kind=kind, display_name=display_name or name, is_admin=is_admin
    )
    s.add(owner)
    s.flush()
    return owner


def create_token(s: Session, user: Owner, name: str = "") -> str:
    if user.kind != "user":
        raise invalid("invalid_request", "Tokens belong to users, not organisations.")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    s.add(ApiToken(user_id=user.id, name=name[:100], token_hash=hash_token(token), prefix=token[:12]))
    s.flush()
    return token


def authenticate(s: Session, token: str | None) -> Owner:
    if not token:
        raise HubAuthError(
            "This needs an API token: pass 'Authorization: Bearer TOKEN' "
            "(adapterhub login TOKEN stores one).",
            code="unauthorized",
            status=401,
        )
    row = s.scalar(sa.select(ApiToken).where(ApiToken.token_hash == hash_token(token)))
    if row is None or row.revoked_at is not None:
        raise HubAuthError(
            "The API token is not valid on this hub (wrong, revoked or for another hub).",
            code="unauthorized",
            status=401,
        )
    return row.user


def add_member(s: Session, org: Owner, user: Owner, role: str = "member") -> None:
    if org.kind != "org":
        raise invalid("invalid_request", f"{org.name!r} is a user, not an organisation.")
    if user.kind != "user":
        raise invalid("invalid_request", f"{user.name!r} is not a user.")
    if role not in ("admin", "member"):
        raise invalid("invalid_request", "role must be 'admin' or 'member'.")
    row = s.get(Membership, (org.id, user.id))
    if row is None:
        s.add(Membership(org_id=org.id, user_id=user.id, role=role))
    else:
        row.role = role
    s.flush()


def membership_role(s: Session, org: Owner, user: Owner) -> str | None:
    row = s.get(Membership, (org.id, user.id))
    return row.role if row else None


def may_publish(s: Session, user: Owner, owner: Owner) -> bool:
    if user.id == owner.id or user.is_admin:
        return True
    return owner.kind == "org" and membership_role(s, owner, user) is not None


def require_admin(user: Owner) -> None:
    if not user.is_admin:
        raise HubAuthError("Only a hub administrator may do this.", code="forbidden", status=403)


# ------------------------------------------------------------------------------------------------ taxonomy


def _check_slug(kind: str, name: str) -> None:
    if not isinstance(name, str) or not SLUG_RE.match(name):
        raise invalid(
            "invalid_name", f"{name!r} is not a valid {kind} name (letters, digits, '_', '.', '-')."
        )


def get_task(s: Session, name: str) -> Task | None:
    return s.scalar(sa.select(Task).where(Task.name == name))


def require_task(s: Session, name: str) -> Task:
    task = get_task(s, name)
    if task is None:
        raise not_found(
            "unknown_task",
            f"There is no task {name!r} on this hub.",
            close_matches(name, s.scalars(sa.select(Task.name)).all()),
        )
    return task


def require_subtask(s: Session, task: Task, name: str) -> Subtask:
    sub = s.scalar(sa.select(Subtask).where(Subtask.task_id == task.id, Subtask.name == name))
    if sub is None:
        names = s.scalars(sa.select(Subtask.name).where(Subtask.task_id == task.id)).all()
        raise not_found(
            "unknown_subtask",
            f"Task {task.name!r} has no subtask {name!r}.",
            [f"{task.name}/{c}" for c in close_matches(name, names)],
        )
    return sub


def require_language(s: Session, code: str) -> Language:
    lang = s.scalar(sa.select(Language).where(Language.code == code))
    if lang is None:
        raise not_found(
            "unknown_language",
            f"There is no language {code!r} on this hub.",
            close_matches(code, s.scalars(sa.select(Language.code)).all()),
        )
    return lang


def create_task(s: Session, name: str, display_name: str = "", description: str = "") -> Task:
    _check_slug("task", name)
    if get_task(s, name):
        raise HubConflictError(f"Task {name!r} exists.", code="exists", status=409)
    task = Task(name=name, display_name=display_name[:200] or name, description=description[:20000])
    s.add(task)
    s.flush()
    return task


def create_subtask(
    s: Session,
    task_name: str,
    name: str,
    display_name: str = "",
    description: str = "",
    metric: str = "accuracy",
    metric_direction: str = "max",
    url: str = "",
) -> Subtask:
    task = require_task(s, task_name)
    _check_slug("subtask", name)
    if metric_direction not in ("max", "min"):
        raise invalid("invalid_request", "metric_direction must be 'max' or 'min'.")
    if s.scalar(sa.select(Subtask).where(Subtask.task_id == task.id, Subtask.name == name)):
        raise HubConflictError(f"Subtask {task_name}/{name} exists.", code="exists", status=409)
    sub = Subtask(
        task_id=task.id,
        name=name,
        display_name=display_name[:200] or name,
        description=description[:20000],
        metric=metric[:64] or "accuracy",
        metric_direction=metric_direction,
        url=url[:500],
    )
    s.add(sub)
    s.flush()
    return sub


def create_language(s: Session, code: str, display_name: str = "", description: str = "") -> Language:
    _check_slug("language", code)
    if s.scalar(sa.select(Language).where(Language.code == code)):
        raise HubConflictError(f"Language {code!r} exists.", code="exists", status=409)
    lang = Language(code=code, display_name=display_name[:200] or code, description=description[:20000])
    s.add(lang)
    s.flush()
    return lang


def seed_taxonomy(s: Session, data: dict[str, Any]) -> dict[str, int]:
    """Add the tasks, subtasks and languages of ``data`` that do not exist yet (idempotent)."""
    added = {"tasks": 0, "subtasks": 0, "languages": 0}
    for t in data.get("tasks", []):
        if get_task(s, t["name"]) is None:
            create_task(s, t["name"], t.get("display_name", ""), t.get("description", ""))
            added["tasks"] += 1
        task = require_task(s, t["name"])
        for st in t.get("subtasks", []):
            if (
                s.scalar(sa.select(Subtask).where(Subtask.task_id == task.id, Subtask.name == st["name"]))
                is None
            ):
                create_subtask(
                    s,
                    t["name"],
                    st["name"],
                    st.get("display_name", ""),
                    st.get("description", ""),
                    st.get("metric", "accuracy"),
                    st.get("metric_direction", "max"),
                    st.get("url", ""),
                )
                added["subtasks"] += 1
    for lang in data.get("languages", []):
        if s.scalar(sa.select(Language).where(Language.code == lang["code"])) is None:
            create_language(s, lang["code"], lang.get("display_name", ""), lang.get("description", ""))
            added["languages"] += 1
    return added


def task_dict(
    task: Task, subtasks: Sequence[Subtask] = (), counts: Mapping[Any, int] | None = None
) -> dict[str, Any]:
    counts = counts or {}
    return {
        "name": task.name,
        "display_name": task.display_name,
        "description": task.description,
        "subtasks": [subtask_dict(st, counts.get(st.id, 0)) for st in subtasks],
    }


def subtask_dict(st: Subtask, count: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": st.name,
        "task": st.task.name,
        "display_name": st.display_name,
        "description": st.description,
        "metric": st.metric,
        "metric_direction": st.metric_direction,
        "url": st.url,
    }
    if count is not None:
        out["adapters"] = count
    return out


def list_tasks(s: Session) -> list[dict[str, Any]]:
    tasks = s.scalars(sa.select(Task).order_by(Task.name)).all()
    subs = s.scalars(sa.select(Subtask).order_by(Subtask.name)).all()
    counts = dict(
        s.execute(sa.select(Adapter.subtask_id, sa.func.count()).group_by(Adapter.subtask_id)).all()
    )
    by_task: dict[int, list[Subtask]] = {}
    for st in subs:
        by_task.setdefault(st.task_id, []).append(st)
    return [task_dict(t, by_task.get(t.id, []), counts) for t in tasks]


def list_languages(s: Session) -> list[dict[str, Any]]:
    counts = dict(
        s.execute(sa.select(Adapter.language_id, sa.func.count()).group_by(Adapter.language_id)).all()
    )
    return [
        {
            "code": lang.code,
            "display_name": lang.display_name,
            "description": lang.description,
            "adapters": counts.get(lang.id, 0),
        }
        for lang in s.scalars(sa.select(Language).order_by(Language.code)).all()
    ]


def stats(s: Session) -> dict[str, int]:
    return {
        "adapters": s.scalar(sa.select(sa.func.count()).select_from(Adapter)) or 0,
        "versions": s.scalar(sa.select(sa.func.count()).select_from(AdapterVersion)) or 0,
        "owners": s.scalar(sa.select(sa.func.count()).select_from(Owner)) or 0,
        "tasks": s.scalar(sa.select(sa.func.count()).select_from(Task)) or 0,
        "subtasks": s.scalar(sa.select(sa.func.count()).select_from(Subtask)) or 0,
        "languages": s.scalar(sa.select(sa.func.count()).select_from(Language)) or 0,
        "downloads": s.scalar(sa.select(sa.func.coalesce(sa.func.sum(Adapter.downloads), 0))) or 0,
    }


# ------------------------------------------------------------------------------------------ adapter payloads


def qualified(adapter: Adapter) -> str:
    return f"@{adapter.owner.name}/{adapter.name}"


def short_form(adapter: Adapter) -> str | None:
    if adapter.task and adapter.subtask:
        return f"{adapter.task.name}/{adapter.subtask.name}@{adapter.owner.name}"
    if adapter.language:
        return f"{adapter.language.code}@{adapter.owner.name}"
    return None


def archive_path(adapter: Adapter, version: int) -> str:
    return f"/api/v1/adapters/{adapter.owner.name}/{adapter.name}/versions/{version}/archive"


def adapter_summary(adapter: Adapter) -> dict[str, Any]:
    return {
        "id": qualified(adapter),
        "owner": adapter.owner.name,
        "name": adapter.name,
        "short_form": short_form(adapter),
        "adapter_type": adapter.adapter_type,
        "task": adapter.task.name if adapter.task else None,
        "subtask": adapter.subtask.name if adapter.subtask else None,
        "language": adapter.language.code if adapter.language else None,
        "model_type": adapter.model_type,
        "model_name": adapter.model_name,
        "hidden_size": adapter.hidden_size,
        "num_layers": adapter.num_layers,
        "method": adapter.method,
        "config_hash": adapter.config_hash,
        "config_name": adapter.config_name or preset_hashes().get(adapter.config_hash, ""),
        "has_head": adapter.has_head,
        "head_type": adapter.head_type,
        "license": adapter.license,
        "description": adapter.description,
        "metrics": adapter.metrics,
        "score": adapter.score,
        "metric": adapter.subtask.metric if adapter.subtask else None,
        "num_parameters": adapter.num_parameters,
        "latest_version": adapter.latest_version,
        "downloads": adapter.downloads,
        "created_at": adapter.created_at.isoformat(),
        "updated_at": adapter.updated_at.isoformat(),
    }


def version_dict(adapter: Adapter, v: AdapterVersion) -> dict[str, Any]:
    return {
        "version": v.number,
        "sha256": v.sha256,
        "size": v.size,
        "layout": v.layout,
        "config_hash": v.config_hash,
        "metrics": v.metrics,
        "files": v.files,
        "num_parameters": v.num_parameters,
        "downloads": v.downloads,
        "created_at": v.created_at.isoformat(),
        "archive_url": archive_path(adapter, v.number),
    }


def require_adapter(s: Session, owner_name: str, name: str) -> Adapter:
    owner = require_owner(s, owner_name)
    adapter = s.scalar(sa.select(Adapter).where(Adapter.owner_id == owner.id, Adapter.name == name))
    if adapter is None:
        names = s.scalars(sa.select(Adapter.name).where(Adapter.owner_id == owner.id)).all()
        raise not_found(
            "unknown_adapter",
            f"@{owner.name} has no adapter {name!r}.",
            [f"@{owner.name}/{c}" for c in close_matches(name, names)],
        )
    return adapter


def versions_of(s: Session, adapter: Adapter) -> list[AdapterVersion]:
    return list(
        s.scalars(
            sa.select(AdapterVersion)
            .where(AdapterVersion.adapter_id == adapter.id)
            .order_by(AdapterVersion.number)
        ).all()
    )


def adapter_detail(s: Session, owner_name: str, name: str) -> dict[str, Any]:
    adapter = require_adapter(s, owner_name, name)
    out = adapter_summary(adapter)
    out.update(
        {
            "config": adapter.config,
            "id2label": adapter.id2label,
            "citation": adapter.citation,
            "subtask_info": subtask_dict(adapter.subtask) if adapter.subtask else None,
            "versions": [version_dict(adapter, v) for v in versions_of(s, adapter)],
        }
    )
    return out


def require_version(s: Session, adapter: Adapter, number: int) -> AdapterVersion:
    v = s.scalar(
        sa.select(AdapterVersion).where(
            AdapterVersion.adapter_id == adapter.id, AdapterVersion.number == number
        )
    )
    if v is None:
        numbers = [x.number for x in versions_of(s, adapter)]
        raise not_found(
            "unknown_version",
            f"{qualified(adapter)} has no version {number}; it has "
            + (", ".join(map(str, numbers)) or "none")
            + ".",
            [f"{qualified(adapter)}:{n}" for n in numbers],
        )
    return v


def count_download(s: Session, adapter_id: int, version_id: int) -> None:
    s.execute(
        sa.update(AdapterVersion)
        .where(AdapterVersion.id == version_id)
        .values(downloads=AdapterVersion.downloads + 1)
    )
    s.execute(sa.update(Adapter).where(Adapter.id == adapter_id).values(downloads=Adapter.downloads + 1))


# ---------------------------------------------------------------------------------------------- searching


def _like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _config_condition(s: Session, config: str, column_hash: Any, column_name: Any) -> Any:
    """SQL condition for a config filter given as a hash (prefix of 8+ hex), preset name or declared name."""
    config = config.strip()
    conds = [sa.func.lower(column_name) == config.lower()]
    if HEX_RE.match(config.lower()):
        conds.append(column_hash.like(config.lower() + "%"))
    else:
        h = _preset_hash(config)
        if h:
            conds.append(column_hash == h)
    return sa.or_(*conds)


def _preset_hash(config: str) -> str | None:
    try:
        from adapterhub.configs import resolve_config

        return resolve_config(config).canonical_hash()
    except Exception:
        return None


def search(
    s: Session,
    *,
    q: str | None = None,
    task: str | None = None,
    subtask: str | None = None,
    model_type: str | None = None,
    model_name: str | None = None,
    hidden_size: int | None = None,
    config: str | None = None,
    owner: str | None = None,
    language: str | None = None,
    adapter_type: str | None = None,
    sort: str = "score",
    page: int = 1,
    per_page: int = 20,
) -> dict[str, Any]:
    if sort not in ("score", "recent", "downloads", "name"):
        raise invalid("invalid_request", f"sort must be score, recent, downloads or name, not {sort!r}.")
    page = max(1, min(int(page), 1_000_000))
    per_page = max(1, min(int(per_page), 100))
    owner_t, task_t, sub_t, lang_t = aliased(Owner), aliased(Task), aliased(Subtask), aliased(Language)
    stmt = (
        sa.select(Adapter.id)
        .join(owner_t, Adapter.owner_id == owner_t.id)
        .outerjoin(task_t, Adapter.task_id == task_t.id)
        .outerjoin(sub_t, Adapter.subtask_id == sub_t.id)
        .outerjoin(lang_t, Adapter.language_id == lang_t.id)
    )
    if q:
        for term in q.split()[:10]:
            pat = _like(term[:100])
            stmt = stmt.where(
                sa.or_(
                    *(
                        col.ilike(pat, escape="\\")
                        for col in (
                            Adapter.name,
                            Adapter.description,
                            Adapter.model_name,
                            owner_t.name,
                            task_t.name,
                            sub_t.name,
                            task_t.display_name,
                            sub_t.display_name,
                            lang_t.code,
                            lang_t.display_name,
                        )
                    )
                )
            )
    if task:
        stmt = stmt.where(task_t.name == task)
    if subtask:
        stmt = stmt.where(sub_t.name == subtask)
    if model_type:
        stmt = stmt.where(Adapter.model_type == model_type)
    if model_name:
        stmt = stmt.where(sa.or_(Adapter.model_key == model_key(model_name), Adapter.model_key == ""))
    if hidden_size is not None:
        stmt = stmt.where(Adapter.hidden_size == hidden_size)
    if config:
        stmt = stmt.where(_config_condition(s, config, Adapter.config_hash, Adapter.config_name))
    if owner:
        stmt = stmt.where(owner_t.name_key == owner.lower())
    if language:
        stmt = stmt.where(lang_t.code == language)
    if adapter_type:
        stmt = stmt.where(Adapter.adapter_type == adapter_type)
    total = s.scalar(sa.select(sa.func.count()).select_from(stmt.subquery())) or 0
    orders: dict[str, list[Any]] = {
        "score": [Adapter.score.is_(None), Adapter.score.desc(), Adapter.updated_at.desc()],
        "recent": [Adapter.updated_at.desc()],
        "downloads": [Adapter.downloads.desc(), Adapter.updated_at.desc()],
        "name": [Adapter.name.asc()],
    }
    order = orders[sort]
    ids = s.scalars(
        stmt.order_by(*order, Adapter.id.desc()).offset((page - 1) * per_page).limit(per_page)
    ).all()
    rows = (
        {a.id: a for a in s.scalars(sa.select(Adapter).where(Adapter.id.in_(ids))).unique().all()}
        if ids
        else {}
    )
    return {
        "total": total,
        "page": page,
        "per_page": per_page,
        "sort": sort,
        "items": [adapter_summary(rows[i]) for i in ids],
    }


def model_index(s: Session, model_type: str) -> dict[str, Any]:
    """Every adapter for ``model_type`` with its latest version: the static-cacheable per-model index."""
    adapters = (
        s.scalars(sa.select(Adapter).where(Adapter.model_type == model_type).order_by(Adapter.id))
        .unique()
        .all()
    )
    latest: dict[int, AdapterVersion] = {}
    latest_numbers = {a.id: a.latest_version for a in adapters}
    if adapters:
        for v in s.scalars(
            sa.select(AdapterVersion).where(AdapterVersion.adapter_id.in_([a.id for a in adapters]))
        ).all():
            if v.number == latest_numbers[v.adapter_id]:
                latest[v.adapter_id] = v
    items = []
    for a in adapters:
        item = adapter_summary(a)
        item.pop("downloads")  # changes on every download; the index must stay cacheable
        newest = latest.get(a.id)
        item["latest"] = version_dict(a, newest) if newest else None
        if item["latest"]:
            item["latest"].pop("downloads")
        items.append(item)
    return {"model_type": model_type, "adapters": items}


def model_types(s: Session) -> list[dict[str, Any]]:
    rows = s.execute(
        sa.select(Adapter.model_type, sa.func.count())
        .group_by(Adapter.model_type)
        .order_by(Adapter.model_type)
    ).all()
    return [{"model_type": mt, "adapters": n, "index_url": f"/api/v1/index/{mt}.json"} for mt, n in rows]


# ---------------------------------------------------------------------------------------------- resolving


def _fits(adapter: Adapter, model_type: str, model_name: str, hidden_size: int) -> bool:
    if adapter.model_type != model_type or adapter.hidden_size != hidden_size:
        return False
    want = model_key(model_name)
    return not adapter.model_key or not want or adapter.model_key == want


def _describe(adapter: Adapter) -> str:
    parts = [
        short_form(adapter) or "",
        config_label(adapter),
        f"model {adapter.model_type} {adapter.model_name or '(unnamed)'} d={adapter.hidden_size}",
        f"v{adapter.latest_version}",
    ]
    if adapter.score is not None and adapter.subtask is not None:
        parts.append(f"{adapter.subtask.metric}={adapter.metrics.get(adapter.subtask.metric)}")
    return " · ".join(p for p in parts if p)


def _candidates(adapters: Sequence[Adapter]) -> tuple[list[str], list[str]]:
    ordered = sorted(adapters, key=lambda a: qualified(a).lower())
    return [qualified(a) for a in ordered], [_describe(a) for a in ordered]


def resolve(
    s: Session,
    identifier: str,
    *,
    model_type: str,
    model_name: str = "",
    hidden_size: int,
    config: str | None = None,
) -> dict[str, Any]:
    """Resolve ``identifier`` for one model to exactly one adapter version, or raise with the candidates."""
    ident = parse_identifier(identifier)
    if not MODEL_TYPE_RE.match(model_type or ""):
        raise invalid("invalid_request", f"model_type {model_type!r} is not a valid model type.")
    if not isinstance(hidden_size, int) or hidden_size <= 0:
        raise invalid("invalid_request", "hidden_size must be a positive integer.")
    model_text = f"{model_type} {model_name or '(unnamed)'} (hidden size {hidden_size})"
    pool, what = _identifier_pool(s, ident)
    if not pool:
        raise not_found("no_adapters", f"No adapter is published under {what}.")
    fitting = [a for a in pool if _fits(a, model_type, model_name, hidden_size)]
    if not fitting:
        names, hints = _candidates(pool)
        raise HubModelMismatchError(
            f"{what} has {len(pool)} adapter(s), but none for your model {model_text}.",
            code="model_mismatch",
            candidates=names,
            status=422,
            details={"hints": hints},
        )
    if config:
        fitting = _filter_config(s, fitting, config, what)
    if len(fitting) > 1:
        names, hints = _candidates(fitting)
        raise AmbiguousIdentifierError(
            f"{ident.text!r} matches {len(fitting)} adapters for {model_text}; name one of them "
            f"with its fully qualified form (or add @owner / a config).",
            code="ambiguous",
            candidates=names,
            status=409,
            details={"hints": hints},
        )
    adapter = fitting[0]
    number = ident.version if ident.version is not None else adapter.latest_version
    version = require_version(s, adapter, number)
    out = adapter_summary(adapter)
    out.update(
        {
            "identifier": ident.text,
            "resolved": f"{qualified(adapter)}:{version.number}",
            "version": version.number,
            "sha256": version.sha256,
            "size": version.size,
            "archive_url": archive_path(adapter, version.number),
            "config": version.config,
            "id2label": adapter.id2label,
            "versions": [v.number for v in versions_of(s, adapter)],
        }
    )
    return out


def _identifier_pool(s: Session, ident: Identifier) -> tuple[list[Adapter], str]:
    if ident.is_direct:
        assert ident.owner is not None and ident.name is not None
        return [require_adapter(s, ident.owner, ident.name)], f"@{ident.owner}/{ident.name}"
    owner = require_owner(s, ident.owner) if ident.owner else None
    word = ident.word or ""
    stmt = sa.select(Adapter)
    task: Task | None
    if ident.task:
        task = require_task(s, ident.task)
        sub = require_subtask(s, task, word)
        stmt = stmt.where(Adapter.subtask_id == sub.id)
        what = f"{task.name}/{sub.name}"
    else:
        sub_ids = s.scalars(sa.select(Subtask.id).where(Subtask.name == word)).all()
        task = get_task(s, word)
        lang = s.scalar(sa.select(Language).where(Language.code == word))
        if not sub_ids and task is None and lang is None:
            names = [
                f"{t}/{st}"
                for t, st in s.execute(
                    sa.select(Task.name, Subtask.name).join(Subtask, Subtask.task_id == Task.id)
                ).all()
            ]
            by_sub = {n.split("/", 1)[1]: n for n in names}
            pool_names = [
                *by_sub,
                *s.scalars(sa.select(Task.name)).all(),
                *s.scalars(sa.select(Language.code)).all(),
            ]
            suggestions = [by_sub.get(c, c) for c in close_matches(word, pool_names)]
            raise not_found("unknown_name", f"No task, subtask or language is called {word!r}.", suggestions)
        conds: list[Any] = []
        if sub_ids:
            conds.append(Adapter.subtask_id.in_(sub_ids))
        if task is not None:
            conds.append(Adapter.task_id == task.id)
        if lang is not None:
            conds.append(Adapter.language_id == lang.id)
        stmt = stmt.where(sa.or_(*conds))
        what = repr(word)
    if owner is not None:
        stmt = stmt.where(Adapter.owner_id == owner.id)
        what = f"{what}@{owner.name}"
    return list(s.scalars(stmt).unique().all()), what


def _filter_config(s: Session, adapters: list[Adapter], config: str, what: str) -> list[Adapter]:
    config = config.strip()
    if not config or len(config) > 500 or "\x00" in config:
        raise invalid("invalid_request", "config must be a preset name or a config hash.")
    low = config.lower()
    wanted_hash = None if HEX_RE.match(low) else _preset_hash(config)
    matched = [
        a
        for a in adapters
        if (HEX_RE.match(low) and a.config_hash.startswith(low))
        or a.config_hash == wanted_hash
        or (a.config_name and a.config_name.lower() == low)
    ]
    if matched:
        return matched
    names, hints = _candidates(adapters)
    if not HEX_RE.match(low) and wanted_hash is None and not any(a.config_name for a in adapters):
        try:
            from adapterhub.configs import preset_names

            presets = preset_names()
        except ImportError:  # pragma: no cover
            presets = []
        raise not_found(
            "unknown_config",
            f"{config!r} is neither a known config preset nor a config hash. Presets: "
            + ", ".join(presets)
            + ".",
            close_matches(config, presets),
        )
    raise not_found(
        "config_mismatch",
        f"No adapter under {what} for your model uses config {config!r}; these do:",
        names,
        hints=hints,
    )


def check_identity(existing: Adapter, new: dict[str, Any]) -> None:
    """A new version must keep the adapter's identity: type, task, subtask, language and model."""
    diffs = []
    for key, old in (
        ("adapter_type", existing.adapter_type),
        ("task_id", existing.task_id),
        ("subtask_id", existing.subtask_id),
        ("language_id", existing.language_id),
        ("model_type", existing.model_type),
        ("hidden_size", existing.hidden_size),
        ("model_key", existing.model_key),
    ):
        if new[key] != old:
            diffs.append(key.replace("_id", ""))
    if diffs:
        raise HubConflictError(
            f"{qualified(existing)} exists with a different {', '.join(diffs)}; versions of one adapter share "
            "its task, subtask, language and model. Publish under a new name instead.",
            code="conflict",
            status=409,
        )


def hub_error_payload(error: HubError) -> dict[str, Any]:
    body: dict[str, Any] = {"code": error.code, "message": error.message, "candidates": error.candidates}
    if error.details:
        body.update({k: v for k, v in error.details.items() if k not in body})
    return {"error": body}


def now_iso() -> str:
    return utcnow().isoformat()

"""The catalog of published adapters: looking them up, their JSON shapes, searching, per-model indexes, counts.

:func:`adapter_summary` / :func:`version_dict` / :func:`adapter_detail` are the shapes the API and the website
show; :func:`search` filters, sorts and pages; :func:`model_index` is the cacheable index of one model type;
:func:`stats` counts what the hub holds; :func:`check_identity` keeps a new version consistent with its adapter.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, aliased

from adapterhub.hub.errors import HubConflictError
from adapterhub.hub.identifiers import model_key
from adapterhub.hub.server.models import Adapter, AdapterVersion, Language, Owner, Subtask, Task
from adapterhub.hub.server.service.accounts import require_owner
from adapterhub.hub.server.service.helpers import (
    HEX_RE,
    close_matches,
    invalid,
    not_found,
    preset_hash,
    preset_hashes,
)
from adapterhub.hub.server.service.taxonomy import subtask_dict


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
        "modules": list(v.modules or ()),  # the modules targeted by name (AdapterManifest.modules)
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


def _like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _config_condition(s: Session, config: str, column_hash: Any, column_name: Any) -> Any:
    """SQL condition for a config filter given as a hash (prefix of 8+ hex), preset name or declared name."""
    config = config.strip()
    conds = [sa.func.lower(column_name) == config.lower()]
    if HEX_RE.match(config.lower()):
        conds.append(column_hash.like(config.lower() + "%"))
    else:
        h = preset_hash(config)
        if h:
            conds.append(column_hash == h)
    return sa.or_(*conds)


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
    method: str | None = None,
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
    if method:
        stmt = stmt.where(Adapter.method == method)
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

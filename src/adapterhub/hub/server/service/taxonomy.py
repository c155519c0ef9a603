"""The taxonomy adapters are filed under: tasks, their subtasks (with metric) and languages.

Creating them one by one or from seed data (``seed.json``), looking them up with suggestions, and listing them with
how many adapters each has.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from adapterhub.hub.errors import HubConflictError
from adapterhub.hub.identifiers import SLUG_RE
from adapterhub.hub.server.models import Adapter, Language, Subtask, Task
from adapterhub.hub.server.service.helpers import close_matches, invalid, not_found


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

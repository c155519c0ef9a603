"""Resolving an identifier for one model to exactly one adapter version, or an error listing the candidates.

The identifier grammar is :mod:`adapterhub.hub.identifiers`; an adapter fits a model when model type and hidden
size are equal and the model names agree (see :func:`adapterhub.hub.identifiers.model_key`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from adapterhub.hub.errors import AmbiguousIdentifierError, HubModelMismatchError
from adapterhub.hub.identifiers import Identifier, model_key, parse_identifier
from adapterhub.hub.server.models import Adapter, Language, Subtask, Task
from adapterhub.hub.server.service.accounts import require_owner
from adapterhub.hub.server.service.catalog import (
    adapter_summary,
    archive_path,
    qualified,
    require_adapter,
    require_version,
    short_form,
    versions_of,
)
from adapterhub.hub.server.service.helpers import (
    HEX_RE,
    MODEL_TYPE_RE,
    close_matches,
    config_label,
    invalid,
    not_found,
    preset_hash,
)
from adapterhub.hub.server.service.taxonomy import get_task, require_subtask, require_task


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
    wanted_hash = None if HEX_RE.match(low) else preset_hash(config)
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
            from adapterhub.spec.configs import preset_names

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

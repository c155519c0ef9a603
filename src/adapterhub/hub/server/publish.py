"""Validating and publishing an uploaded adapter archive.

Order of work, so that a crash at any point leaves no partial version visible: (1) the upload is spooled to a
temporary file under a size cap, (2) unpacked safely into a temporary directory, (3) inspected and checked (schema,
canonical config, weight shapes against the declared model), (4) repacked as a reproducible tar.gz whose sha256
names the blob, (5) the blob is stored (atomically), (6) one database transaction adds the version row with the
next free number (retried when another publish took the number). Only step 6 makes it visible.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from adapterhub.errors import AdapterHubError, IncompatibleModelError
from adapterhub.hub.archive import extract_archive, pack_directory
from adapterhub.hub.errors import HubError, HubValidationError
from adapterhub.hub.identifiers import ADAPTER_NAME_RE
from adapterhub.hub.server import library, service
from adapterhub.hub.server.header_inspect import inspect_from_headers
from adapterhub.hub.server.models import Adapter, AdapterVersion, utcnow
from adapterhub.hub.server.settings import HubSettings
from adapterhub.hub.server.storage import Storage, blob_key
from adapterhub.spec.configs import canonical_json, sha256_hex

_NO_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _clean(value: str, field: str) -> str:
    if _NO_CONTROL.search(value):
        raise ValueError(f"{field} contains control characters")
    return value


class Card(BaseModel):
    """The metadata sent with an upload (``card`` form field, JSON)."""

    model_config = ConfigDict(extra="forbid", strict=False)
    adapter_type: Literal["task", "language"] = "task"
    task: str | None = Field(default=None, max_length=64)
    subtask: str | None = Field(default=None, max_length=64)
    language: str | None = Field(default=None, max_length=64)
    license: str = Field(default="", max_length=100)
    description: str = Field(default="", max_length=20000)
    citation: str = Field(default="", max_length=20000)
    metrics: dict[str, float] = Field(default_factory=dict, max_length=50)
    config_name: str = Field(default="", max_length=200)
    model_type: str | None = Field(default=None, max_length=64)
    model_name: str | None = Field(default=None, max_length=300)
    hidden_size: int | None = Field(default=None, ge=1, le=1_000_000)

    @field_validator("task", "subtask", "language", "license", "config_name", "model_type", "model_name")
    @classmethod
    def _short_text(cls, v: str | None, info: Any) -> str | None:
        if v is None:
            return v
        v = _clean(v, info.field_name)
        if "\n" in v or "\r" in v or "\t" in v:
            raise ValueError(f"{info.field_name} must be one line")
        return v.strip()

    @field_validator("description", "citation")
    @classmethod
    def _long_text(cls, v: str, info: Any) -> str:
        return _clean(v, info.field_name)

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, v: dict[str, float]) -> dict[str, float]:
        for key, value in v.items():
            if not key or len(key) > 64 or _NO_CONTROL.search(key):
                raise ValueError(f"metric name {key[:70]!r} is not allowed")
            if not math.isfinite(value):
                raise ValueError(f"metric {key!r} is not a finite number")
        return v


def parse_card(text: str | bytes) -> Card:
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as error:
        raise service.invalid("invalid_card", f"The card is not valid JSON: {error}.") from None
    if not isinstance(data, dict):
        raise service.invalid("invalid_card", "The card must be a JSON object.")
    try:
        return Card.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'card'}: {e['msg']}" for e in error.errors()
        )
        raise service.invalid("invalid_card", f"The card is invalid: {problems}.") from None


def inspect_directory(directory: Path, card: Card, weights_check: str) -> Any:
    """The manifest of ``directory`` by the ``weights_check`` of the hub's settings: ``"full"`` is the library's
    check (``adapterhub.hub.server.library``), which imports the model code (torch) on first use, so that the
    server starts without it."""
    if weights_check == "header":
        return inspect_from_headers(directory, model_type=card.model_type)
    return library.inspect_full(directory, card.model_type)


def validate_directory(directory: Path, card: Card, weights_check: str = "full") -> Any:
    """Inspect and check an unpacked adapter directory; returns its manifest."""
    try:
        manifest = inspect_directory(directory, card, weights_check)
    except IncompatibleModelError as error:
        raise service.invalid("model_mismatch", str(error)) from None
    except AdapterHubError as error:
        raise service.invalid(
            "invalid_adapter", f"The archive is not a valid adapter directory: {error}"
        ) from None
    if sha256_hex(canonical_json(manifest.config)) != manifest.config_hash:
        raise service.invalid(
            "invalid_adapter",
            "The adapter's config_hash is not the sha256 of its canonical "
            "config; re-save the adapter with this library.",
        )
    if not isinstance(manifest.config, dict) or manifest.config.get("method") != manifest.method:
        raise service.invalid("invalid_adapter", "The adapter's config does not state its method.")
    if not service.MODEL_TYPE_RE.match(manifest.model_type or ""):
        raise service.invalid("invalid_adapter", f"model_type {manifest.model_type!r} is not valid.")
    if not isinstance(manifest.hidden_size, int) or manifest.hidden_size <= 0:
        raise service.invalid("invalid_adapter", "hidden_size must be a positive integer.")
    if len(manifest.model_name or "") > 300 or _NO_CONTROL.search(manifest.model_name or ""):
        raise service.invalid("invalid_adapter", "model_name is too long or has control characters.")
    for key in ("model_type", "model_name", "hidden_size"):
        declared = getattr(card, key)
        if declared is not None and declared != getattr(manifest, key):
            raise service.invalid(
                "model_mismatch",
                f"The card says {key}={declared!r}, but the adapter was saved "
                f"for {key}={getattr(manifest, key)!r}.",
            )
    return manifest


def publish(
    *,
    settings: HubSettings,
    sessions: sessionmaker[Session],
    storage: Storage,
    token: str | None,
    owner_name: str,
    adapter_name: str,
    card_text: str | bytes,
    archive: Path,
) -> tuple[dict[str, Any], bool]:
    """Validate and publish; returns (version info, created). Raises HubError subclasses."""
    with sessions() as s:
        user, owner = service.require_publisher(s, token, owner_name)
        user_id, owner_id, owner_display = user.id, owner.id, owner.name
    if not ADAPTER_NAME_RE.match(adapter_name or ""):
        raise service.invalid(
            "invalid_name",
            f"{adapter_name!r} is not a valid adapter name (letters, digits, '_' and '-', at most 100).",
        )
    card = parse_card(card_text)
    with tempfile.TemporaryDirectory(prefix="adapterhub-publish-") as tmp:
        unpacked = Path(tmp) / "adapter"
        files = extract_archive(archive, unpacked, settings.archive_limits)
        manifest = validate_directory(unpacked, card, settings.weights_check)
        with sessions() as s:
            refs = _references(s, card)
        packed = Path(tmp) / "canonical.tar.gz"
        pack_directory(unpacked, packed)
        digest = hashlib.sha256()
        with open(packed, "rb") as f:
            while chunk := f.read(1 << 16):
                digest.update(chunk)
        sha = digest.hexdigest()
        size = packed.stat().st_size
        key = blob_key(sha)
        storage.put_file(key, packed)
    if settings.pause_before_commit:
        time.sleep(settings.pause_before_commit)
    metrics = dict(card.metrics)
    fields = {
        "adapter_type": card.adapter_type,
        **refs,
        "model_type": manifest.model_type,
        "model_name": manifest.model_name or "",
        "model_key": service.model_key(manifest.model_name),
        "hidden_size": manifest.hidden_size,
    }
    latest = {
        "num_layers": manifest.num_layers,
        "method": manifest.method,
        "config": manifest.config,
        "config_hash": manifest.config_hash,
        "config_name": card.config_name or service.preset_hashes().get(manifest.config_hash, ""),
        "has_head": bool(manifest.has_head),
        "head_type": manifest.head_type,
        "id2label": {str(k): str(v) for k, v in manifest.id2label.items()} if manifest.id2label else None,
        "license": card.license,
        "description": card.description,
        "citation": card.citation,
        "metrics": metrics,
        "num_parameters": int(manifest.num_parameters),
    }
    version_fields = {
        "sha256": sha,
        "size": size,
        "storage_key": key,
        "layout": manifest.layout,
        "config": manifest.config,
        "config_hash": manifest.config_hash,
        "metrics": metrics,
        "files": list(files),
        "modules": [m.to_dict() for m in manifest.modules],
        "num_parameters": int(manifest.num_parameters),
        "uploader_id": user_id,
    }
    return _commit_version(sessions, owner_id, owner_display, adapter_name, fields, latest, version_fields)


def _references(s: Session, card: Card) -> dict[str, Any]:
    """Referential checks: task, subtask and language must exist on the hub."""
    task_id = subtask_id = language_id = None
    if card.adapter_type == "task":
        if not card.task or not card.subtask:
            raise service.invalid("invalid_card", "A task adapter needs 'task' and 'subtask' in its card.")
    elif not card.language:
        raise service.invalid("invalid_card", "A language adapter needs 'language' in its card.")
    if card.subtask and not card.task:
        raise service.invalid("invalid_card", "'subtask' needs 'task' too.")
    if card.task:
        task = service.require_task(s, card.task)
        task_id = task.id
        if card.subtask:
            subtask_id = service.require_subtask(s, task, card.subtask).id
    if card.language:
        language_id = service.require_language(s, card.language).id
    return {"task_id": task_id, "subtask_id": subtask_id, "language_id": language_id}


check_references = _references  # public: the Hub file API checks a README card before the commit


def _score(s: Session, subtask_id: int | None, metrics: dict[str, float]) -> float | None:
    if subtask_id is None:
        return None
    from adapterhub.hub.server.models import Subtask

    sub = s.get(Subtask, subtask_id)
    if sub is None or sub.metric not in metrics:
        return None
    value = float(metrics[sub.metric])
    return value if sub.metric_direction == "max" else -value


def _commit_version(
    sessions: sessionmaker[Session],
    owner_id: int,
    owner_name: str,
    adapter_name: str,
    fields: dict[str, Any],
    latest: dict[str, Any],
    version_fields: dict[str, Any],
    attempts: int = 50,
) -> tuple[dict[str, Any], bool]:
    last_error: Exception | None = None
    for attempt in range(attempts):
        try:
            with sessions() as s, s.begin():
                adapter = s.scalar(
                    sa.select(Adapter).where(Adapter.owner_id == owner_id, Adapter.name == adapter_name)
                )
                if adapter is None:
                    adapter = Adapter(
                        owner_id=owner_id,
                        name=adapter_name,
                        latest_version=0,
                        downloads=0,
                        **fields,
                        **latest,
                    )
                    s.add(adapter)
                    s.flush()
                else:
                    service.check_identity(adapter, fields)
                top = (
                    s.scalar(
                        sa.select(sa.func.max(AdapterVersion.number)).where(
                            AdapterVersion.adapter_id == adapter.id
                        )
                    )
                    or 0
                )
                if top:
                    newest = s.scalar(
                        sa.select(AdapterVersion).where(
                            AdapterVersion.adapter_id == adapter.id, AdapterVersion.number == top
                        )
                    )
                    if (
                        newest is not None
                        and newest.sha256 == version_fields["sha256"]
                        and newest.metrics == version_fields["metrics"]
                    ):
                        return service.version_dict(adapter, newest) | {
                            "id": service.qualified(adapter)
                        }, False
                number = top + 1
                version = AdapterVersion(
                    adapter_id=adapter.id, number=number, downloads=0, created_at=utcnow(), **version_fields
                )
                s.add(version)
                s.flush()
                score = _score(s, fields["subtask_id"], latest["metrics"])
                s.execute(
                    sa.update(Adapter)
                    .where(Adapter.id == adapter.id, Adapter.latest_version < number)
                    .values(latest_version=number, updated_at=utcnow(), score=score, **latest)
                )
                result = service.version_dict(adapter, version) | {"id": f"@{owner_name}/{adapter_name}"}
            return result, True
        except IntegrityError as error:  # another publish took this number (or created the adapter) first
            last_error = error
        except OperationalError as error:  # SQLite: database locked / busy snapshot; retry
            if (
                "locked" not in str(error).lower()
                and "busy" not in str(error).lower()
                and "deadlock" not in str(error).lower()
                and "serializ" not in str(error).lower()
            ):
                raise
            last_error = error
        time.sleep(random.uniform(0.005, 0.05) * min(attempt + 1, 10))
    raise HubError(
        f"Could not publish @{owner_name}/{adapter_name} after {attempts} attempts under heavy "
        f"concurrent publishing ({last_error}); try again.",
        code="busy",
        status=503,
    )


def spool_limit_error(limit: int) -> HubValidationError:
    return HubValidationError(
        f"The upload is larger than this hub's limit of {limit} bytes.", code="too_large", status=413
    )


def new_spool_path() -> Path:
    fd, name = tempfile.mkstemp(prefix="adapterhub-upload-", suffix=".bin")
    os.close(fd)
    return Path(name)

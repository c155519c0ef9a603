"""Database schema (SQLAlchemy 2 ORM). Changes need a new Alembic revision in ``migrations/versions``."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class Base(DeclarativeBase):
    pass


class Owner(Base):
    """A user or an organisation: adapters live under an owner."""

    __tablename__ = "owners"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(40), nullable=False)
    name_key: Mapped[str] = mapped_column(String(40), nullable=False, unique=True)  # lower-cased name
    kind: Mapped[str] = mapped_column(String(8), nullable=False)  # "user" | "org"
    display_name: Mapped[str] = mapped_column(String(200), nullable=False, default="")
    is_admin: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow)


class Membership(Base):
    __tablename__ = "memberships"
    org_id: Mapped[int] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"), primary_key=True)
    role: Mapped[str] = mapped_column(String(8), nullable=False, default="member")  # "admin" | "member"


class ApiToken(Base):
    """An API token; only its sha256 is stored."""

    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(
        ForeignKey("owners.id", ondelete="CASCADE"), nullable=False, index=True
    )
    name: Mapped[str] = mapped_column(String(100), nullable=False, default="")
    token_hash: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    prefix: Mapped[str] = mapped_column(String(16), nullable=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    user: Mapped[Owner] = relationship()


class Task(Base):
    __tablename__ = "tasks"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    display_name: Mapped[str] = mapped_column(String(200), nullable=False, default="")
    description: Mapped[str] = mapped_column(Text, nullable=False, default="")


class Subtask(Base):
    """A data set or domain of a task, with the metric that ranks its adapters."""

    __tablename__ = "subtasks"
    __table_args__ = (UniqueConstraint("task_id", "name", name="uq_subtasks_task_name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="RESTRICT"), nullable=False)
    name: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    display_name: Mapped[str] = mapped_column(String(200), nullable=False, default="")
    description: Mapped[str] = mapped_column(Text, nullable=False, default="")
    metric: Mapped[str] = mapped_column(String(64), nullable=False, default="accuracy")
    metric_direction: Mapped[str] = mapped_column(String(4), nullable=False, default="max")  # "max" | "min"
    url: Mapped[str] = mapped_column(String(500), nullable=False, default="")
    task: Mapped[Task] = relationship()


class Language(Base):
    __tablename__ = "languages"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    display_name: Mapped[str] = mapped_column(String(200), nullable=False, default="")
    description: Mapped[str] = mapped_column(Text, nullable=False, default="")


class Adapter(Base):
    """An adapter under an owner. Its identity (type, task, subtask, language, model) is fixed at the first
    publish; the card fields and the ``latest_*`` copies follow the newest version."""

    __tablename__ = "adapters"
    __table_args__ = (
        UniqueConstraint("owner_id", "name", name="uq_adapters_owner_name"),
        Index("ix_adapters_model", "model_type", "hidden_size"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("owners.id", ondelete="RESTRICT"), nullable=False)
    name: Mapped[str] = mapped_column(String(100), nullable=False)
    adapter_type: Mapped[str] = mapped_column(String(16), nullable=False)  # "task" | "language"
    task_id: Mapped[int | None] = mapped_column(
        ForeignKey("tasks.id", ondelete="RESTRICT"), nullable=True, index=True
    )
    subtask_id: Mapped[int | None] = mapped_column(
        ForeignKey("subtasks.id", ondelete="RESTRICT"), nullable=True, index=True
    )
    language_id: Mapped[int | None] = mapped_column(
        ForeignKey("languages.id", ondelete="RESTRICT"), nullable=True
    )
    model_type: Mapped[str] = mapped_column(String(64), nullable=False)
    model_name: Mapped[str] = mapped_column(String(300), nullable=False, default="")
    model_key: Mapped[str] = mapped_column(String(300), nullable=False, default="")
    hidden_size: Mapped[int] = mapped_column(Integer, nullable=False)
    num_layers: Mapped[int | None] = mapped_column(Integer, nullable=True)
    method: Mapped[str] = mapped_column(String(64), nullable=False)
    config: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    config_hash: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    config_name: Mapped[str] = mapped_column(String(200), nullable=False, default="")
    has_head: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    head_type: Mapped[str | None] = mapped_column(String(64), nullable=True)
    id2label: Mapped[dict[str, str] | None] = mapped_column(JSON, nullable=True)
    license: Mapped[str] = mapped_column(String(100), nullable=False, default="")
    description: Mapped[str] = mapped_column(Text, nullable=False, default="")
    citation: Mapped[str] = mapped_column(Text, nullable=False, default="")
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    score: Mapped[float | None] = mapped_column(
        Float, nullable=True
    )  # the subtask's metric, higher is better
    num_parameters: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    latest_version: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    downloads: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, default=utcnow, index=True
    )
    owner: Mapped[Owner] = relationship(lazy="joined")
    task: Mapped[Task | None] = relationship(lazy="joined")
    subtask: Mapped[Subtask | None] = relationship(lazy="joined")
    language: Mapped[Language | None] = relationship(lazy="joined")


class AdapterVersion(Base):
    """One immutable published version: its archive's sha256, size and storage key never change."""

    __tablename__ = "adapter_versions"
    __table_args__ = (UniqueConstraint("adapter_id", "number", name="uq_versions_adapter_number"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id", ondelete="RESTRICT"), nullable=False)
    number: Mapped[int] = mapped_column(Integer, nullable=False)
    sha256: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    size: Mapped[int] = mapped_column(Integer, nullable=False)
    storage_key: Mapped[str] = mapped_column(String(200), nullable=False)
    layout: Mapped[str] = mapped_column(String(32), nullable=False, default="adapterhub")
    config: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    config_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    files: Mapped[list[str]] = mapped_column(JSON, nullable=False, default=list)
    # the modules its low-rank factors target by name (AdapterManifest.modules as ModuleShape.to_dict rows)
    modules: Mapped[list[dict[str, Any]]] = mapped_column(JSON, nullable=False, default=list)
    num_parameters: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    uploader_id: Mapped[int | None] = mapped_column(
        ForeignKey("owners.id", ondelete="SET NULL"), nullable=True
    )
    downloads: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow)

"""Initial hub schema: owners, memberships, tokens, tasks, subtasks, languages, adapters, versions.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None


def _ts(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "owners",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(40), nullable=False),
        sa.Column("name_key", sa.String(40), nullable=False, unique=True),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("is_admin", sa.Boolean, nullable=False),
        _ts("created_at"),
    )
    op.create_table(
        "memberships",
        sa.Column("org_id", sa.Integer, sa.ForeignKey("owners.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("owners.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("role", sa.String(8), nullable=False),
    )
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("owners.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("prefix", sa.String(16), nullable=False),
        _ts("created_at"),
        _ts("revoked_at", nullable=True),
    )
    op.create_index("ix_api_tokens_user_id", "api_tokens", ["user_id"])
    op.create_table(
        "tasks",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
    )
    op.create_table(
        "subtasks",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("task_id", sa.Integer, sa.ForeignKey("tasks.id", ondelete="RESTRICT"), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("metric", sa.String(64), nullable=False),
        sa.Column("metric_direction", sa.String(4), nullable=False),
        sa.Column("url", sa.String(500), nullable=False),
        sa.UniqueConstraint("task_id", "name", name="uq_subtasks_task_name"),
    )
    op.create_index("ix_subtasks_name", "subtasks", ["name"])
    op.create_table(
        "languages",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("code", sa.String(64), nullable=False, unique=True),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
    )
    op.create_table(
        "adapters",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("owner_id", sa.Integer, sa.ForeignKey("owners.id", ondelete="RESTRICT"), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("adapter_type", sa.String(16), nullable=False),
        sa.Column("task_id", sa.Integer, sa.ForeignKey("tasks.id", ondelete="RESTRICT"), nullable=True),
        sa.Column("subtask_id", sa.Integer, sa.ForeignKey("subtasks.id", ondelete="RESTRICT"), nullable=True),
        sa.Column(
            "language_id", sa.Integer, sa.ForeignKey("languages.id", ondelete="RESTRICT"), nullable=True
        ),
        sa.Column("model_type", sa.String(64), nullable=False),
        sa.Column("model_name", sa.String(300), nullable=False),
        sa.Column("model_key", sa.String(300), nullable=False),
        sa.Column("hidden_size", sa.Integer, nullable=False),
        sa.Column("num_layers", sa.Integer, nullable=True),
        sa.Column("method", sa.String(64), nullable=False),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("config_hash", sa.String(64), nullable=False),
        sa.Column("config_name", sa.String(200), nullable=False),
        sa.Column("has_head", sa.Boolean, nullable=False),
        sa.Column("head_type", sa.String(64), nullable=True),
        sa.Column("id2label", sa.JSON, nullable=True),
        sa.Column("license", sa.String(100), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("citation", sa.Text, nullable=False),
        sa.Column("metrics", sa.JSON, nullable=False),
        sa.Column("score", sa.Float, nullable=True),
        sa.Column("num_parameters", sa.Integer, nullable=False),
        sa.Column("latest_version", sa.Integer, nullable=False),
        sa.Column("downloads", sa.Integer, nullable=False),
        _ts("created_at"),
        _ts("updated_at"),
        sa.UniqueConstraint("owner_id", "name", name="uq_adapters_owner_name"),
    )
    op.create_index("ix_adapters_model", "adapters", ["model_type", "hidden_size"])
    op.create_index("ix_adapters_task_id", "adapters", ["task_id"])
    op.create_index("ix_adapters_subtask_id", "adapters", ["subtask_id"])
    op.create_index("ix_adapters_config_hash", "adapters", ["config_hash"])
    op.create_index("ix_adapters_updated_at", "adapters", ["updated_at"])
    op.create_table(
        "adapter_versions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "adapter_id", sa.Integer, sa.ForeignKey("adapters.id", ondelete="RESTRICT"), nullable=False
        ),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("storage_key", sa.String(200), nullable=False),
        sa.Column("layout", sa.String(32), nullable=False),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("config_hash", sa.String(64), nullable=False),
        sa.Column("metrics", sa.JSON, nullable=False),
        sa.Column("files", sa.JSON, nullable=False),
        sa.Column("num_parameters", sa.Integer, nullable=False),
        sa.Column("uploader_id", sa.Integer, sa.ForeignKey("owners.id", ondelete="SET NULL"), nullable=True),
        sa.Column("downloads", sa.Integer, nullable=False),
        _ts("created_at"),
        sa.UniqueConstraint("adapter_id", "number", name="uq_versions_adapter_number"),
    )
    op.create_index("ix_adapter_versions_sha256", "adapter_versions", ["sha256"])


def downgrade() -> None:
    for table in (
        "adapter_versions",
        "adapters",
        "languages",
        "subtasks",
        "tasks",
        "api_tokens",
        "memberships",
        "owners",
    ):
        op.drop_table(table)

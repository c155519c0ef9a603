"""adapter_versions.modules: the modules a version's low-rank factors target by name (``AdapterManifest.modules``
as ``ModuleShape.to_dict`` rows: path, kind, r, d_in, d_out, kernel, layer); versions published before it hold
``[]``.

Revision ID: 0002_version_modules
Revises: 0001_initial
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_version_modules"
down_revision = "0001_initial"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("adapter_versions") as batch:
        batch.add_column(sa.Column("modules", sa.JSON, nullable=False, server_default=sa.text("'[]'")))


def downgrade() -> None:
    with op.batch_alter_table("adapter_versions") as batch:
        batch.drop_column("modules")

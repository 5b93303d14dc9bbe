"""series rule attributes

Each series records the rule attributes of its representative instance (a JSON
object by DICOM keyword) so the scheduler plans from the index alone, never reading a
file while it holds a write transaction.

Series indexed before this revision get NULL. A migration knows only the database,
not the ``data_dir`` the instance paths are relative to, so it cannot read their
files; the node fills them in at start-up, right after upgrading
(``dicomnode.receive.backfill.backfill_series_attributes``, run by ``dicomnode run``,
``serve`` and ``db upgrade``), reading each file outside any transaction.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 23:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.add_column(sa.Column('attributes', sa.Text(), nullable=True))
        batch_op.add_column(
            sa.Column('attributes_sop_instance_uid', sa.String(length=64), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.drop_column('attributes_sop_instance_uid')
        batch_op.drop_column('attributes')

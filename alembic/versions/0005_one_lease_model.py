"""one lease model: deliveries get lease_owner and lease_expires_at, as jobs have

A delivery's claim was ``claimed_by`` with ``run_after`` doubling as the end of the
lease. Now it has the jobs' two lease columns with the same meaning
(``dicomnode.index.leases``): ``claimed_by`` becomes ``lease_owner``, and
``lease_expires_at`` ends the claim; ``run_after`` is only the retry backoff.

A claim held at upgrade keeps its end (``lease_expires_at = run_after``); at downgrade
a held claim's end goes back into ``run_after``.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-10 09:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import dicomnode.index.schema

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ALTER TABLE ... RENAME / ADD COLUMN on both backends (SQLite has both since
    # 3.25): no batch copy of the table, so its CHECK constraint stays as it is.
    op.alter_column('deliveries', 'claimed_by', new_column_name='lease_owner')
    op.add_column(
        'deliveries',
        sa.Column('lease_expires_at', dicomnode.index.schema.UtcDateTime(), nullable=True),
    )
    op.execute(
        "UPDATE deliveries SET lease_expires_at = run_after"
        " WHERE lease_owner IS NOT NULL AND state = 'pending'"
    )


def downgrade() -> None:
    op.execute(
        "UPDATE deliveries SET run_after = lease_expires_at"
        " WHERE lease_expires_at IS NOT NULL AND lease_expires_at > run_after"
    )
    # A claim that was released has no owner in the older schema either.
    op.execute("UPDATE deliveries SET lease_owner = NULL WHERE lease_expires_at IS NULL")
    op.drop_column('deliveries', 'lease_expires_at')
    op.alter_column('deliveries', 'lease_owner', new_column_name='claimed_by')

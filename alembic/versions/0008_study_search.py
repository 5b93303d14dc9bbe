"""study search: accession number, newest-first and per-hour indexes

The web page searches studies by accession number and lists them newest first
whatever their state, and its overview counts the instances of the last hour:
``studies.accession_number`` (filled from the first instance received; studies
indexed before this revision keep NULL), ``ix_studies_accession_number``,
``ix_studies_last_received`` and ``ix_instances_received_at``.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 01:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('studies') as batch:
        batch.add_column(sa.Column('accession_number', sa.String(length=16), nullable=True))
    op.create_index('ix_studies_accession_number', 'studies', ['accession_number'])
    op.create_index('ix_studies_last_received', 'studies', ['last_received_at'])
    op.create_index('ix_instances_received_at', 'instances', ['received_at'])


def downgrade() -> None:
    op.drop_index('ix_instances_received_at', table_name='instances')
    op.drop_index('ix_studies_last_received', table_name='studies')
    op.drop_index('ix_studies_accession_number', table_name='studies')
    with op.batch_alter_table('studies') as batch:
        batch.drop_column('accession_number')

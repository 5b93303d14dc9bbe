"""audit events

A new table, ``audit_events``: one row per security-relevant event (an association
accepted or rejected, instances stored, a study processed or deleted, an output sent
or refused, a web action, the node started or stopped), with its PS3.15 outcome, the
AE titles, the peer's address, the study's UID, our own short detail, who acted, and
when it went to the syslog collector (``forwarded_at``, NULL until then). It carries
the lease columns every claimed record has (``dicomnode.index.leases``): the forwarder
claims unforwarded events with them.

``event`` is a plain ``VARCHAR(32)``, not a native enum type on PostgreSQL, so a new
event type needs no migration (revision 0006 shows what dropping a value costs).
Nothing existing changes; the downgrade drops the table and its indexes.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-14 09:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import dicomnode.index.schema

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

#: Each index of the table and its columns, as ``AuditEventRecord`` names them.
INDEXES = {
    'ix_audit_events_event_id': ['event', 'id'],
    'ix_audit_events_study_instance_uid': ['study_instance_uid'],
    'ix_audit_events_calling_ae': ['calling_ae'],
    'ix_audit_events_forwarded_at_id': ['forwarded_at', 'id'],
    'ix_audit_events_occurred_at': ['occurred_at'],
}


def upgrade() -> None:
    op.create_table(
        'audit_events',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('occurred_at', dicomnode.index.schema.UtcDateTime(), nullable=False),
        sa.Column('event', sa.String(length=32), nullable=False),
        sa.Column('outcome', sa.Integer(), nullable=False),
        sa.Column('calling_ae', sa.String(length=16), nullable=True),
        sa.Column('called_ae', sa.String(length=16), nullable=True),
        sa.Column('peer_address', sa.String(length=64), nullable=True),
        sa.Column('study_instance_uid', sa.String(length=64), nullable=True),
        sa.Column('instances', sa.Integer(), nullable=True),
        sa.Column('sop_classes', sa.Text(), nullable=True),
        sa.Column('detail', sa.String(length=256), nullable=True),
        sa.Column('actor', sa.String(length=128), nullable=True),
        sa.Column('forwarded_at', dicomnode.index.schema.UtcDateTime(), nullable=True),
        sa.Column('lease_owner', sa.String(length=128), nullable=True),
        sa.Column('lease_expires_at', dicomnode.index.schema.UtcDateTime(), nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_events')),
    )
    for name, columns in INDEXES.items():
        op.create_index(name, 'audit_events', columns, unique=False)


def downgrade() -> None:
    for name in INDEXES:
        op.drop_index(name, table_name='audit_events')
    op.drop_table('audit_events')

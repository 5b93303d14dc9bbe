"""no dead delivery state

``DeliveryState.DEAD`` was never set: a delivery the peer refuses for good is
``failed``, and one that keeps failing with a retryable status stays ``pending`` with
its backoff. The value goes from ``delivery_state``.

On PostgreSQL ``delivery_state`` is a native enum type, and a value cannot be dropped
from one: the type is recreated without it (renamed away, created anew, the column
cast to it, the old type dropped), which also rebuilds ``ix_deliveries_state_run_after``.
On SQLite the column is a ``VARCHAR(7)`` with no CHECK of its values, so there is no
DDL to run. On both, a row in the state (there should be none) becomes ``failed``, the
state nearest in meaning, before the type loses the value. The downgrade puts the
value back at the end of the type, where revision 0002 had it; a ``failed`` delivery
stays ``failed``.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-12 09:00:00.000000
"""

from __future__ import annotations

from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

#: delivery_state's values without and with ``dead``, in revision 0002's order.
STATES = ('pending', 'sent', 'failed')
STATES_WITH_DEAD = (*STATES, 'dead')


def _recreate_delivery_state(values: tuple[str, ...]) -> None:
    """Make PostgreSQL's ``delivery_state`` hold exactly ``values`` (nothing on SQLite)."""
    if op.get_bind().dialect.name != 'postgresql':
        return
    labels = ', '.join(f"'{value}'" for value in values)
    op.execute('ALTER TYPE delivery_state RENAME TO delivery_state_old')
    op.execute(f'CREATE TYPE delivery_state AS ENUM ({labels})')
    op.execute(
        'ALTER TABLE deliveries ALTER COLUMN state TYPE delivery_state'
        ' USING state::text::delivery_state'
    )
    op.execute('DROP TYPE delivery_state_old')


def upgrade() -> None:
    op.execute("UPDATE deliveries SET state = 'failed' WHERE state = 'dead'")
    _recreate_delivery_state(STATES)


def downgrade() -> None:
    _recreate_delivery_state(STATES_WITH_DEAD)

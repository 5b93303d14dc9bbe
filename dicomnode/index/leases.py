"""One lease model for everything a process claims from the index: jobs and deliveries.

A record that workers or senders claim has the columns of
:class:`~dicomnode.index.schema.Leased`, with one meaning on every table:

- ``lease_owner``: the process that holds (or, on a finished job, last held) the claim,
  ``host:pid:role``;
- ``lease_expires_at``: when the claim ends unless renewed; NULL when nobody holds it.
  A claim whose time has passed is *lapsed*: a worker or sender that died loses its
  rows at that moment, and another one takes them (at-least-once);
- ``run_after`` (not part of the lease): the record is not claimable before it; a
  failed attempt moves it ahead by :func:`backoff_seconds`.

Claiming sets both lease columns in the statement that picks the rows; renewing (a
job's heartbeat) moves ``lease_expires_at``; finishing, failing or releasing clears
it. What happens to a lapsed claim is the table's own: a running job is failed by the
scheduler (its attempt counted), a delivery is simply claimable again.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, or_

from dicomnode.index.schema import Leased

__all__ = [
    "RELEASED",
    "backoff_seconds",
    "lease_lapsed",
    "lease_to",
    "not_leased",
    "owned_by",
]

#: Column values of a record nobody holds.
RELEASED: dict[str, object] = {"lease_owner": None, "lease_expires_at": None}


def backoff_seconds(attempts: int, base: float = 5.0, cap: float = 600.0) -> float:
    """How long to wait before attempt ``attempts + 1``: exponential with jitter.

    Uniform in ``[c/2, c]`` where ``c = min(cap, base * 2**(attempts - 1))``: each
    failure doubles the wait, and the random half keeps claimants that failed together
    (a peer that went down, a database restart) from all coming back together.

    Parameters
    ----------
    attempts
        Attempts made so far (1 after the first failure).
    base
        The wait after the first failure, before jitter.
    cap
        The longest wait, before jitter.
    """
    ceiling = min(cap, base * float(2 ** max(0, attempts - 1)))
    return ceiling / 2 + random.random() * ceiling / 2


def lease_to(owner: str, now: datetime, seconds: float) -> dict[str, object]:
    """Column values that give ``owner`` a claim from ``now`` for ``seconds``."""
    return {"lease_owner": owner, "lease_expires_at": now + timedelta(seconds=seconds)}


def owned_by(record: type[Leased], owner: str) -> ColumnElement[bool]:
    """Rows of ``record`` whose claim is ``owner``'s (lapsed or not: until another
    process takes a row, its owner may still finish it)."""
    return record.lease_owner == owner


def lease_lapsed(record: type[Leased], now: datetime) -> ColumnElement[bool]:
    """Rows of ``record`` with a claim whose time has passed."""
    return record.lease_expires_at <= now


def not_leased(record: type[Leased], now: datetime) -> ColumnElement[bool]:
    """Rows of ``record`` that nobody holds now: never claimed, released, or lapsed."""
    return or_(record.lease_expires_at.is_(None), lease_lapsed(record, now))

"""Send due deliveries: routed instances and valid outputs, to their peers.

One run claims a batch of due deliveries, makes one association per peer (at most
128 presentation contexts each, exactly the pairs being sent) and C-STOREs each file
unchanged. Each response is classified with pynetdicom's ``code_to_category``
(docs/outputs.md, "Delivery"):

* Success or Warning: sent (the warning text is kept);
* 0xA7xx (Out of Resources) or a network error (refused, rejected, aborted, timed
  out): pending again after an exponential backoff with jitter, capped at
  ``[send] max_backoff_seconds``; a peer that is down is retried for as long as it
  takes and gets everything, once, when it returns;
* anything else (0xA9xx, 0xCxxx, a context the peer does not accept, a file that is
  gone): failed at once, with the status recorded.

All deliveries of one peer that are retried in a run get the same backoff, so they
stay together and the next attempt is again one association.

Each peer batch records its audit events once it is done (``docs/operate.md``, "Audit
trail"): per study, one ``output_sent``, ``delivery_retried`` or ``output_failed``
event with the number of items and their SOP classes, never one per delivery.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from itertools import groupby
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from dicomnode.config import PeerSettings, Settings
from dicomnode.index.audit import AuditEntry, delivered_items, record_audit_events
from dicomnode.index.deliveries import (
    ClaimedDelivery,
    claim_due_deliveries,
    mark_failed,
    mark_retry,
    mark_sent,
)
from dicomnode.index.layout import DataLayout
from dicomnode.index.leases import backoff_seconds
from dicomnode.index.schema import AuditEventType, AuditOutcome, utc_now
from dicomnode.metrics import DELIVERY_ATTEMPTS
from dicomnode.send.scu import StoreOutcome, StoreResult, store_files

__all__ = ["DeliveryCounts", "default_owner", "send_due_deliveries"]

logger = logging.getLogger(__name__)

#: Peers served at once in one run, each over its own association.
MAX_PARALLEL_PEERS = 4
#: The audit event of each recorded outcome (the recorder's labels).
_AUDITED = {
    "sent": (AuditEventType.OUTPUT_SENT, AuditOutcome.SUCCESS),  # a warning too
    "retry": (AuditEventType.DELIVERY_RETRIED, AuditOutcome.MINOR_FAILURE),
    "failed": (AuditEventType.OUTPUT_FAILED, AuditOutcome.SERIOUS_FAILURE),
}


@dataclass
class DeliveryCounts:
    """What one run of :func:`send_due_deliveries` did."""

    sent: int = 0
    #: Of ``sent``: kept by the peer with a warning status.
    warnings: int = 0
    retried: int = 0
    failed: int = 0
    #: Claims lost before the outcome was recorded (lease over, or re-queued by a rerun).
    lost: int = 0

    def add(self, other: DeliveryCounts) -> None:
        """Add another run's (or peer's) counts to these."""
        self.sent += other.sent
        self.warnings += other.warnings
        self.retried += other.retried
        self.failed += other.failed
        self.lost += other.lost

    @property
    def total(self) -> int:
        """Every delivery handled."""
        return self.sent + self.retried + self.failed + self.lost


def default_owner() -> str:
    """The claim owner of this process: host name and process id."""
    return f"{socket.gethostname()}:{os.getpid()}:send"


def send_due_deliveries(
    settings: Settings, session_factory: sessionmaker[Session], owner: str | None = None
) -> DeliveryCounts:
    """Claim the due deliveries and send them, one association per peer.

    Parameters
    ----------
    settings
        The node's settings: its AE title, peers, data folder and ``[send]`` policy.
    session_factory
        Sessions on the index.
    owner
        The claim owner; :func:`default_owner` when None.

    Returns
    -------
    DeliveryCounts
        How many were sent, retried, failed (and lost) in this run.
    """
    owner = owner or default_owner()
    with session_factory() as session:
        claimed = claim_due_deliveries(session, owner, settings.send.batch_size)
    counts = DeliveryCounts()
    if not claimed:
        return counts
    batches = [list(items) for _, items in groupby(claimed, key=lambda d: d.peer)]
    peers = {p.name: p for p in settings.peers}
    lock = threading.Lock()

    def run(batch: list[ClaimedDelivery]) -> None:
        done = _send_peer_batch(settings, session_factory, owner, peers.get(batch[0].peer), batch)
        with lock:
            counts.add(done)

    if len(batches) == 1:
        run(batches[0])
    else:
        # One peer that times out must not hold up the others.
        with ThreadPoolExecutor(min(MAX_PARALLEL_PEERS, len(batches))) as pool:
            list(pool.map(run, batches))
    logger.info(
        "deliveries sent",
        extra={"action": "deliveries_sent", "peers": len(batches), "sent": counts.sent,
               "warnings": counts.warnings, "retried": counts.retried, "failed": counts.failed,
               "lost": counts.lost},
    )  # fmt: skip
    return counts


class _Recorder:
    """Records each outcome of one peer batch, committing as it goes."""

    def __init__(
        self, session: Session, owner: str, backoff: Callable[[], tuple[datetime, float]]
    ) -> None:
        self.session = session
        self.owner = owner
        self.backoff = backoff
        self.counts = DeliveryCounts()
        #: Each recorded outcome, for the audit events: delivery id, label, status.
        self.outcomes: list[tuple[int, str, int | None]] = []

    def record(self, delivery: ClaimedDelivery, result: StoreResult) -> None:
        outcome = result.outcome
        if outcome in (StoreOutcome.SENT, StoreOutcome.WARNING):
            status = 0 if result.status is None else result.status
            kept = mark_sent(self.session, delivery.id, self.owner, status, result.error)
            self._count(kept, "sent")
            if kept and outcome is StoreOutcome.WARNING:
                self.counts.warnings += 1
            label = "warning" if outcome is StoreOutcome.WARNING else "sent"
        elif outcome is StoreOutcome.RETRY:
            error = result.error or "retry"
            since, seconds = self.backoff()
            kept = mark_retry(
                self.session, delivery.id, self.owner, result.status, error, seconds, since
            )
            self._count(kept, "retried")
            label = "retry"
        else:
            error = result.error or "failed"
            kept = mark_failed(self.session, delivery.id, self.owner, result.status, error)
            self._count(kept, "failed")
            label = "failed"
            if kept:
                logger.warning(
                    "delivery failed",
                    extra={"action": "delivery_failed", "delivery_id": delivery.id,
                           "peer": delivery.peer, "sop_instance_uid": delivery.sop_instance_uid,
                           "status": result.status, "error": error},
                )  # fmt: skip
        DELIVERY_ATTEMPTS.labels(delivery.peer, label if kept else "lost").inc()
        if kept:  # a warning counts as sent (the peer kept the item)
            self.outcomes.append(
                (delivery.id, "sent" if label == "warning" else label, result.status)
            )

    def _count(self, kept: bool, field: str) -> None:
        if kept:
            setattr(self.counts, field, getattr(self.counts, field) + 1)
        else:
            self.counts.lost += 1


def _send_peer_batch(
    settings: Settings,
    session_factory: sessionmaker[Session],
    owner: str,
    peer: PeerSettings | None,
    batch: list[ClaimedDelivery],
) -> DeliveryCounts:
    """Send one peer's claimed deliveries over one association; record each outcome."""
    with session_factory() as session:
        recorder = _Recorder(session, owner, _batch_backoff(settings, batch))
        if peer is None:
            error = f"peer {batch[0].peer!r} is not configured"
            for delivery in batch:
                recorder.record(delivery, StoreResult(Path(), StoreOutcome.FAILED, error=error))
            _audit(session, settings, batch[0].peer, None, recorder.outcomes)
            return recorder.counts
        # The same file for one peer twice (two routes): sent once, recorded for both.
        by_path: dict[Path, list[ClaimedDelivery]] = {}
        layout = DataLayout(settings.data_dir)
        for delivery in batch:
            path = layout.path(delivery.path)
            if not path.is_file():
                recorder.record(
                    delivery, StoreResult(path, StoreOutcome.FAILED, error="file missing")
                )
                continue
            by_path.setdefault(path, []).append(delivery)
        logger.info(
            "sending to peer",
            extra={"action": "delivery_batch", "peer": peer.name, "ae_title": peer.ae_title,
                   "files": len(by_path)},
        )  # fmt: skip
        for result in store_files(list(by_path), peer, settings.node.ae_title):
            for delivery in by_path[result.path]:
                recorder.record(delivery, result)
        _audit(session, settings, peer.name, peer, recorder.outcomes)
        return recorder.counts


@dataclass
class _Group:
    """The deliveries of one study with one outcome, in a peer batch."""

    count: int = 0
    sop_classes: Counter[str] = field(default_factory=Counter)
    #: Why they were not sent: statuses, or "network error" / "not sent".
    reasons: set[str] = field(default_factory=set)


def _audit(
    session: Session,
    settings: Settings,
    peer_name: str,
    peer: PeerSettings | None,
    outcomes: list[tuple[int, str, int | None]],
) -> None:
    """Record a peer batch's audit events: per study and event, how many items of which
    SOP classes, and the statuses that refused or deferred them (never raises)."""
    if not outcomes:
        return
    try:
        items = delivered_items(session, [delivery_id for delivery_id, _, _ in outcomes])
    except Exception:
        session.rollback()
        logger.exception("audit events not recorded", extra={"action": "audit_record_failed"})
        return
    groups: dict[tuple[str | None, str], _Group] = {}
    for delivery_id, label, status in outcomes:
        item = items.get(delivery_id)
        group = groups.setdefault((item.study_instance_uid if item else None, label), _Group())
        group.count += 1
        if item is not None and item.sop_class_uid:
            group.sop_classes[item.sop_class_uid] += 1
        if label != "sent":
            why = "network error" if label == "retry" else "not sent"
            group.reasons.add(why if status is None else f"status 0x{status:04X}")
    entries = []
    for (study, label), group in groups.items():
        event, outcome = _AUDITED[label]
        detail = f"{group.count} {'retried' if label == 'retry' else label} to {peer_name}"
        if group.reasons:
            detail += f" ({', '.join(sorted(group.reasons))})"
        entries.append(
            AuditEntry(
                event, outcome, calling_ae=settings.node.ae_title,
                called_ae=peer.ae_title if peer else None,
                peer_address=peer.host if peer else None, study_instance_uid=study,
                instances=group.count, sop_classes=group.sop_classes, detail=detail,
                actor="send",
            )
        )  # fmt: skip
    record_audit_events(session, entries)


def _batch_backoff(
    settings: Settings, batch: list[ClaimedDelivery]
) -> Callable[[], tuple[datetime, float]]:
    """One retry time for every retry of a peer's batch, from its most-tried delivery.

    Drawn once, on first use, so the retried deliveries stay together.
    """
    drawn: list[tuple[datetime, float]] = []

    def backoff() -> tuple[datetime, float]:
        if not drawn:
            attempts = max(d.attempts for d in batch)
            seconds = backoff_seconds(
                attempts,
                base=settings.send.retry_backoff_seconds,
                cap=settings.send.max_backoff_seconds,
            )
            drawn.append((utc_now(), seconds))
        return drawn[0]

    return backoff

"""Forward the audit trail to a syslog collector: durable, retried, nothing lost.

The serving process runs :class:`AuditForwarder` as a scheduler job (every second,
``dicomnode.schedule.scheduler``) when ``[audit] syslog_host`` is set. Each run claims
the oldest unforwarded events from the index with the shared lease
(:func:`~dicomnode.index.audit.claim_unforwarded`), formats each as a DICOM audit
message in an RFC 5424 message (:mod:`dicomnode.send.audit_message`), writes them over
one TCP connection, framed by octet counting (RFC 6587), over TLS if ``syslog_tls`` (RFC
5425), and marks them forwarded only once the write succeeded. A collector that is down
leaves every event in the index: the claim is given back, the next attempt waits an
exponential backoff (:func:`~dicomnode.index.leases.backoff_seconds`, at most
:data:`MAX_BACKOFF_SECONDS`), and the outage is logged once (``audit_forward_failed``),
its end once (``audit_forward_resumed``), never once per event.

Syslog over TCP has no acknowledgement: an event counts as forwarded once all its bytes
were written to the connection. Delivery is at-least-once: a connection lost in the
middle of a batch sends the whole batch again.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import time
from collections.abc import Sequence

from sqlalchemy.orm import Session, sessionmaker

from dicomnode.config import Settings
from dicomnode.errors import ConfigError
from dicomnode.index.audit import (
    AuditEvent,
    claim_unforwarded,
    mark_forwarded,
    release_unforwarded,
)
from dicomnode.index.leases import backoff_seconds
from dicomnode.send.audit_message import AuditSource, octet_frame, syslog_message

__all__ = [
    "MAX_BACKOFF_SECONDS",
    "AuditForwarder",
    "SyslogTarget",
    "send_frames",
    "syslog_target",
]

logger = logging.getLogger(__name__)

#: The longest wait between two attempts to reach a collector that is down.
MAX_BACKOFF_SECONDS = 60.0
#: The first wait after a failed attempt; doubles per failure, with jitter.
FIRST_BACKOFF_SECONDS = 1.0
#: Events claimed and written per connection; a run writes batches while they are full.
BATCH_SIZE = 200
#: At most this many batches per run, so one run never holds the scheduler for long.
MAX_BATCHES_PER_RUN = 10
#: Seconds to connect, complete TLS and write a batch.
TIMEOUT_SECONDS = 10.0


class SyslogTarget:
    """Where to write: the collector's address and, for TLS, the client context."""

    def __init__(self, host: str, port: int, tls: ssl.SSLContext | None = None) -> None:
        self.host = host
        self.port = port
        self.tls = tls

    def __repr__(self) -> str:
        scheme = "tls" if self.tls is not None else "tcp"
        return f"SyslogTarget({scheme}://{self.host}:{self.port})"


def syslog_target(settings: Settings) -> SyslogTarget | None:
    """The collector of ``[audit]``; None when forwarding is off.

    Raises ConfigError naming the key when ``syslog_ca`` cannot be loaded.
    """
    audit = settings.audit
    if not audit.syslog_host:
        return None
    context = None
    if audit.syslog_tls:
        cafile = str(settings.resolve(audit.syslog_ca)) if audit.syslog_ca else None
        try:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"[audit] syslog_ca: cannot load {cafile}: {getattr(exc, 'strerror', None) or exc}"
            ) from exc
        context.minimum_version = ssl.TLSVersion.TLSv1_2
    return SyslogTarget(audit.syslog_host, audit.port, context)


def send_frames(target: SyslogTarget, frames: Sequence[bytes], timeout: float) -> None:
    """Write ``frames`` over one new connection to ``target``, then close it.

    Raises OSError (ssl.SSLError included) when the collector cannot be reached or
    the connection fails before every byte was written.
    """
    sock = socket.create_connection((target.host, target.port), timeout=timeout)
    try:
        if target.tls is not None:
            sock = target.tls.wrap_socket(sock, server_hostname=target.host)
        sock.sendall(b"".join(frames))
    finally:
        sock.close()


class AuditForwarder:
    """One scheduler job's state: the target, the backoff, whether an outage is on.

    Calling it runs once: nothing while it waits out a backoff, else the unforwarded
    events in batches until none is left (or :data:`MAX_BATCHES_PER_RUN`). Returns how
    many events it forwarded.
    """

    def __init__(
        self,
        settings: Settings,
        session_factory: sessionmaker[Session],
        target: SyslogTarget,
        owner: str | None = None,
    ) -> None:
        self.session_factory = session_factory
        self.target = target
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:audit"
        self.source = AuditSource(
            ae_title=settings.node.ae_title,
            hostname=socket.gethostname(),
            app_name=settings.audit.syslog_app_name,
            procid=str(os.getpid()),
        )
        #: Failed attempts in a row (0: the collector was reachable last time).
        self.failures = 0
        self.next_attempt = 0.0  # time.monotonic() before which nothing is tried

    def __call__(self) -> int:
        if time.monotonic() < self.next_attempt:
            return 0
        forwarded = 0
        for _ in range(MAX_BATCHES_PER_RUN):
            with self.session_factory() as session:
                events = claim_unforwarded(session, self.owner, BATCH_SIZE)
                if not events:
                    break
                if not self._write(session, events):
                    break
                forwarded += mark_forwarded(session, [e.id for e in events], self.owner)
            if len(events) < BATCH_SIZE:
                break
        if forwarded and self.failures:
            logger.info(
                "audit events reach the collector again",
                extra={"action": "audit_forward_resumed", "target": repr(self.target),
                       "failed_attempts": self.failures, "forwarded": forwarded},
            )  # fmt: skip
            self.failures = 0
        return forwarded

    def _write(self, session: Session, events: list[AuditEvent]) -> bool:
        """Write one batch; on failure give the claim back and back off."""
        frames = []
        for event in events:
            try:
                frames.append(octet_frame(syslog_message(event, self.source)))
            except ValueError:
                # An event type this version does not know (a newer node recorded it in
                # a shared index): kept in the index, marked so it never blocks the rest.
                logger.warning(
                    "audit event of an unknown type not forwarded",
                    extra={"action": "audit_event_unforwardable", "audit_event_id": event.id,
                           "event": event.event},
                )  # fmt: skip
        try:
            send_frames(self.target, frames, TIMEOUT_SECONDS)
        except OSError as exc:
            release_unforwarded(session, [e.id for e in events], self.owner)
            self._failed(exc, len(events))
            return False
        return True

    def _failed(self, exc: OSError, pending: int) -> None:
        self.failures += 1
        wait = backoff_seconds(self.failures, FIRST_BACKOFF_SECONDS, MAX_BACKOFF_SECONDS)
        self.next_attempt = time.monotonic() + wait
        if self.failures == 1:  # once per outage, not per attempt or event
            logger.warning(
                "audit events cannot reach the syslog collector; kept and retried",
                extra={"action": "audit_forward_failed", "target": repr(self.target),
                       "error": _reason(exc), "pending_in_batch": pending},
            )  # fmt: skip


def _reason(exc: OSError) -> str:
    """A network error in a few words (no library text that could quote data)."""
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or type(exc).__name__}"
    return exc.strerror or type(exc).__name__

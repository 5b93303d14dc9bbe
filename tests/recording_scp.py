"""A recording pynetdicom Storage SCP for tests of our SCU: a real AE in a thread.

It answers each C-STORE with the next status of a script (then Success), and records
every association, the contexts it was offered and each dataset's bytes as received.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

__all__ = ["Received", "RecordingSCP"]

_ALL_SYNTAXES = [
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.5",
]


@dataclass(frozen=True)
class Received:
    """One C-STORE request the SCP answered."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    #: The encoded dataset exactly as it came off the wire.
    data: bytes
    status: int


@dataclass
class RecordingSCP:
    """A Storage SCP on 127.0.0.1; ``port`` 0 picks a free one when started."""

    ae_title: str = "RECORDER"
    port: int = 0
    #: Statuses to answer, in order; Success once it runs out.
    script: list[int] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    #: The (SOP class, transfer syntax) pairs offered, per association.
    associations: list[set[tuple[str, str]]] = field(default_factory=list)
    _server: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def stored(self) -> list[str]:
        """SOP Instance UIDs answered with Success or a warning, in order."""
        return [r.sop_instance_uid for r in self.received if r.status < 0xA000]

    def start(self) -> RecordingSCP:
        """Listen (on ``port``, or a free port that ``port`` then holds)."""
        ae = AE(ae_title=self.ae_title)
        ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = 10
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, _ALL_SYNTAXES)
        ae.add_supported_context(Verification)
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_ACCEPTED, self._on_accepted)]
        self._server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=handlers)
        self.port = int(self._server.server_address[1])
        return self

    def stop(self) -> None:
        """Stop listening; safe to repeat."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def __enter__(self) -> RecordingSCP:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _on_accepted(self, event: Any) -> None:
        offered = {
            (str(c.abstract_syntax), str(ts))
            for c in event.assoc.requestor.requested_contexts
            for ts in c.transfer_syntax
        }
        with self._lock:
            self.associations.append(offered)

    def _on_store(self, event: Any) -> int:
        with self._lock:
            status = self.script.pop(0) if self.script else 0x0000
            context = event.context
            self.received.append(
                Received(
                    sop_instance_uid=str(event.request.AffectedSOPInstanceUID),
                    sop_class_uid=str(context.abstract_syntax),
                    transfer_syntax_uid=str(context.transfer_syntax[0]),
                    data=event.request.DataSet.getvalue(),
                    status=status,
                )
            )
        return status

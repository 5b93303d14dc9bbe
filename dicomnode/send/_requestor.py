"""Keep a requestor's responses for the thread that waits for them (pynetdicom 3.0.4).

This is the one change this project makes inside pynetdicom on the sending side; the
receiving side's live in :mod:`dicomnode.receive._patches` (a stage may not import
another stage, so it cannot sit there). It is per association, not process-wide.

pynetdicom's requestor runs a reactor thread that also takes DIMSE messages off the
association's queue, to serve requests a peer sends back (the C-STORE sub-operations
of a C-GET). ``send_c_store`` pauses it with an Event and an ``_is_paused`` flag, but
the thread sets the flag *before* it waits on the Event: with the Event still set
from the previous request, the sender reads "paused", sends its request, and the
reactor, descheduled just after its wait, wakes to find the peer's response on the
queue and takes it as if it were a request. The sender then waits its whole DIMSE
timeout (30 s) for a response that already came, and aborts. On a loaded machine
this happened about once per 3,000 C-STOREs (``bench/stress_ingest.py``; the node's
``association_trace`` showed every request answered, the last one 30 s before the
sender's A-ABORT). :func:`guard_responses` lets the reactor take requests only;
responses stay for ``get_msg(block=True)``, the sender's own call.
"""

from __future__ import annotations

from typing import Any

import pynetdicom

__all__ = ["WRITTEN_FOR", "guard_responses", "is_response"]

#: The pynetdicom version whose requestor reactor this was written against.
WRITTEN_FOR = "3.0.4"


def is_response(msg: object) -> bool:
    """Whether a DIMSE primitive is a response (it answers a Message ID)."""
    return getattr(msg, "MessageIDBeingRespondedTo", None) is not None


def guard_responses(assoc: Any) -> None:
    """Make ``assoc``'s reactor thread leave responses on the message queue.

    Raises
    ------
    RuntimeError
        On a pynetdicom version other than :data:`WRITTEN_FOR`: its reactor may
        differ, and a silent mismatch could lose messages.
    """
    if pynetdicom.__version__ != WRITTEN_FOR:
        raise RuntimeError(
            f"dicomnode's requestor guard is written for pynetdicom {WRITTEN_FOR}, "
            f"not {pynetdicom.__version__}"
        )
    dimse = assoc.dimse
    messages = dimse.msg_queue
    get_msg = dimse.get_msg

    def get_msg_guarded(block: bool = False) -> Any:
        if block:  # the sender waiting for its response
            return get_msg(block=True)
        # The reactor's non-blocking look: under the queue's own lock, so the head we
        # inspect is the item we take.
        with messages.not_empty:
            if not messages._qsize():
                return None, None
            _, msg = messages.queue[0]
            if is_response(msg):
                return None, None
            item = messages._get()
            messages.not_full.notify()
            return item

    dimse.get_msg = get_msg_guarded

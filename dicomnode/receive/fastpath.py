"""Faster socket reads for pynetdicom's association sockets (the receiving process).

pynetdicom 3.0.4 reads every PDU with a loop of 4,096-byte ``recv()`` calls, each
allocating a bytes object that is then copied into a growing bytearray: for a
256 KiB PDU that is 64 system calls and as many copies, in Python, under the GIL.
:func:`recv_exact` reads into one pre-sized buffer with ``recv_into`` (a handful of
system calls, no intermediate copies) and keeps the original contract: return
``nr_bytes`` bytes, or what arrived before the peer closed the connection.

Second, pynetdicom's DUL thread polls: it asks whether data is ready with a zero
timeout and, when not, sleeps ``_run_loop_delay`` (1 ms) before asking again, so every
PDU that is not already complete in the socket buffer waits up to a millisecond. A
storescu sending 16 KiB PDUs hits that dozens of times per instance. :func:`wait_ready`
waits in ``select`` itself for up to that delay and the DUL's own sleep is set to zero
for our associations: data is handled as soon as it arrives, and an idle association
still wakes only about a thousand times a second, as before.

Both replace methods of ``AssociationSocket`` process-wide (only the serving process
installs them); the gain is measured in ``docs/benchmarks.md`` and every receive test
runs through them.
"""

from __future__ import annotations

import select
import ssl
from typing import Any

from pynetdicom.transport import AssociationSocket

__all__ = ["POLL_SECONDS", "install_fast_recv", "recv_exact", "tune_association", "wait_ready"]

#: The longest the DUL thread waits for data before checking its other work.
POLL_SECONDS = 0.001


def recv_exact(self: Any, nr_bytes: int) -> bytearray:
    """Read ``nr_bytes`` from the association socket (fewer if it closes first)."""
    buffer = bytearray(nr_bytes)
    view = memoryview(buffer)
    nr_read = 0
    while nr_read < nr_bytes:
        count = self.socket.recv_into(view[nr_read:], nr_bytes - nr_read)
        if not count:  # the peer closed the connection: return what we have
            del view
            return buffer[:nr_read]
        nr_read += count
    return buffer


def wait_ready(self: Any) -> bool:
    """Whether data can be read, waiting up to :data:`POLL_SECONDS` for it."""
    sock = self.socket
    if sock is None or self._is_connected is False:
        return False
    # An SSLSocket may hold decrypted data that select() cannot see.
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    try:
        ready, _, _ = select.select([sock], [], [], POLL_SECONDS)
    except (OSError, ValueError):
        self.event_queue.put("Evt17")  # Evt17: transport connection closed
        return False
    return bool(ready)


def install_fast_recv() -> None:
    """Use :func:`recv_exact` and :func:`wait_ready` for pynetdicom association sockets.

    Call :func:`tune_association` on each association as it is established.
    """
    AssociationSocket.recv = recv_exact  # type: ignore[method-assign]
    AssociationSocket.ready = property(wait_ready)  # type: ignore[method-assign,assignment]


def tune_association(assoc: Any) -> None:
    """The DUL no longer needs to sleep between polls: :func:`wait_ready` waits."""
    assoc.dul._run_loop_delay = 0

"""Faster socket reads and thread hand-offs for pynetdicom associations (receiving side).

pynetdicom 3.0.4 moves every C-STORE through two polling threads, and each poll
costs latency that a sender waiting for its response pays once per instance:

* **Reading.** It reads every PDU with a loop of 4,096-byte ``recv()`` calls, each
  allocating a bytes object that is then copied into a growing bytearray: for a
  256 KiB PDU that is 64 system calls and as many copies, in Python, under the GIL.
  :func:`recv_exact` reads into one pre-sized buffer with ``recv_into`` and keeps
  the original contract: ``nr_bytes`` bytes, or what arrived before the peer closed.
* **The DUL thread** asks whether data is ready with a zero timeout and, when not,
  sleeps ``_run_loop_delay`` (1 ms) before asking again. :func:`wait_ready` waits in
  ``select`` instead, and the DUL's own sleep is set to zero for our associations.
  The same ``select`` also watches a wake-up socket that :func:`tune_association`
  signals whenever the association thread queues a primitive (a C-STORE response),
  so the response leaves at once instead of after the rest of a poll.
* **The association thread** sleeps 1 ms, then looks for a decoded message without
  waiting. :func:`tune_association` makes that look wait on the message queue (up
  to :data:`MESSAGE_WAIT_SECONDS`), so a request is served the moment the DUL thread
  decodes it; the 1 ms sleep now falls after serving, while the sender is still
  transmitting the next instance. Release and abort are still noticed within one
  wait.
* **Responses.** pynetdicom builds each C-STORE response as a pydicom dataset and
  encodes it twice (once to learn its length): a quarter of the serving process's
  CPU time per instance here. A plain success or warning status (no Error Comment,
  no Offending Element) is encoded directly by :func:`store_response_bytes` (the
  same bytes, tested) and queued as one P-DATA; anything else, or an association
  with an EVT_DIMSE_SENT handler bound, goes through pynetdicom's own path.

Two process-wide settings of the serving process take CPU off every message:
pynetdicom's "standard" event handlers, which format a debug description of every
DIMSE message and PDU whether or not debug logging is on, are not bound
(``LOG_HANDLER_LEVEL = "none"``; our handlers log what matters), and pydicom does
not run its regular-expression check on each value it decodes
(``reading_validation_mode = IGNORE``): command sets and file meta are pynetdicom's
own, and received data sets are checked by :mod:`dicomnode.receive.inspect`.

All of these replace pynetdicom behaviour only for the serving process (the methods of
``AssociationSocket``) and for each association tuned as it is established; the gain
is measured in ``docs/benchmarks.md`` and every receive test runs through them.
"""

from __future__ import annotations

import queue
import select
import socket
import ssl
import struct
from typing import Any

from pydicom import config as pydicom_config
from pynetdicom import _config as pynetdicom_config
from pynetdicom import evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import AssociationSocket

__all__ = [
    "MESSAGE_WAIT_SECONDS",
    "POLL_SECONDS",
    "install_fast_recv",
    "recv_exact",
    "run_reactor_then_close_wake",
    "store_response_bytes",
    "tune_association",
    "wait_ready",
]

#: The longest the DUL thread waits for data before checking its other work.
POLL_SECONDS = 0.001
#: The longest the association thread waits for a message before its other checks.
MESSAGE_WAIT_SECONDS = 0.01
_WAKE_ATTR = "dicomnode_wake"
_PAIR_ATTR = "dicomnode_wake_pair"
_original_run_reactor = DULServiceProvider.run_reactor


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
    """Whether data can be read, waiting up to :data:`POLL_SECONDS` for it.

    Returns early (False) when the association's wake-up socket is signalled: the
    DUL thread then goes on to send what was queued.
    """
    sock = self.socket
    if sock is None or self._is_connected is False:
        return False
    # An SSLSocket may hold decrypted data that select() cannot see.
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    wake: socket.socket | None = getattr(self, _WAKE_ATTR, None)
    watched = [sock] if wake is None or wake.fileno() < 0 else [sock, wake]
    try:
        ready, _, _ = select.select(watched, [], [], POLL_SECONDS)
    except (OSError, ValueError):
        self.event_queue.put("Evt17")  # Evt17: transport connection closed
        return False
    if wake is not None and wake in ready:
        _drain(wake)
    return sock in ready


def _drain(wake: socket.socket) -> None:
    try:
        while wake.recv(4096):
            pass
    except OSError:  # BlockingIOError: drained; or closed meanwhile
        pass


def install_fast_recv() -> None:
    """Use :func:`recv_exact` and :func:`wait_ready` for pynetdicom association sockets,
    without pynetdicom's logging handlers or pydicom's value checks (see above).

    Call this before the AE starts serving, and :func:`tune_association` on each
    association as it is established.
    """
    AssociationSocket.recv = recv_exact  # type: ignore[method-assign]
    AssociationSocket.ready = property(wait_ready)  # type: ignore[method-assign,assignment]
    DULServiceProvider.run_reactor = run_reactor_then_close_wake  # type: ignore[method-assign]
    pynetdicom_config.LOG_HANDLER_LEVEL = "none"
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE


def tune_association(assoc: Any) -> None:
    """Hand messages between the association's two threads without polling delays."""
    dul = assoc.dul
    dul._run_loop_delay = 0  # wait_ready waits instead

    # The association thread queues primitives for the DUL thread to send: each put
    # also signals the wake-up socket the DUL thread's select() watches.
    reader, writer = socket.socketpair()
    reader.setblocking(False)
    writer.setblocking(False)
    provider_queue = dul.to_provider_queue
    put = provider_queue.put

    def put_and_wake(item: Any, block: bool = True, timeout: float | None = None) -> None:
        put(item, block, timeout)
        try:
            writer.send(b"\0")
        except OSError:  # buffer full (a wake-up is pending anyway) or closed
            pass

    provider_queue.put = put_and_wake
    setattr(dul.socket, _WAKE_ATTR, reader)
    setattr(dul, _PAIR_ATTR, (reader, writer))  # closed when the DUL thread ends

    dimse = assoc.dimse
    get_msg = dimse.get_msg
    messages = dimse.msg_queue

    def get_msg_waiting(block: bool = False) -> Any:
        if block:
            return get_msg(block=True)
        try:
            return messages.get(timeout=MESSAGE_WAIT_SECONDS)
        except queue.Empty:
            return None, None

    dimse.get_msg = get_msg_waiting

    send_msg = dimse.send_msg

    def send_msg_direct(primitive: Any, context_id: int) -> None:
        if _plain_store_response(primitive) and not assoc.get_handlers(evt.EVT_DIMSE_SENT):
            try:
                encoded = store_response_bytes(
                    primitive.MessageIDBeingRespondedTo,
                    primitive.AffectedSOPClassUID,
                    primitive.AffectedSOPInstanceUID,
                    primitive.Status,
                )
            except (UnicodeEncodeError, struct.error):
                encoded = b""
            max_pdu = dimse.maximum_pdu_size
            if encoded and (not max_pdu or len(encoded) + 6 <= max_pdu):
                pdata = P_DATA()
                # 0x03: the last (and only) fragment of a command set
                pdata.presentation_data_value_list.append((context_id, b"\x03" + encoded))
                dimse.dul.send_pdu(pdata)
                return
        send_msg(primitive, context_id)

    dimse.send_msg = send_msg_direct


def _implicit(element: int, value: bytes) -> bytes:
    """One implicit VR little endian element of group 0000."""
    return struct.pack("<HHI", 0x0000, element, len(value)) + value


def _uid_value(uid: str) -> bytes:
    value = str(uid).encode("ascii")
    return value + b"\x00" if len(value) % 2 else value


def store_response_bytes(
    message_id: int, sop_class_uid: str, sop_instance_uid: str, status: int
) -> bytes:
    """The encoded command set of a C-STORE-RSP without optional elements.

    The same bytes as pynetdicom's ``C_STORE_RSP`` encodes for these values. Raises
    UnicodeEncodeError for a UID that is not ASCII (the caller falls back).
    """
    elements = b"".join(
        (
            _implicit(0x0002, _uid_value(sop_class_uid)),
            _implicit(0x0100, struct.pack("<H", 0x8001)),  # CommandField: C-STORE-RSP
            _implicit(0x0120, struct.pack("<H", message_id)),
            _implicit(0x0800, struct.pack("<H", 0x0101)),  # no data set
            _implicit(0x0900, struct.pack("<H", status)),
            _implicit(0x1000, _uid_value(sop_instance_uid)),
        )
    )
    return _implicit(0x0000, struct.pack("<I", len(elements))) + elements


def _plain_store_response(primitive: Any) -> bool:
    return (
        isinstance(primitive, C_STORE)
        and primitive.MessageIDBeingRespondedTo is not None
        and isinstance(primitive.Status, int)
        and primitive.ErrorComment is None
        and primitive.OffendingElement is None
        and primitive.AffectedSOPClassUID is not None
        and primitive.AffectedSOPInstanceUID is not None
    )


def run_reactor_then_close_wake(self: Any) -> None:
    """The DUL thread's loop; then close the association's wake-up sockets, if any.

    Only the DUL thread selects on the wake-up socket, so once its loop has ended
    they can go; a later wake-up from the association thread finds them closed and
    is dropped.
    """
    try:
        _original_run_reactor(self)
    finally:
        pair = getattr(self, _PAIR_ATTR, None)
        if pair is not None:
            _close_pair(*pair)


def _close_pair(reader: socket.socket, writer: socket.socket) -> None:
    reader.close()
    writer.close()

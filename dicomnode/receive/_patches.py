"""Every change this project makes inside pynetdicom and pydicom, in one place.

pynetdicom 3.0.4 is fast enough to serve and safe enough to expose only with these
changes; each one is written against the versions in :data:`WRITTEN_FOR` and
:func:`install` refuses to run on any other (a silent mismatch would leave a
receiver open to the faults below, or wrong on the wire). :data:`PATCHES` lists each
patch: what it replaces, why, and the test that proves it.

**Bounded, deadlined reads** (:func:`read_pdu_bounded` replaces
``DULServiceProvider._read_pdu_data``). pynetdicom reads a PDU's 6-byte header,
then allocates and reads whatever length the header claims, on a socket without a
timeout: one header claiming 4 GiB asks for 4 GiB, and a peer that sends half a PDU
and stops holds its thread and association slot forever (its ARTIM and idle timers
only run between reads). Here the claimed length is checked against the largest
PDU we advertised before a byte of the body is read, the body is read into a buffer
of at most that size, and the whole PDU must arrive within the association's
network timeout; anything else is answered with an A-ABORT, logged, and the
connection closed. The first PDU of an accepted connection (the A-ASSOCIATE-RQ) is
read the same way, with its own deadline, by the server before pynetdicom sees the
connection (:mod:`dicomnode.receive.scp`), and handed over with :func:`prefetch`.

**Fewer polls and copies** (measured in ``docs/benchmarks.md``):

* the DUL thread waits in ``select`` (:func:`wait_ready`, replacing
  ``AssociationSocket.ready``) on the socket and on a per-association wake-up
  socket that :func:`tune_association` signals whenever the association thread
  queues a primitive (a C-STORE response), instead of polling every 1 ms;
* the association thread waits on its message queue instead of sleeping 1 ms and
  polling (:func:`tune_association`);
* a plain C-STORE response is encoded directly (:func:`store_response_bytes`, the
  same bytes as pynetdicom's encoder), and each spool file's File Meta Information
  too (:func:`dicomnode.receive.spool.file_meta_bytes`);
* pynetdicom's "standard" event handlers, which format a debug description of
  every message whether or not debug logging is on, are not bound, and pydicom does
  not run its value regular expressions (received data is checked by
  :mod:`dicomnode.receive.inspect`).

**Durable spooling**: pynetdicom streams each incoming dataset into a
``NamedTemporaryFile``; ours (:func:`spool_factory`) is a
:class:`~dicomnode.receive.spool.SpoolFile` in ``data_dir/spool`` that hashes what
it receives, never raises on write, and is closed and removed when its association
ends in any way before the handler has taken it (:func:`run_reactor_then_clean_up`).
"""

from __future__ import annotations

import logging
import queue
import select
import socket
import ssl
import struct
import threading
import time
import weakref
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any

from pydicom import config as pydicom_config
from pynetdicom import _config as pynetdicom_config
from pynetdicom import dimse_messages, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.fsm import StateMachine
from pynetdicom.pdu_primitives import A_P_ABORT, P_DATA
from pynetdicom.transport import AssociationSocket

from dicomnode.errors import ConfigError
from dicomnode.receive import spool
from dicomnode.receive.inspect import is_valid_uid
from dicomnode.sockets import close_sockets_always

__all__ = [
    "MAX_ASSOCIATE_RQ_BYTES",
    "MESSAGE_WAIT_SECONDS",
    "PATCHES",
    "POLL_SECONDS",
    "WRITTEN_FOR",
    "Patch",
    "Trace",
    "abort_pdu",
    "check_versions",
    "install",
    "prefetch",
    "read_pdu_bounded",
    "recv_exact",
    "reject_pdu",
    "run_reactor_then_clean_up",
    "spool_factory",
    "store_response_bytes",
    "trace_of",
    "tune_association",
    "wait_ready",
]

logger = logging.getLogger(__name__)

#: The library versions these patches were written and tested for.
WRITTEN_FOR = {"pynetdicom": "3.0.4", "pydicom": "3.0.2"}
#: The longest the DUL thread waits for data before checking its other work.
POLL_SECONDS = 0.001
#: The longest the association thread waits for a message before its other checks.
MESSAGE_WAIT_SECONDS = 0.01
#: The largest A-ASSOCIATE-RQ/AC/RJ we read; real ones are a few KiB (PS3.8 9.3.2).
MAX_ASSOCIATE_RQ_BYTES = 65536
#: Slack over the advertised maximum PDU length: some peers count the PDV item
#: headers (4-byte length, context ID, control byte) outside it.
PDV_HEADER_SLACK = 16
#: The bound on a PDU where we advertised no maximum (0: "unlimited").
UNLIMITED_PDU_BYTES = 4 * 1024 * 1024
#: Used where an association has no network timeout of its own.
DEFAULT_NETWORK_TIMEOUT = 30.0
#: Known PDU types (PS3.8 9.3.1): A-ASSOCIATE-RQ/AC/RJ, P-DATA-TF,
#: A-RELEASE-RQ/RP, A-ABORT.
PDU_TYPES = frozenset(range(0x01, 0x08))

# A-ABORT sources and reasons (PS3.8 Table 9-26).
SOURCE_PROVIDER = 0x02
REASON_NOT_SPECIFIED = 0x00
REASON_UNRECOGNISED_PDU = 0x01
REASON_UNEXPECTED_PDU = 0x02
REASON_INVALID_PARAMETER = 0x06

_WAKE_ATTR = "dicomnode_wake"
_PAIR_ATTR = "dicomnode_wake_pair"
_SPOOLS_ATTR = "dicomnode_spools"
_original_run_reactor = DULServiceProvider.run_reactor
_original_do_action = StateMachine.do_action
_original_factory = dimse_messages.NamedTemporaryFile  # type: ignore[attr-defined]
_install_lock = threading.Lock()
# A-ASSOCIATE-RQ PDUs the server read before pynetdicom took the connection.
_prefetched: weakref.WeakKeyDictionary[socket.socket, bytes] = weakref.WeakKeyDictionary()


@dataclass
class Trace:
    """What went through one association, for the record of an association that ends
    badly (``association_trace``): which hand-off stopped when a sender timed out.

    Counts PDUs read by the DUL thread, DIMSE messages decoded (DUL thread) and
    taken (association thread), primitives the association thread queued for
    sending, and PDUs sent (DUL thread), with the time of the last of each.
    """

    pdus_in: int = 0
    last_pdu_type: int = 0
    messages_decoded: int = 0
    messages_taken: int = 0
    primitives_queued: int = 0
    pdus_out: int = 0
    #: time.monotonic() of the last event of each kind.
    at: dict[str, float] = field(default_factory=dict)

    def mark(self, what: str) -> None:
        """Note that ``what`` just happened."""
        self.at[what] = time.monotonic()

    def summary(self) -> dict[str, Any]:
        """Counts, and seconds since the last of each event, for a log record."""
        now = time.monotonic()
        ages = {f"{what}_ago_s": round(now - when, 3) for what, when in self.at.items()}
        return {
            "pdus_in": self.pdus_in, "last_pdu_type": self.last_pdu_type,
            "messages_decoded": self.messages_decoded, "messages_taken": self.messages_taken,
            "primitives_queued": self.primitives_queued, "pdus_out": self.pdus_out, **ages,
        }  # fmt: skip


_TRACE_ATTR = "dicomnode_trace"


def trace_of(dul: Any) -> Trace:
    """The :class:`Trace` of the association ``dul`` serves (made on first use)."""
    trace: Trace | None = getattr(dul, _TRACE_ATTR, None)
    if trace is None:
        trace = Trace()
        setattr(dul, _TRACE_ATTR, trace)
    return trace


@dataclass(frozen=True)
class Patch:
    """One change inside a library: where, what it replaces, why, which test proves it."""

    target: str
    replaces: str
    why: str
    test: str


PATCHES: tuple[Patch, ...] = (
    Patch(
        "pynetdicom.transport.AssociationSocket._shutdown_socket (dicomnode.sockets)",
        "shutdown() then close() in one try: close() skipped when shutdown() raises",
        "a reset or never-connected socket leaked its file descriptor",
        "tests/unit/test_sockets.py",
    ),
    Patch(
        "pynetdicom.dul.DULServiceProvider._read_pdu_data",
        "read header, allocate the claimed length, block until it arrives",
        "never allocate what a peer claims; abort a PDU that stalls",
        "tests/integration/test_hostile_peers.py",
    ),
    Patch(
        "pynetdicom.fsm.StateMachine.do_action",
        "an exception in a state-machine action kills the DUL thread and the "
        "association waits for its ACSE timeout (30 s) holding its slot",
        "A-ABORT the peer and end the association at once",
        "tests/fuzz/test_corpus.py",
    ),
    Patch(
        "pynetdicom.transport.AssociationSocket.ready",
        "select() with a zero timeout, then the DUL sleeps 1 ms",
        "wait in select on the socket and a wake-up socket; see prefetched PDUs",
        "tests/unit/test_patches.py::test_wait_ready_*",
    ),
    Patch(
        "pynetdicom.dul.DULServiceProvider.run_reactor",
        "the DUL loop",
        "the same loop, then close wake-up sockets and discard untaken spool files",
        "tests/integration/test_hostile_peers.py::test_cut_stores_leave_no_spool_files_or_fds",
    ),
    Patch(
        "pynetdicom._config.LOG_HANDLER_LEVEL",
        '"standard": debug text formatted for every message',
        "CPU per message; our handlers log what matters",
        "tests/integration/test_receive.py",
    ),
    Patch(
        "pydicom.config.settings.reading_validation_mode",
        "WARN: a regular expression per decoded value",
        "CPU per element; inspect.py checks received data",
        "tests/unit/test_inspect.py",
    ),
    Patch(
        'pynetdicom._config.VALIDATORS["UI"]',
        "validate_ui: a UID over 64 characters raises while decoding, association aborted",
        "answer 0xC000 from our handler instead of aborting",
        "tests/integration/test_receive_limits.py::test_invalid_affected_sop_instance_uid_gets_c000_at_once",
    ),
    Patch(
        "Association._serve_request (per association)",
        "a C-STORE-RQ missing a required element is dropped unanswered",
        "the sender would wait for its DIMSE timeout; answer 0xC000 at once",
        "tests/integration/test_receive_limits.py::test_empty_affected_sop_instance_uid_gets_a_failure_at_once",
    ),
    Patch(
        "pynetdicom._config.STORE_RECV_CHUNKED_DATASET",
        "False: a whole dataset in memory",
        "memory must not grow with instance size",
        "tests/integration/test_receive.py",
    ),
    Patch(
        "pynetdicom.dimse_messages.NamedTemporaryFile",
        "tempfile.NamedTemporaryFile in the system temp folder",
        "spool on the store's filesystem (atomic rename), hash while writing, "
        "no exception in the DUL thread on a full disk",
        "tests/integration/test_durability.py",
    ),
    Patch(
        "pynetdicom.dimse_messages.create_file_meta / write_file_meta_info",
        "a pydicom Dataset encoded element by element",
        "a third of the per-instance CPU; same bytes",
        "tests/unit/test_file_meta.py",
    ),
    Patch(
        "Association.dul.to_provider_queue.put (per association)",
        "queue.Queue.put",
        "wake the DUL thread the moment a response is queued",
        "tests/integration/test_receive.py",
    ),
    Patch(
        "Association.dimse.get_msg (per association)",
        "a non-blocking look after a 1 ms sleep",
        "serve a request the moment it is decoded",
        "tests/integration/test_receive.py",
    ),
    Patch(
        "Association.dimse.send_msg (per association)",
        "a C-STORE-RSP Dataset encoded twice",
        "encode a plain response directly; same bytes",
        "tests/unit/test_patches.py::test_store_response_bytes_equal_what_pynetdicom_encodes",
    ),
)


def check_versions() -> None:
    """Raise ConfigError (one line) unless the installed libraries are the patched ones."""
    for package, wanted in WRITTEN_FOR.items():
        installed = version(package)
        if installed != wanted:
            raise ConfigError(
                f"{package} {installed} is installed, but the receiver's changes to it "
                f"(dicomnode/receive/_patches.py) were written for {wanted}: "
                f"install {package}=={wanted}"
            )


def install() -> None:
    """Apply the process-wide patches (idempotent); refuses on other library versions.

    Call before the AE starts serving, and :func:`tune_association` on each
    association as it is established.
    """
    check_versions()
    close_sockets_always()
    with _install_lock:
        DULServiceProvider._read_pdu_data = read_pdu_bounded  # type: ignore[method-assign]
        DULServiceProvider.run_reactor = run_reactor_then_clean_up  # type: ignore[method-assign]
        StateMachine.do_action = do_action_or_abort  # type: ignore[method-assign]
        AssociationSocket.ready = property(wait_ready)  # type: ignore[method-assign,assignment]
        pynetdicom_config.LOG_HANDLER_LEVEL = "none"
        pynetdicom_config.VALIDATORS["UI"] = accept_any_uid
        pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
        pynetdicom_config.STORE_RECV_CHUNKED_DATASET = True
        dimse_messages.NamedTemporaryFile = spool_factory  # type: ignore[attr-defined]
        dimse_messages.create_file_meta = _create_file_meta  # type: ignore[attr-defined,assignment]
        dimse_messages.write_file_meta_info = _write_file_meta_info  # type: ignore[attr-defined,assignment]


def accept_any_uid(value: Any) -> tuple[bool, str]:
    """pynetdicom's UI validator for serving processes: accept, so a handler can refuse.

    pynetdicom's own validator raises while decoding a command whose UID is over 64
    characters and aborts the association; the C-STORE handler checks every UID
    (:func:`dicomnode.receive.inspect.is_valid_uid`) and answers 0xC000 instead.
    """
    return True, ""


# -- PDUs we write ourselves ------------------------------------------------------


def abort_pdu(source: int = SOURCE_PROVIDER, reason: int = REASON_NOT_SPECIFIED) -> bytes:
    """An A-ABORT PDU (PS3.8 9.3.8)."""
    return struct.pack(">BBLBBBB", 0x07, 0, 4, 0, 0, source, reason)


def reject_pdu(result: int, source: int, reason: int) -> bytes:
    """An A-ASSOCIATE-RJ PDU (PS3.8 9.3.4)."""
    return struct.pack(">BBLBBBB", 0x03, 0, 4, 0, result, source, reason)


def prefetch(sock: socket.socket, pdu: bytes) -> None:
    """Hand a PDU read from ``sock`` before pynetdicom took it to the DUL's first read."""
    _prefetched[sock] = pdu


# -- Reading ----------------------------------------------------------------------


def recv_exact(sock: socket.socket, nr_bytes: int, deadline: float) -> bytearray:
    """Read ``nr_bytes`` from ``sock`` by ``deadline`` (``time.monotonic``).

    Returns fewer bytes if the peer closes first; raises TimeoutError when the
    deadline passes. The buffer is allocated once, so the caller bounds the memory
    by bounding ``nr_bytes``.
    """
    buffer = bytearray(nr_bytes)
    view = memoryview(buffer)
    nr_read = 0
    try:
        while nr_read < nr_bytes:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{nr_read} of {nr_bytes} bytes before the deadline")
            sock.settimeout(remaining)
            count = sock.recv_into(view[nr_read:], nr_bytes - nr_read)
            if not count:  # the peer closed the connection: return what we have
                break
            nr_read += count
    finally:
        del view
    if nr_read < nr_bytes:
        del buffer[nr_read:]
    return buffer


def pdu_limit(assoc: Any) -> int:
    """The longest PDU body we accept on ``assoc``: what we advertised, plus slack."""
    local = assoc.acceptor if assoc.is_acceptor else assoc.requestor
    advertised = int(local.maximum_length or 0)
    body = advertised + PDV_HEADER_SLACK if advertised else UNLIMITED_PDU_BYTES
    return max(body, MAX_ASSOCIATE_RQ_BYTES)


def _peer_of(assoc: Any) -> str:
    remote = assoc.requestor if assoc.is_acceptor else assoc.acceptor
    return f"{remote.address}:{remote.port}"


def read_pdu_bounded(self: Any) -> None:
    """Read one PDU from the peer (replaces ``DULServiceProvider._read_pdu_data``).

    Emits the same events as the original (Evt3-Evt19) for well-formed PDUs. A PDU
    of unknown type or longer than :func:`pdu_limit`, or one that does not arrive
    whole within the network timeout, is answered with an A-ABORT and the
    connection is closed (Evt17) without reading the rest.
    """
    assoc_socket = self.socket
    sock = assoc_socket.socket if assoc_socket is not None else None
    if sock is None:
        self.event_queue.put("Evt17")
        return
    prefetched = _prefetched.pop(sock, None)
    if prefetched is not None:
        _decode_and_queue(self, bytearray(prefetched))
        return
    timeout = self.assoc.network_timeout or DEFAULT_NETWORK_TIMEOUT
    deadline = time.monotonic() + timeout
    try:
        header = recv_exact(sock, 6, deadline)
        if len(header) < 6:
            self.event_queue.put("Evt17")  # closed, or closed mid-header
            return
        pdu_type, _, pdu_length = struct.unpack(">BBL", header)
        if pdu_type not in PDU_TYPES:
            _abort(self, REASON_UNRECOGNISED_PDU, "unknown PDU type", pdu_type=pdu_type)
            return
        limit = pdu_limit(self.assoc)
        if pdu_length > limit:
            _abort(self, REASON_INVALID_PARAMETER, "PDU too long", length=pdu_length, limit=limit)
            return
        body = recv_exact(sock, pdu_length, deadline)
    except TimeoutError:
        _abort(self, REASON_NOT_SPECIFIED, "peer stalled mid-PDU", timeout=timeout)
        return
    except OSError:
        self.event_queue.put("Evt17")  # connection reset
        return
    if len(body) != pdu_length:
        self.event_queue.put("Evt17")  # closed before the whole PDU arrived
        return
    trace = trace_of(self)
    trace.pdus_in += 1
    trace.last_pdu_type = pdu_type
    trace.mark("pdu_in")
    _decode_and_queue(self, header + body)


def _decode_and_queue(dul: Any, bytestream: bytearray) -> None:
    try:
        pdu, event = dul._decode_pdu(bytestream)
    except Exception:  # a malformed PDU: Evt19, as pynetdicom does
        dul.event_queue.put("Evt19")
        return
    dul.event_queue.put(event)
    dul._recv_pdu.put(pdu)


def _abort(dul: Any, reason: int, what: str, **details: Any) -> None:
    """A-ABORT the association (best effort) and close its connection (Evt17)."""
    logger.warning(
        f"association aborted: {what}",
        extra={"action": "pdu_refused", "reason": what, "peer": _peer_of(dul.assoc), **details},
    )
    assoc_socket = dul.socket
    sock = assoc_socket.socket
    try:
        sock.settimeout(1.0)
        sock.sendall(abort_pdu(SOURCE_PROVIDER, reason))
    except OSError:
        pass
    assoc_socket.close()  # queues Evt17: pynetdicom ends the association as aborted


def do_action_or_abort(self: Any, event: str) -> None:
    """Run a state-machine action; if the peer's PDU makes it raise, abort at once.

    pynetdicom lets the exception end the DUL thread: an A-ASSOCIATE-RQ with an even
    presentation context ID (it raises building the primitive), an A-ABORT with an
    undefined source, a release request arriving with the association request, a
    command set with a bad group length. The peer then gets no answer and the
    association holds its slot until the ACSE timeout; 160 such requests of 219
    bytes locked every peer out. Here the peer gets an A-ABORT, an established
    association's thread an A-P-ABORT indication (so it ends as aborted, recorded as
    such), a waiting acceptor thread its end, and the connection is closed.
    """
    state = self.current_state
    try:
        _original_do_action(self, event)  # kills the DUL thread before it re-raises
    except Exception as exc:
        dul = self.dul
        logger.warning(
            "association aborted: the peer's PDU broke the protocol",
            extra={
                "action": "pdu_refused",
                "reason": type(exc).__name__,
                "fsm_event": event,
                "fsm_state": state,
                "peer": _peer_of(dul.assoc),
            },
        )
        if dul.assoc.is_established:
            indication = A_P_ABORT()
            indication.provider_reason = REASON_UNEXPECTED_PDU
            dul.to_user_queue.put(indication)
        else:
            # The acceptor thread waits for the A-ASSOCIATE indication: None makes it
            # end as if it had timed out, without negotiating.
            dul.to_user_queue.put(None)
        assoc_socket = dul.socket
        if assoc_socket is not None and assoc_socket.socket is not None:
            try:
                assoc_socket.socket.settimeout(1.0)
                assoc_socket.socket.sendall(abort_pdu(SOURCE_PROVIDER, REASON_UNEXPECTED_PDU))
            except OSError:
                pass
            assoc_socket.close()


def wait_ready(self: Any) -> bool:
    """Whether data can be read, waiting up to :data:`POLL_SECONDS` for it.

    Returns early (False) when the association's wake-up socket is signalled: the
    DUL thread then goes on to send what was queued.
    """
    sock = self.socket
    if sock is None or self._is_connected is False:
        return False
    if sock in _prefetched:
        return True
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


# -- Per-association hand-offs ------------------------------------------------------


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

    trace = trace_of(dul)

    def put_and_wake(item: Any, block: bool = True, timeout: float | None = None) -> None:
        put(item, block, timeout)
        trace.primitives_queued += 1
        trace.mark("primitive_queued")
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
    put_message = messages.put

    def put_message_counted(item: Any, block: bool = True, timeout: float | None = None) -> None:
        put_message(item, block, timeout)
        if item[1] is not None:  # (None, None) tells the thread the association ended
            trace.messages_decoded += 1
            trace.mark("message_decoded")

    messages.put = put_message_counted

    def get_msg_waiting(block: bool = False) -> Any:
        if block:
            item = get_msg(block=True)
        else:
            try:
                item = messages.get(timeout=MESSAGE_WAIT_SECONDS)
            except queue.Empty:
                return None, None
        if item[1] is not None:
            trace.messages_taken += 1
            trace.mark("message_taken")
        return item

    # Bound per association: pynetdicom triggers EVT_ABORTED in the association
    # thread once the abort is known, whichever thread saw it first.
    assoc.bind(evt.EVT_ABORTED, _log_trace)

    assoc_socket = dul.socket
    send = assoc_socket.send

    def send_counted(bytestream: bytes) -> None:
        send(bytestream)
        trace.pdus_out += 1
        trace.mark("pdu_out")

    assoc_socket.send = send_counted

    dimse.get_msg = get_msg_waiting
    dimse.send_msg = _direct_sender(assoc, dimse.send_msg)
    assoc._serve_request = _refusing_server(assoc, assoc._serve_request)


def _log_trace(event: Any) -> None:
    """Say how far each hand-off of an aborted association got (issue 10's stall:
    which of read, decode, serve, queue and send stopped when a sender gave up)."""
    assoc = event.assoc
    logger.warning(
        "association ended by an abort",
        extra={"action": "association_trace", "peer": _peer_of(assoc),
               **trace_of(assoc.dul).summary()},
    )  # fmt: skip


def _refusing_server(assoc: Any, serve_request: Any) -> Any:
    """Answer a C-STORE-RQ that pynetdicom would drop unanswered with 0xC000.

    pynetdicom ignores a request that lacks a required element (an empty Affected
    SOP Instance UID decodes as None) without a response: the sender waits for its
    DIMSE timeout. A C-STORE-RQ with a Message ID gets CANNOT_UNDERSTAND at once.
    """

    def serve_or_refuse(msg: Any, context_id: int) -> None:
        if isinstance(msg, C_STORE) and not msg.is_valid_request and msg.MessageID is not None:
            _discard_dataset(assoc, msg)
            missing = [
                keyword
                for keyword in ("AffectedSOPClassUID", "AffectedSOPInstanceUID")
                if getattr(msg, keyword, None) is None
            ]
            response: Any = C_STORE()
            response.MessageIDBeingRespondedTo = msg.MessageID
            response.AffectedSOPClassUID = msg.AffectedSOPClassUID
            response.Status = 0xC000  # Status.CANNOT_UNDERSTAND (PS3.4 B.2.3)
            response.ErrorComment = f"C-STORE-RQ without {', '.join(missing) or 'a data set'}"
            logger.warning(
                "C-STORE refused",
                extra={
                    "action": "store_refused",
                    "status": "0xC000",
                    "reason": response.ErrorComment,
                    "peer": _peer_of(assoc),
                },
            )
            assoc.dimse.send_msg(response, context_id)
            return
        serve_request(msg, context_id)

    return serve_or_refuse


def _discard_dataset(assoc: Any, msg: Any) -> None:
    """Remove the spool file of a request that will not be stored."""
    path = getattr(msg, "_dataset_path", None)
    if path is not None:
        taken = spool.take_spool(assoc.ae, path)
        if taken is not None:
            taken.discard()


def _direct_sender(assoc: Any, send_msg: Any) -> Any:
    dimse = assoc.dimse

    def send_msg_direct(primitive: Any, context_id: int) -> None:
        if isinstance(primitive, C_STORE) and primitive.MessageIDBeingRespondedTo is not None:
            uid = primitive.AffectedSOPInstanceUID
            if uid is not None and not is_valid_uid(str(uid)):
                # Optional in a response (PS3.7 9.3.1.2): leave out what the peer's
                # decoder may refuse (pynetdicom raises on a UID over 64 characters).
                primitive.AffectedSOPInstanceUID = None
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

    return send_msg_direct


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


# -- Spooling -----------------------------------------------------------------------


def _create_file_meta(
    *, sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, **_: Any
) -> bytes:
    # Stands in for pynetdicom.dsutils.create_file_meta inside dimse_messages only.
    return spool.file_meta_bytes(sop_class_uid, sop_instance_uid, transfer_syntax)


def _write_file_meta_info(fp: Any, file_meta: bytes, *_: Any, **__: Any) -> None:
    # Stands in for pydicom's write_file_meta_info inside dimse_messages only.
    fp.write(file_meta)


def spool_factory(*args: Any, **kwargs: Any) -> Any:
    """A spool file for the association whose DUL thread calls this.

    pynetdicom calls ``NamedTemporaryFile(delete=False, ...)`` in the DUL thread,
    which knows its association; an AE set up by
    :func:`~dicomnode.receive.spool.install_spool` gets a SpoolFile, any other AE
    pynetdicom's own temporary file.
    """
    assoc = getattr(threading.current_thread(), "assoc", None)
    opened = spool.open_spool(getattr(assoc, "ae", None))
    if opened is None:
        return _original_factory(*args, **kwargs)
    spools: list[Any] = getattr(assoc, _SPOOLS_ATTR, None) or []
    spools.append(opened)
    setattr(assoc, _SPOOLS_ATTR, spools)
    return opened


def run_reactor_then_clean_up(self: Any) -> None:
    """The DUL thread's loop; then close what the association leaves open.

    Only the DUL thread selects on the wake-up socket, so once its loop has ended
    the pair can go (a later wake-up finds it closed and is dropped). A spool file
    the C-STORE handler has not taken by now belongs to a transfer that was cut off
    (abort, lost connection, timeout): it is closed and deleted.
    """
    try:
        _original_run_reactor(self)
    finally:
        pair = getattr(self, _PAIR_ATTR, None)
        if pair is not None:
            for end in pair:
                end.close()
        assoc = getattr(self, "_assoc", None)
        untaken = spool.discard_untaken(
            getattr(assoc, "ae", None), getattr(assoc, _SPOOLS_ATTR, None) or []
        )
        if untaken:
            logger.info(
                "spool files of cut-off transfers removed",
                extra={"action": "spool_discarded", "count": untaken, "peer": _peer_of(assoc)},
            )

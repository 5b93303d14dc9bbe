"""The C-ECHO / C-STORE SCP: an AE for every storage SOP class and transfer syntax."""

from __future__ import annotations

import copy
import logging
import socket
import ssl
import struct
import threading
import time
from ipaddress import IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Any

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy.orm import Session, sessionmaker

from dicomnode import __version__
from dicomnode.config import Settings
from dicomnode.errors import ConfigError
from dicomnode.metrics import ASSOCIATIONS_REJECTED
from dicomnode.receive import _patches, handlers
from dicomnode.receive._patches import (
    MAX_ASSOCIATE_RQ_BYTES,
    REASON_INVALID_PARAMETER,
    REASON_UNEXPECTED_PDU,
    SOURCE_PROVIDER,
    abort_pdu,
    prefetch,
    recv_exact,
    reject_pdu,
)
from dicomnode.receive.ingest import Ingest
from dicomnode.receive.spool import install_spool
from dicomnode.uids import implementation_identity

__all__ = ["NodeServer", "build_ae", "start_scp", "tls_context"]

logger = logging.getLogger(__name__)


class NodeServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, admitting a connection as an association only
    once it has sent a complete, bounded A-ASSOCIATE-RQ in time.

    pynetdicom 3.0.4 counts every accepted socket against ``maximum_associations``
    and reads its first PDU without a deadline or a size bound; it also runs the
    TLS handshake in the accept loop. Here, per connection:

    * the accept loop only accepts: a host not in ``node.allowed_hosts``, or one
      already holding ``node.max_connections_per_host`` connections, is closed
      before a byte is read; when ``node.max_pending_connections`` connections are
      still waiting for their request, the oldest of them is closed to make room;
    * the connection's own thread completes the TLS handshake (if any) and reads
      the A-ASSOCIATE-RQ, which must be at most :data:`MAX_ASSOCIATE_RQ_BYTES`
      long and arrive whole within ``node.association_request_timeout``; anything
      else is aborted (a request with no presentation context is rejected);
    * only then does pynetdicom see the connection, with the request already read
      (:func:`~dicomnode.receive._patches.prefetch`): waiting connections never
      take an association slot.
    """

    #: socketserver's listen backlog (its default is 5).
    request_queue_size = 1024
    #: Networks a peer's address must be in; empty: every host.
    allowed_hosts: tuple[IPv4Network | IPv6Network, ...] = ()
    #: The server side of DICOM TLS; None: plain TCP.
    tls_context: ssl.SSLContext | None = None
    #: The longest a connection may take to complete TLS and send its request.
    association_request_timeout: float = 10.0
    #: The longest a socket read may wait once associated.
    network_timeout: float = 30.0
    max_connections_per_host: int = 32
    max_pending_connections: int = 128
    #: The thread running the accept loop (``serve_forever``), once started.
    accept_thread: threading.Thread | None = None

    @property
    def accepting(self) -> bool:
        """Whether the accept loop runs on an open listening socket (for ``/readyz``)."""
        thread, sock = self.accept_thread, self.socket
        return thread is not None and thread.is_alive() and sock is not None and sock.fileno() >= 0

    def server_activate(self) -> None:
        """Listen, and set up the per-connection book-keeping."""
        self._lock = threading.Lock()
        self._pending: dict[socket.socket, str] = {}  # insertion order: oldest first
        self._refused: dict[str, tuple[float, int]] = {}
        super().server_activate()

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Whether to serve a new connection (socketserver hook, in the accept loop)."""
        host = str(client_address[0])
        if not self._host_allowed(host):
            ASSOCIATIONS_REJECTED.labels("host_not_allowed").inc()
            logger.warning(
                "connection refused: host not allowed",
                extra={"action": "host_rejected", "peer": _address(client_address)},
            )
            return False
        with self._lock:
            held = sum(1 for h in self._pending.values() if h == host)
            held += sum(1 for a in self.active_associations if str(a.requestor.address) == host)
            if held >= self.max_connections_per_host:
                self._note_refused(host)
                return False
            if len(self._pending) >= self.max_pending_connections:
                _close_now(next(iter(self._pending)))  # its thread sees EOF and ends
            self._pending[request] = host
        return True

    def _host_allowed(self, host: str) -> bool:
        if not self.allowed_hosts:
            return True
        address = ip_address(host.split("%")[0])
        if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # ::ffff:10.0.0.1 is 10.0.0.1
        return any(address in network for network in self.allowed_hosts)

    def _note_refused(self, host: str) -> None:
        """Log refusals of a host at most once a second, with how many there were."""
        ASSOCIATIONS_REJECTED.labels("host_connection_limit").inc()
        now = time.monotonic()
        since, count = self._refused.get(host, (0.0, 0))
        if now - since < 1.0:
            self._refused[host] = (since, count + 1)
            return
        self._refused[host] = (now, 0)
        logger.warning(
            "connection refused: too many connections from host",
            extra={
                "action": "host_connection_limit",
                "host": host,
                "limit": self.max_connections_per_host,
                "refused_since_last_record": count + 1,
            },
        )

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """Admit the connection (TLS, A-ASSOCIATE-RQ), then serve the association."""
        try:
            admitted = self._admit(request, client_address)
        finally:
            with self._lock:
                self._pending.pop(request, None)
        if admitted is None:
            self.shutdown_request(request)
            return
        admitted.settimeout(self.network_timeout)
        super().process_request_thread(admitted, client_address)

    def _admit(self, request: socket.socket, client_address: Any) -> socket.socket | None:
        """The connection with its A-ASSOCIATE-RQ read, or None if it was closed."""
        deadline = time.monotonic() + self.association_request_timeout
        sock: socket.socket | None = request
        if self.tls_context is not None:
            sock = self._handshake(request, client_address)
        if sock is None:
            return None
        try:
            pdu = _read_associate_rq(sock, deadline)
        except _Refused as refused:
            ASSOCIATIONS_REJECTED.labels(refused.kind).inc()
            logger.warning(
                f"connection closed: {refused.reason}",
                extra={
                    "action": "association_request_refused",
                    "reason": refused.reason,
                    "peer": _address(client_address),
                    **refused.details,
                },
            )
            try:
                sock.settimeout(1.0)
                sock.sendall(refused.reply)
            except OSError:
                pass
            _close_now(sock)
            return None
        prefetch(sock, pdu)
        return sock

    def _handshake(self, request: socket.socket, client_address: Any) -> socket.socket | None:
        assert self.tls_context is not None
        try:
            request.settimeout(self.association_request_timeout)
            return self.tls_context.wrap_socket(request, server_side=True)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            ASSOCIATIONS_REJECTED.labels("tls_handshake").inc()
            logger.warning(
                "TLS handshake failed",
                extra={
                    "action": "tls_handshake_failed",
                    "peer": _address(client_address),
                    "reason": getattr(exc, "reason", None) or type(exc).__name__,
                },
            )
            return None


class _Refused(Exception):
    """A connection's first PDU is not one we serve; ``reply`` is what we answer."""

    def __init__(self, reason: str, reply: bytes, **details: Any) -> None:
        super().__init__(reason)
        self.reason = reason
        self.reply = reply
        self.details = details

    @property
    def kind(self) -> str:
        """The reason label of ``dicomnode_associations_rejected``: the peer went away
        before a whole request (nothing to answer), or sent, too slowly or at all,
        something we do not serve."""
        return "bad_request" if self.reply else "no_request"


def _read_associate_rq(sock: socket.socket, deadline: float) -> bytes:
    """Read a whole, bounded A-ASSOCIATE-RQ PDU by ``deadline``; raises _Refused."""
    abort = abort_pdu(SOURCE_PROVIDER, REASON_UNEXPECTED_PDU)
    try:
        header = recv_exact(sock, 6, deadline)
        if len(header) < 6:
            raise _Refused("closed before a request", b"", received=len(header))
        pdu_type, _, length = struct.unpack(">BBL", header)
        if pdu_type != 0x01:
            raise _Refused("first PDU is not an A-ASSOCIATE-RQ", abort, pdu_type=pdu_type)
        if length > MAX_ASSOCIATE_RQ_BYTES:
            raise _Refused(
                "A-ASSOCIATE-RQ too long",
                abort_pdu(SOURCE_PROVIDER, REASON_INVALID_PARAMETER),
                length=length,
                limit=MAX_ASSOCIATE_RQ_BYTES,
            )
        body = recv_exact(sock, length, deadline)
    except TimeoutError:
        raise _Refused("no complete A-ASSOCIATE-RQ in time", abort) from None
    except OSError:
        raise _Refused("connection lost before a request", b"") from None
    if len(body) < length:
        raise _Refused("closed mid-request", b"", received=len(body) + 6)
    if not _has_presentation_context(body):
        # PS3.8 9.3.4: rejected-permanent (1), service-user (1), no-reason-given (1)
        raise _Refused("A-ASSOCIATE-RQ without presentation context", reject_pdu(1, 1, 1))
    return bytes(header + body)


def _has_presentation_context(body: bytes | bytearray) -> bool:
    """Whether an A-ASSOCIATE-RQ body holds a Presentation Context item (PS3.8 9.3.2).

    The body is 68 bytes of fixed fields, then items of type (1 byte), reserved
    (1), length (2) and value; 0x20 is a presentation context (PS3.8 9.3.2.2).
    """
    offset = 68
    while offset + 4 <= len(body):
        item_type, _, item_length = struct.unpack_from(">BBH", body, offset)
        if item_type == 0x20:
            return True
        offset += 4 + item_length
    return False


def _close_now(sock: socket.socket) -> None:
    """Shut a connection down (a thread blocked reading it sees EOF) and close it."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def _address(client_address: Any) -> str:
    return f"{client_address[0]}:{client_address[1]}"


class SharedPortServer(NodeServer):
    """An association server that shares its port with the node's other receivers.

    With SO_REUSEPORT the kernel spreads incoming connections over every process
    listening on the port, so concurrent associations use more than one core.
    """

    def server_bind(self) -> None:
        """Set SO_REUSEPORT before pynetdicom binds (it sets SO_REUSEADDR itself)."""
        assert self.socket is not None  # created by socketserver before binding
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


class _Contexts(list[PresentationContext]):
    """The server's supported contexts, cheap to copy for each new association.

    pynetdicom deep-copies the server's contexts for every association it accepts:
    ~170 storage classes x ~30 transfer syntaxes of UID objects, ~0.2 s of CPU per
    association here. A context's only mutable part is its transfer syntax list (the
    UIDs are immutable strings), so copying each object and that list gives the
    same independence for a fraction of the cost.
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> list[PresentationContext]:
        copies = []
        for context in self:
            clone = copy.copy(context)
            clone._transfer_syntax = list(context._transfer_syntax)
            copies.append(clone)
        return copies


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The server-side TLS context of ``[node] tls_*`` (TLS 1.2 or later); None if off.

    Raises ConfigError naming the key when a file cannot be loaded.
    """
    certificate = settings.tls_file("tls_certificate")
    private_key = settings.tls_file("tls_private_key")
    if certificate is None or private_key is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certificate, private_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"[node] tls_certificate / tls_private_key: cannot load {certificate} and "
            f"{private_key}: {getattr(exc, 'strerror', None) or exc}"
        ) from exc
    client_ca = settings.tls_file("tls_client_ca")
    if client_ca is not None:
        try:
            context.load_verify_locations(cafile=client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"[node] tls_client_ca: cannot load {client_ca}: "
                f"{getattr(exc, 'strerror', None) or exc}"
            ) from exc
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _serve_in_thread(
    ae: AE, settings: Settings, event_handlers: list[Any], shared: bool
) -> NodeServer:
    """What ``ae.start_server(block=False)`` does, with our server classes."""
    tls = tls_context(settings)  # a bad file stops the start before the port is bound
    server = ae.make_server(
        (settings.node.host, settings.node.port),
        evt_handlers=event_handlers,
        server_class=SharedPortServer if shared else NodeServer,
    )
    assert isinstance(server, NodeServer)
    node = settings.node
    server.allowed_hosts = node.allowed_hosts
    server.tls_context = tls
    server.association_request_timeout = node.association_request_timeout
    server.network_timeout = node.network_timeout
    server.max_connections_per_host = node.max_connections_per_host
    server.max_pending_connections = node.max_pending_connections
    server.contexts = _Contexts(server.contexts)
    thread = threading.Thread(target=server.serve_forever, name="AcceptorServer", daemon=True)
    server.accept_thread = thread
    thread.start()
    ae._servers.append(server)  # so ae.shutdown() stops it too
    return server


def build_ae(settings: Settings) -> AE:
    """An AE accepting every storage SOP class in every transfer syntax we know."""
    node = settings.node
    ae = AE(ae_title=node.ae_title)
    for context in AllStoragePresentationContexts:
        if context.abstract_syntax is not None:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
    # A larger maximum PDU means fewer PDUs per instance (+7-17 % measured here).
    ae.maximum_pdu_size = node.maximum_pdu_size
    ae.maximum_associations = node.maximum_associations
    ae.require_called_aet = True
    # Peers see dicomnode in the association, not pynetdicom (PS3.7 D.3.3.2).
    ae.implementation_class_uid, ae.implementation_version_name = implementation_identity(
        __version__
    )
    ae.require_calling_aet = list(node.allowed_calling_aets)
    ae.acse_timeout = 30
    ae.dimse_timeout = 60
    # The idle timer between PDUs; a stall inside a PDU is bounded by _patches.
    ae.network_timeout = node.network_timeout
    return ae


def start_scp(settings: Settings, ingest: Ingest, session_factory: sessionmaker[Session]) -> Any:
    """Start serving in background threads; returns pynetdicom's server object."""
    ae = build_ae(settings)
    _patches.install()
    install_spool(ae, ingest.spool_dir, ingest.max_instance_bytes)
    event_handlers: list[Any] = [
        (evt.EVT_C_STORE, handlers.handle_store, [ingest]),
        (evt.EVT_C_ECHO, handlers.handle_echo),
        (evt.EVT_ESTABLISHED, handlers.handle_established, [session_factory]),
        (evt.EVT_RELEASED, handlers.handle_released, [session_factory]),
        (evt.EVT_ABORTED, handlers.handle_aborted, [session_factory]),
        (evt.EVT_REJECTED, handlers.handle_rejected, [session_factory]),
    ]
    server = _serve_in_thread(ae, settings, event_handlers, shared=settings.receive_processes > 1)
    host, port = server.server_address[:2]
    if not settings.node.allowed_calling_aets:
        logger.warning(
            "accepting any calling AE title; set node.allowed_calling_aets to restrict",
            extra={"action": "open_to_any_calling_ae"},
        )
    logger.info(
        "SCP listening",
        extra={
            "action": "scp_listening",
            "ae_title": settings.node.ae_title,
            "host": host,
            "port": port,
            "tls": server.tls_context is not None,
        },
    )
    return server

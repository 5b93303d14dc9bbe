"""The C-ECHO / C-STORE SCP: an AE for every storage SOP class and transfer syntax."""

from __future__ import annotations

import copy
import logging
import socket
import ssl
import threading
from ipaddress import IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Any

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.config import Settings
from dicomnode.errors import ConfigError
from dicomnode.receive import handlers
from dicomnode.receive.fastpath import install_fast_recv
from dicomnode.receive.ingest import Ingest
from dicomnode.receive.spool import install_spool

__all__ = ["NodeServer", "build_ae", "start_scp", "tls_context"]

logger = logging.getLogger(__name__)


class NodeServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, closing connections from hosts not allowed, with
    the TLS handshake in each connection's own thread.

    ``node.allowed_hosts`` is checked as the TCP connection is accepted, before a
    byte of it is read (pynetdicom would otherwise read a whole A-ASSOCIATE-RQ, of
    any size, before its AE title checks). pynetdicom 3.0.4 runs the TLS handshake
    in its accept loop, where one client that connects and sends nothing holds up
    every other client until it times out; here the accept loop only accepts.
    """

    #: Networks a peer's address must be in; empty: every host.
    allowed_hosts: tuple[IPv4Network | IPv6Network, ...] = ()
    #: The server side of DICOM TLS; None: plain TCP.
    tls_context: ssl.SSLContext | None = None
    #: The longest a client may take to complete the TLS handshake.
    handshake_timeout: float = 30.0

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """Complete the TLS handshake (if any), then serve the association."""
        if self.tls_context is not None:
            try:
                request.settimeout(self.handshake_timeout)
                request = self.tls_context.wrap_socket(request, server_side=True)
                request.settimeout(None)  # blocking, as pynetdicom's own wrapping leaves it
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                logger.warning(
                    "TLS handshake failed",
                    extra={
                        "action": "tls_handshake_failed",
                        "peer": f"{client_address[0]}:{client_address[1]}",
                        "reason": getattr(exc, "reason", None) or type(exc).__name__,
                    },
                )
                self.shutdown_request(request)
                return
        super().process_request_thread(request, client_address)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Whether the connecting host may associate (socketserver hook)."""
        if not self.allowed_hosts:
            return True
        host = ip_address(client_address[0])
        if isinstance(host, IPv6Address) and host.ipv4_mapped is not None:
            host = host.ipv4_mapped  # ::ffff:10.0.0.1 is 10.0.0.1
        if any(host in network for network in self.allowed_hosts):
            return True
        logger.warning(
            "connection refused: host not allowed",
            extra={"action": "host_rejected", "peer": f"{client_address[0]}:{client_address[1]}"},
        )
        return False


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
    server.allowed_hosts = settings.node.allowed_hosts
    server.tls_context = tls
    server.handshake_timeout = float(ae.acse_timeout or 30)
    server.contexts = _Contexts(server.contexts)
    thread = threading.Thread(target=server.serve_forever, name="AcceptorServer", daemon=True)
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
    ae.require_calling_aet = list(node.allowed_calling_aets)
    ae.acse_timeout = 30
    ae.dimse_timeout = 60
    ae.network_timeout = 60
    return ae


def start_scp(settings: Settings, ingest: Ingest, session_factory: sessionmaker[Session]) -> Any:
    """Start serving in background threads; returns pynetdicom's server object."""
    ae = build_ae(settings)
    install_spool(ae, ingest.spool_dir)
    install_fast_recv()
    event_handlers: list[Any] = [
        (evt.EVT_C_STORE, handlers.handle_store, [ingest]),
        (evt.EVT_C_ECHO, handlers.handle_echo),
        (evt.EVT_ESTABLISHED, handlers.handle_established, [session_factory]),
        (evt.EVT_RELEASED, handlers.handle_released, [session_factory]),
        (evt.EVT_ABORTED, handlers.handle_aborted, [session_factory]),
        (evt.EVT_REJECTED, handlers.handle_rejected),
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

"""The C-ECHO / C-STORE SCP: an AE for every storage SOP class and transfer syntax."""

from __future__ import annotations

import copy
import logging
import socket
import threading
from ipaddress import IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Any

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.config import Settings
from dicomnode.receive import handlers
from dicomnode.receive.fastpath import install_fast_recv
from dicomnode.receive.ingest import Ingest
from dicomnode.receive.spool import install_spool

__all__ = ["build_ae", "start_scp"]

logger = logging.getLogger(__name__)


class NodeServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, closing connections from hosts not allowed.

    ``node.allowed_hosts`` is checked as the TCP connection is accepted, before a
    byte of it is read (pynetdicom would otherwise read a whole A-ASSOCIATE-RQ, of
    any size, before its AE title checks).
    """

    #: Networks a peer's address must be in; empty: every host.
    allowed_hosts: tuple[IPv4Network | IPv6Network, ...] = ()

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


def _serve_in_thread(
    ae: AE, settings: Settings, event_handlers: list[Any], shared: bool
) -> ThreadedAssociationServer:
    """What ``ae.start_server(block=False)`` does, with our server class when shared."""
    server = ae.make_server(
        (settings.node.host, settings.node.port),
        evt_handlers=event_handlers,
        server_class=SharedPortServer if shared else NodeServer,
    )
    assert isinstance(server, NodeServer)
    server.allowed_hosts = settings.node.allowed_hosts
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
        },
    )
    return server

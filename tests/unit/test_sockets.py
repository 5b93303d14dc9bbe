"""A requestor whose connect is refused or reset closes its socket (dicomnode.sockets)."""

from __future__ import annotations

import gc
import socket
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import AssociationSocket

from dicomnode.config import PeerSettings
from dicomnode.errors import SendError
from dicomnode.send.scu import echo_peer
from dicomnode.sockets import STOCK_SHUTDOWN, close_sockets_always, shutdown_then_close
from tests.nodeproc import free_port


class Holder:
    """What ``_shutdown_socket`` reads from an AssociationSocket: its ``socket``."""

    def __init__(self, sock: socket.socket) -> None:
        self.socket = sock


@pytest.fixture
def unraisable() -> Iterator[list[str]]:
    """Finaliser warnings (an unclosed socket's ResourceWarning) raised meanwhile."""
    seen: list[str] = []
    previous = sys.unraisablehook

    def hook(info: Any) -> None:
        seen.append(repr(info.exc_value))

    sys.unraisablehook = hook
    try:
        yield seen
    finally:
        sys.unraisablehook = previous


def test_stock_shutdown_leaves_a_never_connected_socket_open() -> None:
    sock = socket.socket()
    try:
        STOCK_SHUTDOWN(Holder(sock))  # type: ignore[arg-type]
        assert sock.fileno() != -1  # the pynetdicom 3.0.4 fault this module fixes
    finally:
        sock.close()


def test_shutdown_then_close_closes_a_never_connected_socket() -> None:
    sock = socket.socket()
    shutdown_then_close(Holder(sock))  # type: ignore[arg-type]
    assert sock.fileno() == -1


def test_shutdown_then_close_closes_a_connected_socket() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
        with accepted:
            shutdown_then_close(Holder(client))  # type: ignore[arg-type]
            assert client.fileno() == -1
            assert accepted.recv(1) == b""  # the peer sees the close


def test_the_fix_is_installed_process_wide() -> None:
    close_sockets_always()
    assert AssociationSocket._shutdown_socket is shutdown_then_close


def test_a_refused_association_leaves_no_unclosed_socket(unraisable: list[str]) -> None:
    close_sockets_always()
    ae = AE(ae_title="PROBE")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", free_port())
    assert not assoc.is_established
    del assoc
    gc.collect()
    assert unraisable == []


def test_echo_to_a_closed_port_leaves_no_unclosed_socket(unraisable: list[str]) -> None:
    peer = PeerSettings(name="gone", ae_title="GONE", host="127.0.0.1", port=free_port())
    for _ in range(3):
        with pytest.raises(SendError):
            echo_peer(peer, "DICOMNODE")
    gc.collect()
    assert unraisable == []

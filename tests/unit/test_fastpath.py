"""The socket read that replaces pynetdicom's: same contract, fewer calls."""

from __future__ import annotations

import socket
import threading

from dicomnode.receive.fastpath import recv_exact, wait_ready


class Holder:
    """The two attributes of pynetdicom's AssociationSocket the functions use."""

    def __init__(self, sock: socket.socket) -> None:
        self.socket = sock
        self._is_connected = True
        self.event_queue: list[str] = []


def test_recv_exact_returns_exactly_the_bytes_asked_for_across_many_sends() -> None:
    left, right = socket.socketpair()
    payload = bytes(range(256)) * 4096  # 1 MiB, more than one socket buffer

    def send() -> None:
        for start in range(0, len(payload), 10_000):
            left.sendall(payload[start : start + 10_000])

    sender = threading.Thread(target=send)
    sender.start()
    got = recv_exact(Holder(right), len(payload) - 5)
    rest = recv_exact(Holder(right), 5)
    sender.join()
    assert bytes(got) + bytes(rest) == payload
    left.close()
    right.close()


def test_recv_exact_returns_what_arrived_when_the_peer_closes() -> None:
    left, right = socket.socketpair()
    left.sendall(b"abc")
    left.close()
    assert bytes(recv_exact(Holder(right), 10)) == b"abc"
    right.close()


def test_wait_ready_reports_data_and_waits_briefly_when_there_is_none() -> None:
    left, right = socket.socketpair()
    holder = Holder(right)
    assert wait_ready(holder) is False
    left.sendall(b"x")
    assert wait_ready(holder) is True
    holder._is_connected = False
    assert wait_ready(holder) is False
    left.close()
    right.close()

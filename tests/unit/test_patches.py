"""The fast paths that replace parts of pynetdicom's: same contract, less work."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from pydicom.uid import CTImageStorage, MRImageStorage
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode

from dicomnode.receive._patches import recv_exact, store_response_bytes, wait_ready


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
    deadline = time.monotonic() + 30
    got = recv_exact(right, len(payload) - 5, deadline)
    rest = recv_exact(right, 5, deadline)
    sender.join()
    assert bytes(got) + bytes(rest) == payload
    left.close()
    right.close()


def test_recv_exact_returns_what_arrived_when_the_peer_closes() -> None:
    left, right = socket.socketpair()
    left.sendall(b"abc")
    left.close()
    assert bytes(recv_exact(right, 10, time.monotonic() + 30)) == b"abc"
    right.close()


def test_recv_exact_raises_timeout_when_the_peer_stops_mid_read() -> None:
    left, right = socket.socketpair()
    left.sendall(b"abc")
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        recv_exact(right, 10, started + 0.3)
    assert time.monotonic() - started < 2
    left.close()
    right.close()


def test_recv_exact_keeps_its_deadline_against_a_trickle() -> None:
    """A peer sending a byte now and then cannot stretch the deadline."""
    left, right = socket.socketpair()
    stop = threading.Event()

    def trickle() -> None:
        while not stop.wait(0.05):
            try:
                left.send(b"x")
            except OSError:
                return

    sender = threading.Thread(target=trickle)
    sender.start()
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        recv_exact(right, 1000, started + 0.5)
    assert time.monotonic() - started < 1.5
    stop.set()
    sender.join()
    left.close()
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


@pytest.mark.parametrize(
    ("message_id", "sop_class", "sop_instance", "status"),
    [
        (1, CTImageStorage, "1.2.3.4", 0x0000),  # even-length UIDs
        (65535, MRImageStorage, "1.2.3.45", 0xB000),  # odd instance UID, warning
        (7, "1.2.840.10008.5.1.4.1.1.66.4", "2.25." + "1" * 59, 0x0000),
    ],
)
def test_store_response_bytes_equal_what_pynetdicom_encodes(
    message_id: int, sop_class: str, sop_instance: str, status: int
) -> None:
    primitive = C_STORE()
    primitive.MessageIDBeingRespondedTo = message_id
    primitive.AffectedSOPClassUID = sop_class
    primitive.AffectedSOPInstanceUID = sop_instance
    primitive.Status = status
    message = C_STORE_RSP()
    message.primitive_to_message(primitive)
    expected = encode(message.command_set, True, True)
    assert store_response_bytes(message_id, sop_class, sop_instance, status) == expected


def test_contexts_copied_for_an_association_are_equal_and_independent() -> None:
    import copy

    from dicomnode.config import Settings
    from dicomnode.receive.scp import _Contexts, build_ae

    served = _Contexts(build_ae(Settings()).supported_contexts)
    copied = copy.deepcopy(served)
    assert [(c.abstract_syntax, c.transfer_syntax, c.context_id) for c in copied] == [
        (c.abstract_syntax, c.transfer_syntax, c.context_id) for c in served
    ]
    assert all(a is not b for a, b in zip(copied, served, strict=True))
    copied[0].add_transfer_syntax("1.2.826.0.1.3680043.9.9999.1")  # appends in place
    copied[0].context_id = 1
    assert "1.2.826.0.1.3680043.9.9999.1" not in served[0].transfer_syntax
    assert served[0].context_id is None

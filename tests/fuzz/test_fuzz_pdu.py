"""Fuzz the two places our code reads PDUs from a peer, over a socketpair.

* the server's admission gate, :func:`dicomnode.receive.scp._read_associate_rq`,
  which reads a connection's first PDU before pynetdicom sees the connection;
* :func:`dicomnode.receive._patches.read_pdu_bounded`, which replaces pynetdicom's
  PDU read inside an association, and pynetdicom's PDU decoders it calls.

Each example is checked against a model of what the code must do with those bytes
(refuse with which reply, or hand on exactly one whole PDU), within one second and
without allocating more than 2 MiB over the input (tests/fuzz/support.py).

Budgets: the ``ci`` Hypothesis profile (default) keeps all of tests/fuzz under 60 s;
``HYPOTHESIS_PROFILE=long`` runs many more examples by hand (docs/security.md,
"Fuzzing").
"""

from __future__ import annotations

import queue
import socket
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

import pytest
from hypothesis import event, given
from hypothesis import strategies as st
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dul import _PDU_TYPES
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.transport import AddressInformation, AssociationSocket

from dicomnode.receive._patches import (
    MAX_ASSOCIATE_RQ_BYTES,
    REASON_INVALID_PARAMETER,
    REASON_NOT_SPECIFIED,
    REASON_UNEXPECTED_PDU,
    REASON_UNRECOGNISED_PDU,
    SOURCE_PROVIDER,
    abort_pdu,
    pdu_limit,
    read_pdu_bounded,
    reject_pdu,
)
from dicomnode.receive.scp import _read_associate_rq, _Refused
from tests.fuzz.pdus import (
    ACCEPTOR_CONVERTS,
    associate_requests,
    kills_the_dul,
    mutated,
    pdu,
    peer_bytes,
)
from tests.fuzz.support import like_the_node, within_budget
from tests.rawpeer import associate_rq

pytestmark = pytest.mark.timeout(120)

T = TypeVar("T")

#: How long a peer that stops sending is waited for (the node's deadline, shortened).
STALL_SECONDS = 0.05
#: Advertised maximum PDU lengths: the node's minimum, pynetdicom's default, ours.
MAXIMUM_PDU_SIZES = (4096, 16382, 262144)


@contextmanager
def socket_pair(data: bytes, close: bool) -> Iterator[tuple[socket.socket, socket.socket]]:
    """(peer, ours): ``data`` already sent by the peer, then its write side shut or not."""
    peer, ours = socket.socketpair()
    try:
        peer.sendall(data)
        if close:
            peer.shutdown(socket.SHUT_WR)
        yield peer, ours
    finally:
        peer.close()
        ours.close()


def received(sock: socket.socket) -> bytes:
    """What has arrived on ``sock`` so far, without waiting."""
    sock.setblocking(False)
    try:
        return sock.recv(65536)
    except (BlockingIOError, ConnectionResetError):
        return b""


# -- The admission gate -----------------------------------------------------------


def expected_refusal(data: bytes, closed: bool) -> bytes | None:
    """The gate's reply to a peer that sent ``data``; None: a whole request to admit."""
    stalled = abort_pdu(SOURCE_PROVIDER, REASON_UNEXPECTED_PDU)
    if len(data) < 6:
        return b"" if closed else stalled
    pdu_type, _, length = struct.unpack_from(">BBL", data)
    if pdu_type != 0x01:
        return abort_pdu(SOURCE_PROVIDER, REASON_UNEXPECTED_PDU)
    if length > MAX_ASSOCIATE_RQ_BYTES:
        return abort_pdu(SOURCE_PROVIDER, REASON_INVALID_PARAMETER)
    if len(data) - 6 < length:
        return b"" if closed else stalled
    return None


def pynetdicom_sees_a_context(rq: bytes) -> bool:
    """Whether pynetdicom decodes ``rq`` with at least one presentation context."""
    decoded = A_ASSOCIATE_RQ()
    try:
        with like_the_node():
            decoded.decode(rq)
    except Exception:
        return False
    return bool(decoded.presentation_context)


@given(data=peer_bytes(), close=st.booleans())
def test_admission_gate_refuses_or_admits_exactly_one_whole_request(
    data: bytes, close: bool
) -> None:
    with socket_pair(data, close) as (_, ours):
        with within_budget(len(data)):
            try:
                admitted: bytes | None = _read_associate_rq(ours, time.monotonic() + STALL_SECONDS)
                reply = None
            except _Refused as refused:
                admitted, reply = None, refused.reply
    expected = expected_refusal(data, close)
    event("admitted" if admitted is not None else f"refused with {(reply or b'-')[:1].hex()}")
    if expected is not None:
        assert reply == expected
        return
    (length,) = struct.unpack_from(">L", data, 2)
    whole = data[: 6 + length]
    if admitted is None:
        # A request the gate rejects has no presentation context pynetdicom would see.
        assert reply == reject_pdu(1, 1, 1)
        assert not pynetdicom_sees_a_context(whole)
    else:
        assert admitted == whole


def test_admission_gate_admits_a_valid_request_and_rejects_one_without_contexts() -> None:
    for rq, admitted in ((associate_rq(), True), (associate_rq(abstract_syntaxes=()), False)):
        with socket_pair(rq, close=False) as (_, ours):
            try:
                assert _read_associate_rq(ours, time.monotonic() + 1) == rq
                assert admitted
            except _Refused as refused:
                assert not admitted
                assert refused.reply == reject_pdu(1, 1, 1)


# -- Reading PDUs inside an association ----------------------------------------------

_EVENTS = {pdu_type[0]: event for pdu_type, (_, event) in _PDU_TYPES.items()}
_CLASSES = {pdu_type[0]: cls for pdu_type, (cls, _) in _PDU_TYPES.items()}


def acceptor(sock: socket.socket, maximum_pdu_size: int) -> Association:
    """A pynetdicom acceptor association reading from ``sock`` (threads not started)."""
    ae = AE()
    ae.network_timeout = STALL_SECONDS
    assoc = Association(ae, "acceptor")
    assoc.set_socket(AssociationSocket(assoc, client_socket=sock))
    assoc.acceptor.maximum_length = maximum_pdu_size
    assoc.requestor.address_info = AddressInformation("127.0.0.1", 104)
    assoc.dul.event_queue.get_nowait()  # Evt5: connection open
    return assoc


def expected_read(data: bytes, closed: bool, limit: int) -> tuple[str, bytes] | None:
    """(event, reply) for a PDU read that ends without decoding; None: decode it."""
    stalled = ("Evt17", abort_pdu(SOURCE_PROVIDER, REASON_NOT_SPECIFIED))
    if len(data) < 6:
        return ("Evt17", b"") if closed else stalled
    pdu_type, _, length = struct.unpack_from(">BBL", data)
    if pdu_type not in _EVENTS:
        return "Evt17", abort_pdu(SOURCE_PROVIDER, REASON_UNRECOGNISED_PDU)
    if length > limit:
        return "Evt17", abort_pdu(SOURCE_PROVIDER, REASON_INVALID_PARAMETER)
    if len(data) - 6 < length:
        return ("Evt17", b"") if closed else stalled
    return None


def drained(items: queue.Queue[T]) -> list[T]:
    """Everything in ``items``, taken out."""
    found = []
    while not items.empty():
        found.append(items.get_nowait())
    return found


@given(
    data=peer_bytes() | st.builds(pdu, st.integers(1, 7), st.binary(max_size=512)),
    close=st.booleans(),
    maximum_pdu_size=st.sampled_from(MAXIMUM_PDU_SIZES),
)
def test_pdu_read_aborts_refuses_or_hands_on_exactly_one_whole_pdu(
    data: bytes, close: bool, maximum_pdu_size: int
) -> None:
    with socket_pair(data, close) as (peer, ours):
        assoc = acceptor(ours, maximum_pdu_size)
        dul = assoc.dul
        limit = pdu_limit(assoc)
        with within_budget(len(data)), like_the_node():
            read_pdu_bounded(dul)
        events = drained(dul.event_queue)
        reply = received(peer)
        decoded = drained(dul._recv_pdu)
        left_unread = received(ours) if ours.fileno() >= 0 else None
    expected = expected_read(data, close, limit)
    event(f"events {events}, {'abort sent' if reply else 'no reply'}")
    if expected is not None:
        assert (events, reply) == ([expected[0]], expected[1])
        assert decoded == []
        return
    assert reply == b""
    if events == ["Evt19"]:  # malformed: pynetdicom's state machine aborts
        assert decoded == []
        return
    assert events == [_EVENTS[data[0]]]
    assert len(decoded) == 1 and isinstance(decoded[0], _CLASSES[data[0]])
    (length,) = struct.unpack_from(">L", data, 2)
    assert left_unread == data[6 + length :][:65536]  # nothing read past this PDU


# -- pynetdicom's decoders, fed what the bounded read hands on ---------------------


def whole_pdu(data: bytes) -> bytes:
    """``data`` as one PDU of a known type whose length field is true."""
    pdu_type = data[0] if data and 1 <= data[0] <= 7 else 1
    return pdu(pdu_type, data[6:])


@given(
    data=st.one_of(
        associate_requests(),
        st.builds(pdu, st.integers(1, 7), st.binary(max_size=1024)),
        st.sampled_from([associate_rq()]).flatmap(lambda rq: mutated(rq, 8)),
    ).map(whole_pdu)
)
def test_decoders_finish_within_budget_whatever_the_pdu_body(data: bytes) -> None:
    """Any PDU of a known type, of any content, is decoded or refused in bounded time and
    memory (what decoding raises becomes Evt19 in read_pdu_bounded), and a decoded one
    becomes the primitive the state machine hands on."""
    decoded = _CLASSES[data[0]]()
    with within_budget(len(data)), like_the_node():
        try:
            decoded.decode(data)
        except Exception:
            event("not decodable")
            return
        if data[0] not in ACCEPTOR_CONVERTS:
            return
        try:
            decoded.to_primitive()  # what the state machine does next (AE-6, DT-2, ...)
        except Exception:
            # A pynetdicom bug: unpatched, such a PDU ends its association's DUL
            # thread; the node aborts the association instead (tests/fuzz/test_corpus.py).
            event("pynetdicom cannot convert it")
            assert kills_the_dul(data)

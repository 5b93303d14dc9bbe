"""Peers that misbehave: partial PDUs, lying lengths, floods, stalls and cut transfers.

Each test talks raw bytes (tests/rawpeer.py) or pynetdicom to ``dicomnode run``
started as a user starts it, and measures what matters: whether the node answered
with an A-ABORT, how long it took, the receiving processes' memory (from /proc),
whether a legitimate peer still gets in, and what is left in the spool.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from tests.nodeproc import NodeProcess
from tests.rawpeer import (
    associate,
    associate_rq,
    connect,
    p_data,
    read_pdu,
    store_command,
    wait_closed,
)

NETWORK_TIMEOUT = 2.0
REQUEST_TIMEOUT = 1.0
PER_HOST = 8


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    with NodeProcess(
        tmp_path_factory.mktemp("hostile"),
        receive_processes=2,
        network_timeout=NETWORK_TIMEOUT,
        association_request_timeout=REQUEST_TIMEOUT,
        max_connections_per_host=PER_HOST,
    ) as running:
        _wait_for_receivers(running, 2)
        yield running


def _wait_for_receivers(node: NodeProcess, count: int) -> None:
    deadline = time.monotonic() + 30
    while len(node.serving_pids()) < count and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(node.serving_pids()) == count


def _status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _rss_kib(node: NodeProcess) -> int:
    return sum(_status(pid, "VmRSS") for pid in node.serving_pids())


def _threads(node: NodeProcess) -> int:
    return sum(_status(pid, "Threads") for pid in node.serving_pids())


def _fds(node: NodeProcess) -> int:
    """Open spool files of the receiving processes (sockets: test_receive.py)."""
    count = 0
    for pid in node.serving_pids():
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except FileNotFoundError:  # closed while we looked
                continue
            count += target.endswith(".part")
    return count


def _echo(node: NodeProcess, timeout: float = 5) -> float:
    """Seconds for a C-ECHO from 127.0.0.1 to be answered; raises if it is not."""
    ae = AE(ae_title="GOODPEER")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = timeout
    started = time.monotonic()
    assoc = ae.associate("127.0.0.1", node.port, ae_title="DICOMNODE")
    assert assoc.is_established, "a legitimate peer was refused"
    status = assoc.send_c_echo()
    assoc.release()
    assert status is not None and status.Status == 0
    return time.monotonic() - started


def _is_abort(data: bytes) -> bool:
    return len(data) >= 10 and data[0] == 0x07


def test_header_claiming_4_gib_is_aborted_before_anything_is_allocated(
    node: NodeProcess,
) -> None:
    before = _rss_kib(node)
    # One source address each: the per-host cap is not what this test is about.
    socks = [connect(node.port, source=f"127.0.2.{number + 1}") for number in range(20)]
    try:
        for sock in socks:
            sock.sendall(struct.pack(">BBL", 0x01, 0, 0xFFFFFFFF))
        for sock in socks:
            took, received = wait_closed(sock, 5)
            assert _is_abort(received), received
            assert took < 2
    finally:
        for sock in socks:
            sock.close()
    # 20 claims of 4 GiB each: the receivers grew by far less than one MiB each.
    assert _rss_kib(node) - before < 20 * 1024


def test_associate_rq_longer_than_64_kib_is_aborted_unread(node: NodeProcess) -> None:
    with connect(node.port) as sock:
        sock.sendall(struct.pack(">BBL", 0x01, 0, 256 * 1024 * 1024) + b"\0" * 1024)
        took, received = wait_closed(sock, 5)
        assert _is_abort(received)
        assert took < 2


def test_pdu_longer_than_advertised_is_aborted_inside_an_association(
    node: NodeProcess,
) -> None:
    with associate(node.port) as sock:
        sock.sendall(struct.pack(">BBL", 0x04, 0, 256 * 1024 * 1024))
        took, received = wait_closed(sock, 5)
        assert _is_abort(received)
        assert took < 2


def test_first_pdu_of_unknown_type_is_aborted_at_once(node: NodeProcess) -> None:
    with connect(node.port) as sock:
        sock.sendall(struct.pack(">BBL", 0x55, 0, 4) + b"abcd")
        took, received = wait_closed(sock, 5)
        assert _is_abort(received)
        assert took < 2


def test_unknown_pdu_type_inside_an_association_is_aborted_at_once(node: NodeProcess) -> None:
    with associate(node.port) as sock:
        sock.sendall(struct.pack(">BBL", 0x55, 0, 4) + b"abcd")
        took, received = wait_closed(sock, 5)
        assert _is_abort(received)
        assert took < 2


def test_associate_rq_without_presentation_context_is_rejected(node: NodeProcess) -> None:
    with connect(node.port) as sock:
        sock.sendall(associate_rq(abstract_syntaxes=()))
        pdu_type, body = read_pdu(sock)
        assert pdu_type == 0x03  # A-ASSOCIATE-RJ
        assert body[1:4] == b"\x01\x01\x01"  # rejected-permanent, service-user, no reason


def test_half_sent_request_is_closed_after_the_association_request_timeout(
    node: NodeProcess,
) -> None:
    with connect(node.port) as sock:
        sock.sendall(associate_rq()[:40])
        took, received = wait_closed(sock, 10)
        assert _is_abort(received)
        assert REQUEST_TIMEOUT * 0.8 < took < REQUEST_TIMEOUT + 2


def test_pdu_stalled_mid_transfer_is_aborted_after_the_network_timeout(
    node: NodeProcess,
) -> None:
    with associate(node.port) as sock:
        sock.sendall(p_data(3, 0x03, store_command("1.2.3.4.5"))[:-8])  # 8 bytes short
        took, received = wait_closed(sock, 15)
        assert _is_abort(received)
        assert NETWORK_TIMEOUT * 0.8 < took < NETWORK_TIMEOUT + 2


def test_partial_headers_from_80_sockets_do_not_lock_out_a_real_peer(
    node: NodeProcess,
) -> None:
    socks = []
    for number in range(80):
        sock = connect(node.port, source=f"127.0.1.{number % 250 + 1}")
        sock.sendall(struct.pack(">BBL", 0x01, 0, 200))  # a header, and no body
        socks.append(sock)
    try:
        for _ in range(3):
            _echo(node)
    finally:
        for sock in socks:
            sock.close()


def test_500_idle_sockets_from_one_host_do_not_lock_out_another(node: NodeProcess) -> None:
    threads_before = _threads(node)
    socks = []
    try:
        for _ in range(500):
            try:
                socks.append(connect(node.port, source="127.0.0.2", timeout=2))
            except OSError:  # refused or reset: the per-host cap at work
                pass
        for _ in range(5):
            _echo(node)
        # Beyond its cap the host's connections were closed, not given threads.
        assert _threads(node) - threads_before <= 2 * PER_HOST + 8
    finally:
        for sock in socks:
            sock.close()


def _spool_files(node: NodeProcess) -> list[Path]:
    # One folder per receiving process; the files are what matter.
    return sorted(p for p in (node.data_dir / "spool").rglob("*") if p.is_file())


def _cut_stores(node: NodeProcess, count: int) -> None:
    for number in range(count):
        # One source address each: the per-host cap is not what this is about.
        with associate(node.port, source=f"127.0.3.{number % 250 + 1}") as sock:
            sock.sendall(p_data(3, 0x03, store_command(f"1.2.3.{number}")))
            # A dataset fragment that is not the last: the spool file is open now.
            sock.sendall(p_data(3, 0x00, b"\x08\x00\x16\x00" + b"\0" * 4000))
            if number % 2:
                sock.sendall(struct.pack(">BBLBBBB", 0x07, 0, 4, 0, 0, 0, 0))  # A-ABORT


def test_cut_stores_leave_no_spool_files_or_fds(node: NodeProcess) -> None:
    _cut_stores(node, 4)  # warm up: every process has its index connections open
    time.sleep(1)
    _cut_stores(node, 40)
    deadline = time.monotonic() + 10
    while (_spool_files(node) or _fds(node)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _spool_files(node) == []
    assert _fds(node) == 0
    assert "spool_discarded" in node.log_text()


def test_refusals_are_logged_with_the_reason(node: NodeProcess) -> None:
    with connect(node.port) as sock:
        sock.sendall(struct.pack(">BBL", 0x01, 0, 0xFFFFFFFF))
        wait_closed(sock, 5)
        deadline = time.monotonic() + 5
        while "A-ASSOCIATE-RQ too long" not in node.log_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "association_request_refused" in node.log_text()
        assert "A-ASSOCIATE-RQ too long" in node.log_text()


def test_node_still_serves_after_every_probe(node: NodeProcess) -> None:
    assert _echo(node) < 5
    with socket.create_connection(("127.0.0.1", node.port), timeout=2):
        pass


def test_an_aborted_association_leaves_a_trace_of_each_hand_off(node: NodeProcess) -> None:
    """When a peer gives up (as a sender does after its DIMSE timeout), the node says
    how far each hand-off got: PDUs read, messages decoded and served, PDUs sent."""
    before = len(node.log_text())
    with associate(node.port, source="127.0.4.1") as sock:
        sock.sendall(p_data(3, 0x03, store_command("1.2.3.4.6")))
        sock.sendall(p_data(3, 0x00, b"\x08\x00\x16\x00" + b"\0" * 100))  # dataset begun
        sock.sendall(struct.pack(">BBLBBBB", 0x07, 0, 4, 0, 0, 0, 0))  # A-ABORT
        wait_closed(sock, 5)
    deadline = time.monotonic() + 5
    while "action=association_trace" not in node.log_text()[before:]:
        assert time.monotonic() < deadline, node.log_text()[before:]
        time.sleep(0.05)
    (record,) = [
        line for line in node.log_text()[before:].splitlines() if "action=association_trace" in line
    ]
    # Two P-DATA and the A-ABORT (the admission gate read the A-ASSOCIATE-RQ); the
    # A-ASSOCIATE-AC out; the C-STORE never completed: no message decoded or served.
    assert "pdus_in=3" in record and "last_pdu_type=7" in record and "pdus_out=1" in record
    assert "messages_decoded=0" in record and "messages_taken=0" in record
    assert "pdu_in_ago_s=" in record

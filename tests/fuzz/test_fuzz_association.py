"""Fuzz the association state machine of a running node with raw PDU sequences.

Against one ``dicomnode run`` (tests/fuzz/conftest.py: 2 receiving processes, 1 s
network and request timeouts), Hypothesis sends short sequences of PDUs on a raw
socket: A-ASSOCIATE-RQs valid and mutated, P-DATA fragments with random context IDs
and control bytes, C-STOREs cut up and broken, release RQ/RP, aborts, unknown types,
a PDU cut short, then closes; mostly waiting for the node's answer to the request
before the rest, at times sending everything at once. After each sequence:

* the node has closed the connection within 2.5 s of our end of stream (no hang);
* a legitimate peer's C-ECHO (pynetdicom) is answered within 2 s;
* the same receiving processes still run, and logged no unhandled exception;
* no spool file is left (``data_dir/spool``);

and over the whole run the receiving processes' memory grew by less than 20 MB.

Budgets: the ``ci`` Hypothesis profile (default) keeps all of tests/fuzz under 60 s;
``HYPOTHESIS_PROFILE=long`` runs many more examples by hand (docs/security.md,
"Fuzzing").
"""

from __future__ import annotations

import socket
import struct
import time

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.fuzz.pdus import ABORT, session_pdus
from tests.fuzz.support import (
    LogReader,
    echo_seconds,
    receivers,
    rss_kib,
    spool_files,
    unhandled,
    warm_up,
)
from tests.nodeproc import NodeProcess
from tests.rawpeer import connect, read_pdu, wait_closed

pytestmark = pytest.mark.timeout(300)

#: Sequences per run: a third of the profile's examples (each costs ~0.1 s of
#: network round trips, against a few ms for the unit-level fuzz tests).
EXAMPLES = max(10, settings().max_examples // 3)
#: How long the node may keep a connection open after our end of stream.
CLOSE_SECONDS = 2.5
#: A legitimate C-ECHO must be answered within this, after every sequence.
ECHO_SECONDS = 2.0
#: What the receiving processes' RSS may grow by over the whole run.
RSS_GROWTH_KIB = 20 * 1024


def framed(stream: bytes) -> list[bytes]:
    """The PDUs the node reads from ``stream``, by their length fields, in order."""
    found = []
    while len(stream) >= 6 and 1 <= stream[0] <= 7:
        (length,) = struct.unpack_from(">L", stream, 2)
        found.append(stream[: 6 + length])
        stream = stream[6 + length :]
    return found


def send(sock: socket.socket, pdus: list[bytes], ending: str, patient: bool) -> None:
    """Send the sequence, then end it: a PDU cut short, an A-ABORT, or nothing more.

    A ``patient`` peer reads the node's answer to its first PDU before it sends the
    rest, as peers do, so the rest reaches an established association; an impatient
    one sends everything at once.
    """
    tail = {"cut": struct.pack(">BBL", 0x04, 0, 1000) + b"\0" * 10, "abort": ABORT}
    try:
        sock.sendall(pdus[0])
        if patient:
            read_pdu(sock)
        for data in [*pdus[1:], tail.get(ending, b"")]:
            sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
    except OSError:  # the node closed first (an abort, a reject): what follows is moot
        pass


def wait_for_no_spool_files(node: NodeProcess, timeout: float = 2.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while (left := spool_files(node)) and time.monotonic() < deadline:
        time.sleep(0.02)
    return [str(path) for path in left]


def test_node_survives_random_pdu_sequences(node: NodeProcess) -> None:
    warm_up(node)  # every receiving process has served: a fair baseline
    processes = sorted(receivers(node))
    rss_before = rss_kib(node)
    log = LogReader(node)

    @settings(
        max_examples=EXAMPLES,
        deadline=None,  # each step has its own limit below
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(
        pdus=session_pdus(),
        ending=st.sampled_from(["close", "cut", "abort"]),
        patient=st.sampled_from([True, True, True, False]),
    )
    def attack(pdus: list[bytes], ending: str, patient: bool) -> None:
        event(f"first PDU type 0x{pdus[0][:1].hex() or '--'}, ending {ending}")
        with connect(node.port, timeout=5) as sock:
            send(sock, pdus, ending, patient)
            try:
                took, _ = wait_closed(sock, CLOSE_SECONDS)
            except TimeoutError:
                pytest.fail(f"the node kept the connection open {CLOSE_SECONDS} s after EOF")
        assert took < CLOSE_SECONDS
        assert echo_seconds(node, timeout=ECHO_SECONDS) < ECHO_SECONDS
        assert node.proc is not None and node.proc.poll() is None, "the node exited"
        assert sorted(receivers(node)) == processes, "a receiving process was replaced"
        assert wait_for_no_spool_files(node) == []
        text = log.new_text()
        assert unhandled(text) == [], text[-4000:]

    attack()
    grew = rss_kib(node) - rss_before
    assert grew < RSS_GROWTH_KIB, f"receiving processes grew by {grew} KiB"

"""Replay the regression corpus (tests/corpus/) against a running node and the decoders.

Every hostile input issue 10 names, and every failing example the fuzz tests found,
is a small file in tests/corpus/ (its README.md says what each one is). Each runs on
every test run: against ``dicomnode run`` (tests/fuzz/conftest.py) as the first bytes
of a connection, inside an association, or as a C-STORE, and the node must answer as
:data:`REPLAYS` says, log no unhandled exception, leave no spool file and still answer
a C-ECHO; the Part 10 files also go through ``inspect_instance`` on their own.

Inputs that show a known bug carry ``xfail(strict=True)`` with the bug in the reason:
when it is fixed the test passes, fails as XPASS, and the mark must go.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dicomnode.errors import InvalidDatasetError
from dicomnode.receive.inspect import inspect_instance
from tests.factories import dataset_bytes
from tests.fuzz.pdus import RELEASE_RQ, stored_dataset
from tests.fuzz.support import (
    BASE_MEMORY_BYTES,
    CORPUS,
    NETWORK_TIMEOUT,
    LogReader,
    echo_seconds,
    response_status,
    spool_files,
    unhandled,
    within_budget,
)
from tests.nodeproc import NodeProcess
from tests.rawpeer import associate, connect, p_data, read_pdu, store_command, wait_closed

pytestmark = pytest.mark.timeout(120)

#: The longest the node may take to answer or close (but for a deliberate stall).
ANSWER_SECONDS = 2.5
#: Statuses a refused C-STORE may carry (receive/status.py): cannot understand,
#: dataset mismatch.
REFUSED = {0xC000, 0xA900}


@dataclass(frozen=True)
class Replay:
    """How a corpus file is sent, and what the node must answer."""

    #: "gate": first bytes of a connection; "assoc": inside an accepted association;
    #: "store": a Part 10 file sent as a C-STORE (its dataset, on context 3);
    #: "command": a C-STORE command set, sent with a valid dataset.
    how: str
    #: "abort", "reject", "abort_after_timeout", "closed", "refused" (a C-STORE failure
    #: status or an A-ABORT).
    expect: str
    #: A known bug this input shows (the test is xfail, strict).
    bug: str | None = None


REPLAYS: dict[str, list[Replay]] = {
    "gate-header-claims-256-mib.bin": [Replay("gate", "abort")],
    "gate-header-claims-4-gib.bin": [Replay("gate", "abort")],
    "gate-associate-rq-without-contexts.bin": [Replay("gate", "reject")],
    "any-unknown-pdu-type-0x55.bin": [Replay("gate", "abort"), Replay("assoc", "abort")],
    "assoc-partial-p-data.bin": [Replay("assoc", "abort_after_timeout")],
    "gate-http-get.bin": [Replay("gate", "abort")],
    "assoc-second-associate-rq.bin": [Replay("assoc", "abort")],
    "store-study-uid-trailing-newline.dcm": [Replay("store", "refused")],
    "store-number-of-frames-minus-5.dcm": [Replay("store", "refused")],
    "command-empty-affected-sop-instance-uid.bin": [Replay("command", "refused")],
    "store-specific-character-set-with-nul.dcm": [Replay("store", "refused")],
    # Found by the fuzz tests.
    # Each of these made a pynetdicom state-machine action raise, which ended its DUL
    # thread unanswered; _patches.do_action_or_abort aborts the association instead.
    "gate-associate-rq-even-context-id.bin": [Replay("gate", "abort")],
    "gate-associate-rq-then-release-rq-at-once.bin": [Replay("gate", "abort")],
    "assoc-a-abort-undefined-source.bin": [Replay("assoc", "closed")],
    "assoc-command-set-without-command-field.bin": [Replay("assoc", "abort")],
}


@dataclass(frozen=True)
class Inspected:
    """What ``inspect_instance`` must do with a corpus file: refuse it, or at least
    stay within budget; and a known bug it shows (xfail, strict)."""

    refused: bool
    bug: str | None = None


INSPECTED: dict[str, Inspected] = {
    "store-study-uid-trailing-newline.dcm": Inspected(refused=True),
    "store-number-of-frames-minus-5.dcm": Inspected(refused=True),
    "store-specific-character-set-with-nul.dcm": Inspected(refused=True),
    "inspect-file-meta-cut-in-long-element.dcm": Inspected(refused=True),
    "inspect-file-meta-unknown-transfer-syntax.dcm": Inspected(refused=True),
    "inspect-deflated-60000-empty-elements.dcm": Inspected(refused=False),
}
#: What inspecting one corpus file may allocate over its size (as in
#: tests/fuzz/test_fuzz_inspect.py: 2 MiB and two 1 MiB inflate steps).
INSPECT_MEMORY_BYTES = BASE_MEMORY_BYTES + 2 * 2**20


def _params(cases: dict[str, list[Replay]]) -> Iterator[object]:
    for name, replays in cases.items():
        for replay in replays:
            marks = [pytest.mark.xfail(strict=True, reason=replay.bug)] if replay.bug else []
            yield pytest.param(name, replay, id=f"{replay.how}:{name}", marks=marks)


def test_every_corpus_file_is_replayed() -> None:
    files = {path.name for path in CORPUS.iterdir() if path.name != "README.md"}
    assert files == set(REPLAYS) | set(INSPECTED)
    readme = (CORPUS / "README.md").read_text(encoding="utf-8")
    assert all(name in readme for name in files), "every corpus file is listed in README.md"


# -- Against the node ------------------------------------------------------------------


def _is_abort(data: bytes) -> bool:
    return len(data) >= 10 and data[0] == 0x07


def _closed_within(sock: socket.socket, seconds: float) -> tuple[float, bytes]:
    try:
        return wait_closed(sock, seconds)
    except TimeoutError:
        pytest.fail(f"no answer and the connection still open after {seconds} s")


def _check_answer(sock: socket.socket, replay: Replay) -> None:
    if replay.expect == "reject":
        pdu_type, body = read_pdu(sock)
        assert pdu_type == 0x03, f"A-ASSOCIATE-RJ expected, got PDU type 0x{pdu_type:02X}"
        assert body[1:4] == b"\x01\x01\x01"  # rejected-permanent, service-user, no reason
        return
    if replay.expect == "abort_after_timeout":
        took, received = _closed_within(sock, NETWORK_TIMEOUT + ANSWER_SECONDS)
        assert _is_abort(received), received.hex()
        assert NETWORK_TIMEOUT * 0.8 < took < NETWORK_TIMEOUT + ANSWER_SECONDS
        return
    if replay.expect == "closed":
        sock.shutdown(socket.SHUT_WR)  # the node owes no answer, only a prompt close
    took, received = _closed_within(sock, ANSWER_SECONDS)
    if replay.expect == "abort":
        assert _is_abort(received), received.hex()
    assert took < ANSWER_SECONDS


def _store(sock: socket.socket, sop_instance_uid: str, command: bytes, dataset: bytes) -> None:
    """Send a C-STORE on context 3 and expect a refusal (a failure status or an abort)."""
    try:
        sock.sendall(p_data(3, 0x03, command) + p_data(3, 0x02, dataset))
    except OSError:
        pass  # aborted while we sent: a refusal too
    status = response_status(sock)
    if status is None:  # the node aborted instead of answering
        return
    assert status in REFUSED, f"C-STORE of {sop_instance_uid!r} answered 0x{status:04X}"
    sock.sendall(RELEASE_RQ)
    assert read_pdu(sock)[0] == 0x06  # A-RELEASE-RP


def _replay(node: NodeProcess, data: bytes, replay: Replay) -> None:
    if replay.how == "gate":
        with connect(node.port) as sock:
            sock.sendall(data)
            _check_answer(sock, replay)
        return
    with associate(node.port) as sock:
        if replay.how == "assoc":
            sock.sendall(data)
            _check_answer(sock, replay)
        elif replay.how == "store":
            uid = _sop_instance_uid(data)
            _store(sock, uid, store_command(uid), dataset_bytes(data))
        else:  # a command set, with a dataset that is fine on its own
            _store(sock, "", data, stored_dataset())


def _sop_instance_uid(part10: bytes) -> str:
    """(0002,0003) Media Storage SOP Instance UID of a file the corpus holds."""
    at = part10.index(b"\x02\x00\x03\x00UI")
    (length,) = struct.unpack_from("<H", part10, at + 6)
    return part10[at + 8 : at + 8 + length].rstrip(b"\0").decode("ascii")


@pytest.mark.parametrize(("name", "replay"), list(_params(REPLAYS)))
def test_corpus_input_is_refused_and_the_node_still_answers(
    node: NodeProcess, name: str, replay: Replay
) -> None:
    log = LogReader(node)
    _replay(node, (CORPUS / name).read_bytes(), replay)
    assert echo_seconds(node) < ANSWER_SECONDS
    assert node.proc is not None and node.proc.poll() is None
    deadline = time.monotonic() + 2
    while spool_files(node) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert spool_files(node) == []
    text = log.new_text()
    assert unhandled(text) == [], text[-4000:]


# -- Through inspect_instance ------------------------------------------------------


def _inspect_params() -> Iterator[object]:
    for name, inspected in INSPECTED.items():
        bug = inspected.bug
        marks = [pytest.mark.xfail(strict=True, reason=bug)] if bug else []
        yield pytest.param(name, inspected, id=name, marks=marks)


def _inspect(path: Path, scratch: Path, refused: bool) -> None:
    if refused:
        with pytest.raises(InvalidDatasetError):
            inspect_instance(path, scratch)
        return
    try:
        inspect_instance(path, scratch)
    except InvalidDatasetError:
        pass


@pytest.mark.parametrize(("name", "inspected"), list(_inspect_params()))
def test_corpus_file_is_handled_by_inspect_within_budget(
    name: str, inspected: Inspected, tmp_path: Path
) -> None:
    path = CORPUS / name
    started = time.monotonic()
    _inspect(path, tmp_path, inspected.refused)
    assert time.monotonic() - started < 1.0
    # Traced apart from the timed run: tracemalloc slows allocation-heavy walks.
    with within_budget(path.stat().st_size, seconds=30, base_bytes=INSPECT_MEMORY_BYTES):
        _inspect(path, tmp_path, inspected.refused)
    assert list(tmp_path.iterdir()) == []

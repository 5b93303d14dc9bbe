"""Log channels over real sockets: other processes' records in the node's one file.

The node's side is a real :class:`~dicomnode.log.NodeLogFile` in ``tmp_path``; the
other side is a real process (spawned with the channel in its environment, as the
supervisor does, or forked, as the start-up check is) or, for the failure cases, a
:class:`~dicomnode.log.ChannelHandler` on a real socket pair.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest

from dicomnode.forked import run_forked
from dicomnode.log import (
    LOG_CHANNEL_ENV,
    MAX_MESSAGE_BYTES,
    SEND_TIMEOUT_S,
    ChannelHandler,
    NodeLogFile,
    PhiGuard,
    StructuredFormatter,
    configure_logging,
    escape_control,
)
from tests.logfmt import parse_line

Style = Literal["text", "json"]
THREADS = 4
RECORDS = 150  # per thread
FORGED = "1.2.3\nts=2026-01-01T00:00:00.000Z level=info role=main action=instance_stored\x00"

#: A child as the supervisor starts one: it finds its channel in the environment and
#: logs from several threads at once, big records and forged values among them.
CHILD = textwrap.dedent(
    f"""
    import logging, sys, threading
    from dicomnode.log import configure_logging, take_channel

    FORGED = {FORGED!r}

    sock, role = take_channel()
    configure_logging("INFO", None, sys.argv[1], role, sock)
    log = logging.getLogger("dicomnode.test")

    def talk(thread):
        for i in range(int(sys.argv[2])):
            big = "x" * 200_000 if i % 50 == 7 else ""
            log.info("record %d %s", i, big, extra={{"action": "talked", "talker": thread,
                     "i": i, "uid": FORGED, "x role=main": FORGED}})
        logging.getLogger("pydicom").debug("CANARY^SECRET")

    threads = [threading.Thread(target=talk, args=(t,)) for t in range(int(sys.argv[3]))]
    for t in threads: t.start()
    for t in threads: t.join()
    """
)


@pytest.fixture
def node_file(tmp_path: Path) -> Iterator[NodeLogFile]:
    log_file = NodeLogFile(tmp_path / "dicomnode.log")
    log_file.setFormatter(StructuredFormatter("json", role="main"))
    log_file.addFilter(PhiGuard())
    yield log_file
    log_file.close()


def start_child(log_file: NodeLogFile, role: str, style: Style) -> subprocess.Popen[bytes]:
    channel = log_file.open_channel(role)
    env = {**os.environ, LOG_CHANNEL_ENV: channel.to_environment()}
    args = [style, str(RECORDS), str(THREADS)]
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, *args], env=env, pass_fds=[channel.child_fd],
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    channel.close_child_end()
    channel.serve()
    return proc


@pytest.mark.parametrize("style", ["text", "json"])
def test_records_of_concurrent_processes_land_whole_in_one_file_with_their_roles(
    tmp_path: Path, style: Style
) -> None:
    log_file = NodeLogFile(tmp_path / "dicomnode.log")
    log_file.setFormatter(StructuredFormatter(style, role="main"))
    log_file.addFilter(PhiGuard())
    roles = ["receiver-2", "receiver-3", "worker-1"]
    procs = [start_child(log_file, role, style) for role in roles]
    node = logging.Logger("dicomnode.test.node")
    node.addHandler(log_file)
    try:
        for i in range(RECORDS):  # the node writes its own records meanwhile
            node.warning("node record", extra={"action": "node_talked", "i": i})
        assert [proc.wait(60) for proc in procs] == [0, 0, 0]
        log_file.join_channels(10)
    finally:
        node.removeHandler(log_file)
        log_file.close()
    text = (tmp_path / "dicomnode.log").read_text(encoding="utf-8")
    assert "CANARY" not in text
    records = [parse_line(line, style) for line in text.splitlines()]
    assert Counter(r["role"] for r in records) == {
        "main": RECORDS,
        **dict.fromkeys(roles, THREADS * RECORDS),
    }
    talked = [r for r in records if r["action"] == "talked"]
    cut = [r for r in talked if "truncated_bytes" in r]
    assert len(cut) == len(roles) * THREADS * (RECORDS // 50)
    assert all(r["msg"].endswith(" [truncated]") for r in cut)
    whole = [r for r in talked if "truncated_bytes" not in r]
    assert (
        {r["uid"] for r in whole} == {r["x_role_main"] for r in whole} == {escape_control(FORGED)}
    )


def test_a_message_that_is_not_a_record_is_written_as_a_refusal(node_file: NodeLogFile) -> None:
    channel = node_file.open_channel("receiver-2")
    peer = socket.socket(fileno=os.dup(channel.child_fd))
    channel.close_child_end()
    channel.serve()
    with peer:
        peer.send(b'{"role": "main", "msg": "a\\nts=1 role=main"}')
        peer.send(b"not json\nts=2026 level=info role=main")
        peer.send(b"[" * 10_000)
        peer.send(b"x" * (MAX_MESSAGE_BYTES + 100))
    node_file.join_channels(10)
    lines = Path(node_file.baseFilename).read_text(encoding="utf-8").splitlines()
    records = [parse_line(line, "json") for line in lines]
    assert [r["role"] for r in records] == ["receiver-2"] * 4
    assert records[0]["msg"] == "a\\x0ats=1 role=main"
    assert [r["action"] for r in records[1:]] == ["log_message_refused"] * 3
    assert records[3]["bytes"] == MAX_MESSAGE_BYTES + 1  # cut by the kernel: refused


def emitting(handler: logging.Handler) -> logging.Logger:
    log = logging.Logger("dicomnode.test.child")
    log.addHandler(handler)
    return log


def test_a_child_whose_node_is_gone_neither_blocks_nor_raises(
    capsys: pytest.CaptureFixture[str],
) -> None:
    child_end, node_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    node_end.close()  # the node died
    handler = ChannelHandler(child_end, StructuredFormatter("text", "worker-1"))
    log = emitting(handler)
    started = time.monotonic()
    for i in range(100):
        log.info("after the node", extra={"action": "orphan_talked", "i": i})
    assert time.monotonic() - started < SEND_TIMEOUT_S
    assert handler.dropped == 100
    handler.close()
    assert capsys.readouterr().err == ""  # no "--- Logging error ---"


def test_a_child_that_cannot_send_in_time_drops_and_later_says_how_many(
    node_file: NodeLogFile,
) -> None:
    channel = node_file.open_channel("worker-1")
    handler = ChannelHandler(
        socket.socket(fileno=os.dup(channel.child_fd)), StructuredFormatter("json", "worker-1")
    )
    channel.close_child_end()
    log = emitting(handler)
    big = "y" * (MAX_MESSAGE_BYTES // 2)  # the node does not read yet: its queue fills
    attempts = 0
    started = time.monotonic()
    while handler.dropped == 0:
        log.info(big, extra={"action": "filled", "i": attempts})
        attempts += 1
    assert SEND_TIMEOUT_S <= time.monotonic() - started < 5  # it waited, once
    started = time.monotonic()
    for i in range(100):  # and now waits no more: what does not fit is dropped
        log.info(big, extra={"action": "stalled", "i": i})
    attempts += 100
    assert time.monotonic() - started < SEND_TIMEOUT_S
    assert handler.dropped > 0
    channel.serve()  # the node reads again
    log.info("after", extra={"action": "recovered"})
    attempts += 1
    handler.close()  # reports what it has dropped and not reported yet
    node_file.join_channels(10)
    lines = Path(node_file.baseFilename).read_text(encoding="utf-8").splitlines()
    records = [parse_line(line, "json") for line in lines]
    written = [r for r in records if r["action"] in ("filled", "stalled", "recovered")]
    notices = [r for r in records if r["action"] == "log_records_dropped"]
    # Every record is in the file or counted in a notice, the last one included.
    assert len(written) + sum(r["dropped"] for r in notices) == attempts
    assert records[-1]["action"] == "log_records_dropped"
    assert {r["role"] for r in records} == {"worker-1"}


def _log_from_startup() -> None:
    logging.getLogger("dicomnode.test").info(
        "checked", extra={"action": "startup_checked", "pid": os.getpid()}
    )


def test_the_forked_startup_child_logs_through_the_node(tmp_path: Path) -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure_logging("INFO", tmp_path, "text", "main")
        run_forked(_log_from_startup)
        logging.getLogger("dicomnode.test").info("after", extra={"action": "node_went_on"})
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
            if isinstance(handler, NodeLogFile):
                handler.close()
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
        logging.captureWarnings(False)
    lines = (tmp_path / "dicomnode.log").read_text(encoding="utf-8").splitlines()
    records = [parse_line(line) for line in lines]
    assert [(r["role"], r["action"]) for r in records] == [
        ("startup", "startup_checked"),
        ("main", "node_went_on"),
    ]
    assert int(records[0]["pid"]) != os.getpid()

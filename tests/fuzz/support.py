"""What the fuzz tests share: the per-example budget, the hostile node and its probes.

Every unit-level fuzz example runs under :func:`within_budget`: it must finish in
:data:`EXAMPLE_SECONDS` of CPU time (and a SIGALRM after :data:`HANG_SECONDS` turns a
wait that never ends into a failing, shrinkable example), and its peak of Python
allocations (tracemalloc) must stay under :data:`BASE_MEMORY_BYTES` plus the size of
the input, so nothing allocates what a length field claims.
"""

from __future__ import annotations

import re
import signal
import socket
import struct
import threading
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom import config as pydicom_config
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.dsutils import decode, encode
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from tests.factories import small_ct
from tests.nodeproc import NodeProcess, children
from tests.rawpeer import VERIFICATION, read_pdu

__all__ = [
    "BASE_MEMORY_BYTES",
    "CORPUS",
    "EXAMPLE_SECONDS",
    "HANG_SECONDS",
    "Hang",
    "LogReader",
    "Usage",
    "echo_command",
    "echo_seconds",
    "like_the_node",
    "node_settings",
    "receivers",
    "response_status",
    "rss_kib",
    "spool_files",
    "unhandled",
    "wait_for_receivers",
    "warm_up",
    "within_budget",
]

#: The CPU time one example may take ("no hang over 1 s").
EXAMPLE_SECONDS = 1.0
#: The wall-clock time after which an example is taken to hang, whatever its CPU.
HANG_SECONDS = 5.0
#: What one example may allocate on top of its input.
BASE_MEMORY_BYTES = 2 * 2**20
#: The regression corpus: every hostile input named in issue 10 and every failing
#: example the fuzz tests found (tests/corpus/README.md).
CORPUS = Path(__file__).resolve().parent.parent / "corpus"

#: The node the network fuzz tests attack: short timeouts so stalls end quickly, no
#: worker (nothing here makes a job; a worker would import torch on 2 cores).
NETWORK_TIMEOUT = 1.0
REQUEST_TIMEOUT = 1.0


class Hang(Exception):
    """An example ran past its time budget (raised by SIGALRM inside it)."""


@dataclass
class Usage:
    """What the block under :func:`within_budget` used."""

    seconds: float = 0.0
    peak_bytes: int = 0


@contextmanager
def within_budget(
    input_bytes: int,
    seconds: float = EXAMPLE_SECONDS,
    base_bytes: int = BASE_MEMORY_BYTES,
) -> Iterator[Usage]:
    """Run the block with a time limit and trace its allocations; assert both bounds.

    The block may use ``seconds`` of this thread's CPU time: a loop that does not end
    fails, while a pause of the whole machine (2 shared cores) does not. A block
    still running after :data:`HANG_SECONDS` of wall-clock time, waiting on something
    that never comes, gets :class:`Hang` raised inside it (SIGALRM, main thread
    only). It fails when its tracemalloc peak exceeds ``base_bytes`` +
    ``input_bytes``.
    """
    usage = Usage()
    alarm = threading.current_thread() is threading.main_thread()
    previous: Any = None
    outer = (0.0, 0.0)  # pytest-timeout's own SIGALRM timer, if it set one

    def on_alarm(_signum: int, _frame: object) -> None:
        raise Hang(f"still running after {HANG_SECONDS} s")

    if alarm:
        previous = signal.signal(signal.SIGALRM, on_alarm)
        outer = signal.setitimer(signal.ITIMER_REAL, HANG_SECONDS)
        if outer[0] and outer[0] < HANG_SECONDS:
            signal.setitimer(signal.ITIMER_REAL, outer[0])  # the sooner one still counts
    started_tracing = not tracemalloc.is_tracing()
    if started_tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    baseline = tracemalloc.get_traced_memory()[0]
    started, started_wall = time.thread_time(), time.monotonic()
    try:
        yield usage
    finally:
        usage.seconds = time.thread_time() - started
        usage.peak_bytes = tracemalloc.get_traced_memory()[1] - baseline
        if started_tracing:
            tracemalloc.stop()
        if alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
            if outer[0]:  # give pytest-timeout its timer back, less the time spent here
                left = outer[0] - (time.monotonic() - started_wall)
                signal.setitimer(signal.ITIMER_REAL, max(left, 0.001), outer[1])
    limit = base_bytes + input_bytes
    assert usage.seconds < seconds, f"took {usage.seconds:.2f} s of CPU (budget {seconds} s)"
    assert usage.peak_bytes <= limit, (
        f"allocated {usage.peak_bytes} bytes at peak for {input_bytes} bytes of input "
        f"(bound {limit})"
    )


@contextmanager
def like_the_node() -> Iterator[None]:
    """Decode as a receiving process does: pydicom does not validate values.

    ``dicomnode.receive._patches.install`` sets this process-wide in the node; here
    it is set for the block only, so other tests see pydicom's defaults.
    """
    settings = pydicom_config.settings
    previous = settings.reading_validation_mode
    settings.reading_validation_mode = pydicom_config.IGNORE
    try:
        yield
    finally:
        settings.reading_validation_mode = previous


# -- The node under attack -----------------------------------------------------------


def node_settings() -> dict[str, Any]:
    """NodeProcess keyword arguments for a node the fuzz tests attack."""
    return {
        "receive_processes": 2,
        "network_timeout": NETWORK_TIMEOUT,
        "association_request_timeout": REQUEST_TIMEOUT,
        "extra_toml": "[worker]\ncount = 0\n",
    }


def receivers(node: NodeProcess) -> list[int]:
    """The node's serving process and its receiving children."""
    assert node.proc is not None
    found = [node.proc.pid]
    for pid in children(node.proc.pid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:  # gone while we looked
            continue
        if b" receive " in cmdline:
            found.append(pid)
    return found


def wait_for_receivers(node: NodeProcess, count: int, timeout: float = 30) -> None:
    """Block until ``count`` receiving processes (the node's included) listen."""
    deadline = time.monotonic() + timeout

    def ready() -> bool:
        listening = node.log_text().count("action=scp_listening")
        return len(receivers(node)) == count and listening >= count

    while not ready() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ready(), node.log_text()[-4000:]


def rss_kib(node: NodeProcess) -> int:
    """Resident memory of the receiving processes together, in KiB (from /proc)."""
    total = 0
    for pid in receivers(node):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def spool_files(node: NodeProcess) -> list[Path]:
    """Files under ``data_dir/spool`` (one folder per receiving process)."""
    return sorted(p for p in (node.data_dir / "spool").rglob("*") if p.is_file())


def echo_seconds(node: NodeProcess, timeout: float = 2) -> float:
    """Seconds for a legitimate C-ECHO (pynetdicom SCU) to succeed; fails otherwise."""
    ae = AE(ae_title="GOODPEER")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = timeout
    started = time.monotonic()
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.is_established, "a legitimate peer was refused"
    status = assoc.send_c_echo()
    assoc.release()
    assert status is not None and status.Status == 0, status
    return time.monotonic() - started


def warm_up(node: NodeProcess, rounds: int = 20) -> None:
    """Make every receiving process serve C-ECHOs and C-STOREs a few times.

    A receiving process imports and allocates what it needs on its first
    associations (+57 MB for a fresh one, measured), which is not growth caused by
    what the fuzz tests send. With 20 rounds, each of 2 processes is hit (the
    kernel picks one per connection) but with a chance of 2 in a million.
    """
    ae = AE(ae_title="WARMUP")
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 10
    # Built before associating: the node aborts a peer idle for its 1 s network timeout.
    datasets = [
        small_ct(sop_instance_uid=f"1.2.826.0.1.3680043.10.9.{number + 1}", rows=4, columns=4)
        for number in range(rounds)
    ]
    for ds in datasets:
        assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0
        assert assoc.send_c_store(ds).Status == 0
        assoc.release()


_EXCEPTION_LINE = re.compile(r"[A-Za-z_][\w.]*(: .*)?")


def unhandled(text: str) -> list[str]:
    """Exceptions nobody handled in a stretch of the node's log.

    Returns the last line of each traceback (a thread's, printed to stderr; log
    records of other threads may be interleaved with it) and each crashed C-STORE
    record.
    """
    lines = text.splitlines()
    found = [line for line in lines if "action=store_crashed" in line]
    for number, line in enumerate(lines):
        if not line.startswith("Traceback (most recent call last):"):
            continue
        block = []
        for later in lines[number + 1 :]:
            block.append(later)
            if not later.startswith((" ", "ts=")) and _EXCEPTION_LINE.fullmatch(later):
                break
        found.append(block[-1] if block else line)
    return found


class LogReader:
    """What the node logged since the last look."""

    def __init__(self, node: NodeProcess) -> None:
        self.path = node.log
        self.offset = self.path.stat().st_size

    def new_text(self) -> str:
        with self.path.open("rb") as log:
            log.seek(self.offset)
            data = log.read()
        self.offset += len(data)
        return data.decode("utf-8", errors="replace")


def echo_command(message_id: int = 1) -> bytes:
    """An encoded C-ECHO-RQ command set (implicit VR LE, PS3.7 9.3.5)."""
    command = Dataset()
    command.AffectedSOPClassUID = VERIFICATION
    command.CommandField = 0x0030
    command.MessageID = message_id
    command.CommandDataSetType = 0x0101
    body = encode(command, True, True)
    assert body is not None
    command.CommandGroupLength = len(body)
    encoded = encode(command, True, True)
    assert encoded is not None
    return bytes(encoded)


def response_status(sock: socket.socket) -> int | None:
    """The Status of the next DIMSE response on ``sock``; None if it was not one.

    Reads one PDU: a P-DATA-TF whose single PDV is a whole command set.
    """
    pdu_type, body = read_pdu(sock)
    if pdu_type != 0x04 or len(body) < 6:
        return None
    (item_length,) = struct.unpack_from(">L", body)
    command = decode(BytesIO(body[6 : 4 + item_length]), True, True)
    return int(command.Status)

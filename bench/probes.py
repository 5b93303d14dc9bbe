"""The hostile-peer probes of issue 10, run against ``dicomnode run`` with its defaults.

Each probe is what a port scanner, a half-dead modality or an attacker on the
network can do with a few bytes; each figure is what ``docs/security.md`` quotes:

- partial: 80 sockets send a 6-byte PDU header and nothing more; a C-ECHO from
  another host is timed while they are open, and how long the node keeps them;
- idle: 500 sockets from 127.0.0.2 that never send anything; C-ECHO from
  127.0.0.1 timed 10 times; threads of the receiving processes;
- claim: 20 sockets each send a header claiming 0xFFFFFFFF bytes; the receiving
  processes' RSS before and after, and the time to the A-ABORT;
- stream: one A-ASSOCIATE-RQ claiming 256 MiB, streamed; bytes the node took
  before it closed the connection;
- stall: a C-STORE command PDU 8 bytes short; seconds until the node aborts;
- cut: 40 C-STOREs cut off mid-dataset (TCP close or A-ABORT); spool files and
  descriptors left.

    .venv/bin/python bench/probes.py
"""

from __future__ import annotations

import json
import os
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from tests.nodeproc import NodeProcess
from tests.rawpeer import associate, connect, p_data, store_command, wait_closed


def status(pids: list[int], key: str) -> int:
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                total += int(line.split()[1])
    return total


def echo_seconds(port: int, timeout: float = 10) -> float:
    ae = AE(ae_title="GOODPEER")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = timeout
    started = time.monotonic()
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMNODE")
    if not assoc.is_established:
        return float("inf")
    result = assoc.send_c_echo()
    assoc.release()
    ok = result is not None and result.Status == 0
    return time.monotonic() - started if ok else float("inf")


def probe_partial(node: NodeProcess) -> dict[str, float]:
    socks = []
    for number in range(80):
        sock = connect(node.port, source=f"127.0.1.{number + 1}")
        sock.sendall(struct.pack(">BBL", 0x01, 0, 200))
        socks.append(sock)
    echoes = [echo_seconds(node.port) for _ in range(5)]
    held, _ = wait_closed(socks[0], 60)
    for sock in socks:
        sock.close()
    return {"echo_max_s": round(max(echoes), 3), "held_s": round(held, 1)}


def probe_idle(node: NodeProcess) -> dict[str, float]:
    pids = node.serving_pids()
    threads_before = status(pids, "Threads")
    socks = []
    opened_at = time.monotonic()
    for _ in range(500):
        try:
            socks.append(connect(node.port, source="127.0.0.2", timeout=5))
        except OSError:
            pass
    opened = time.monotonic() - opened_at
    threads = status(pids, "Threads")
    echoes = [echo_seconds(node.port) for _ in range(10)]
    for sock in socks:
        sock.close()
    return {
        "open_500_s": round(opened, 2),
        "echo_max_s": round(max(echoes), 3),
        "echo_median_s": round(sorted(echoes)[5], 3),
        "threads_before": threads_before,
        "threads_during": threads,
    }


def probe_claim(node: NodeProcess) -> dict[str, float]:
    pids = node.serving_pids()
    before = status(pids, "VmRSS")
    socks = [connect(node.port) for _ in range(20)]
    for sock in socks:
        sock.sendall(struct.pack(">BBL", 0x01, 0, 0xFFFFFFFF))
    took = [wait_closed(sock, 30)[0] for sock in socks]
    after = status(pids, "VmRSS")
    for sock in socks:
        sock.close()
    return {"rss_delta_mb": round((after - before) / 1024, 1), "abort_max_s": round(max(took), 3)}


def probe_stream(node: NodeProcess) -> dict[str, float]:
    sock = connect(node.port)
    sent = 0
    chunk = b"\0" * 65536
    try:
        sock.sendall(struct.pack(">BBL", 0x01, 0, 256 * 1024 * 1024))
        while sent < 256 * 1024 * 1024:
            sock.sendall(chunk)
            sent += len(chunk)
    except OSError:
        pass
    sock.close()
    return {"bytes_sent_before_close": sent}


def probe_stall(node: NodeProcess) -> dict[str, float]:
    with associate(node.port) as sock:
        sock.sendall(p_data(3, 0x03, store_command("1.2.3.4"))[:-8])
        took, _ = wait_closed(sock, 120)
    return {"aborted_after_s": round(took, 1)}


def probe_cut(node: NodeProcess) -> dict[str, float]:
    for number in range(40):
        with associate(node.port) as sock:
            sock.sendall(p_data(3, 0x03, store_command(f"1.2.3.{number}")))
            sock.sendall(p_data(3, 0x00, b"\x08\x00\x16\x00" + b"\0" * 4000))
            if number % 2:
                sock.sendall(struct.pack(">BBLBBBB", 0x07, 0, 4, 0, 0, 0, 0))
    time.sleep(2)
    files = [p for p in (node.data_dir / "spool").rglob("*") if p.is_file()]
    part_fds = 0
    for pid in node.serving_pids():
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                part_fds += os.readlink(fd).endswith(".part")
            except OSError:
                continue
    return {"spool_files_left": len(files), "spool_fds_left": part_fds}


def main() -> None:
    node = NodeProcess(Path(tempfile.mkdtemp(prefix="probes-")))
    node.start()
    time.sleep(3)  # every receiving process up
    results = {}
    try:
        for name, probe in [
            ("partial", probe_partial),
            ("idle", probe_idle),
            ("claim", probe_claim),
            ("stream", probe_stream),
            ("stall", probe_stall),
            ("cut", probe_cut),
        ]:
            results[name] = probe(node)
            print(name, json.dumps(results[name]), flush=True)
        results["after_all"] = {"echo_s": round(echo_seconds(node.port), 3)}
    finally:
        node.stop(timeout=60)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

"""Soak: thousands of associations, some cut off, and the receivers return to baseline.

``dicomnode run`` (its defaults: 2 receiving processes, a worker) receives
``--associations`` associations from two sender threads. Each association is one of:

- echo + store: a C-ECHO, then one small CT instance (pynetdicom SCU), released;
- aborted: the same, then an A-ABORT instead of a release;
- cut: a raw C-STORE that stops mid-dataset and closes the TCP connection.

``--cut-share`` of them are cut and as many aborted. Every ``--sample`` associations
the script records the receiving processes' RSS, threads and open descriptors. The
figures: each resource at the first sample (after warm-up) and at the end, and the
RSS slope in MB per 1,000 associations (least squares over the samples). Target
(issue 10): slope <= 1 MB per 1,000 associations, threads and descriptors back to
baseline.

    .venv/bin/python bench/soak.py --associations 10000
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from tests.factories import small_ct
from tests.nodeproc import NodeProcess
from tests.rawpeer import associate, p_data, store_command


def resources(pids: list[int]) -> dict[str, float]:
    rss = threads = fds = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss += int(line.split()[1])
            elif line.startswith("Threads:"):
                threads += int(line.split()[1])
        fds += len(os.listdir(f"/proc/{pid}/fd"))
    return {"rss_mb": round(rss / 1024, 1), "threads": threads, "fds": fds}


class Sender:
    """Sends associations of the three kinds; counts what happened."""

    def __init__(self, port: int, cut_share: float) -> None:
        self.port = port
        self.cut_every = max(1, round(1 / cut_share)) if cut_share else 0
        self.ae = AE(ae_title="SOAKSCU")
        self.ae.add_requested_context(Verification)
        self.ae.add_requested_context(CTImageStorage)
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = 30
        self.counts = {"stored": 0, "aborted": 0, "cut": 0, "failed": 0}
        self.lock = threading.Lock()

    def one(self, number: int) -> None:
        kind = "store"
        if self.cut_every and number % self.cut_every == 0:
            kind = "cut"
        elif self.cut_every and number % self.cut_every == 1:
            kind = "abort"
        if kind == "cut":
            with associate(self.port) as sock:
                sock.sendall(p_data(3, 0x03, store_command(f"1.2.826.0.1.{number}")))
                sock.sendall(p_data(3, 0x00, b"\x08\x00\x16\x00" + b"\0" * 2000))
            self._count("cut")
            return
        assoc = self.ae.associate("127.0.0.1", self.port, ae_title="DICOMNODE")
        if not assoc.is_established:
            self._count("failed")
            return
        echo = assoc.send_c_echo()
        status = assoc.send_c_store(small_ct())
        ok = echo is not None and status is not None and getattr(status, "Status", 1) == 0
        if kind == "abort":
            assoc.abort()
            self._count("aborted")
        else:
            assoc.release()
        if not ok:
            self._count("failed")
        elif kind == "store":
            self._count("stored")

    def _count(self, key: str) -> None:
        with self.lock:
            self.counts[key] += 1


def slope_per_1000(samples: list[tuple[int, float]]) -> float:
    xs = [x for x, _ in samples]
    ys = [y for _, y in samples]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    num = sum((x - mean_x) * (y - mean_y) for x, y in samples)
    den = sum((x - mean_x) ** 2 for x in xs)
    return round(1000 * num / den, 3) if den else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--associations", type=int, default=10000)
    parser.add_argument("--cut-share", type=float, default=0.1)
    parser.add_argument("--sample", type=int, default=500)
    parser.add_argument("--warm-up", type=int, default=500)
    args = parser.parse_args()

    node = NodeProcess(Path(tempfile.mkdtemp(prefix="soak-")), study_quiet_seconds=3600)
    node.start()
    time.sleep(3)
    sender = Sender(node.port, args.cut_share)
    pids = node.serving_pids()
    numbers = iter(range(args.associations))
    numbers_lock = threading.Lock()
    done = [0]
    samples: list[tuple[int, dict[str, float]]] = [(0, resources(pids))]
    started = time.monotonic()

    def work() -> None:
        while True:
            with numbers_lock:
                number = next(numbers, None)
            if number is None:
                return
            sender.one(number)
            with numbers_lock:
                done[0] += 1

    threads = [threading.Thread(target=work) for _ in range(2)]
    for thread in threads:
        thread.start()
    next_sample = args.sample
    while any(thread.is_alive() for thread in threads):
        time.sleep(0.2)
        if done[0] >= next_sample:
            samples.append((done[0], resources(pids)))
            print(f"{done[0]:>6} {json.dumps(samples[-1][1])}", flush=True)
            next_sample += args.sample
    elapsed = time.monotonic() - started
    time.sleep(5)  # let the last associations end
    final = resources(pids)
    node.stop(timeout=120)
    steady = [(n, r["rss_mb"]) for n, r in samples if n >= args.warm_up]
    base = next(r for n, r in samples if n >= args.warm_up)
    print(
        json.dumps(
            {
                "associations": args.associations,
                "counts": sender.counts,
                "elapsed_s": round(elapsed, 1),
                "per_second": round(args.associations / elapsed, 1),
                "baseline_after_warm_up": base,
                "start": samples[0][1],
                "end": final,
                "rss_slope_mb_per_1000": slope_per_1000(steady),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

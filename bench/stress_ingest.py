"""Receiving under model load: CT studies sent back to back while ct-lesion-seg runs.

The scenario that once left an association without a C-STORE response for 30 s
(issue 10): eight 120-slice CT studies, one association each, sent one after the
other to ``dicomnode run`` with a ``ct-lesion-seg`` pipeline and a worker, so the
scheduler marks studies stable and the worker runs inference on both cores while
later studies are still arriving. Repeated ``--rounds`` times on one node. Each
C-STORE is timed from request to response by a pynetdicom SCU whose DIMSE timeout
(30 s) is the one the stalled sender had.

Reported: associations aborted or refused, C-STORE failures, the response time
p50 / p99 / max over every C-STORE, and the node's ``store_slow`` records (each store
over 1 s, with the time of each step: inspect, fsync, queue wait, writers' lock,
index, folder fsync, commit). Targets (issue 10): 0 aborted associations and p99 <= 0.5 s.

    .venv/bin/python bench/stress_ingest.py --rounds 3
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.load import CT_PIPELINE, make_studies, send_study, slow_stores
from tests.nodeproc import NodeProcess


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--studies", type=int, default=8)
    parser.add_argument("--slices", type=int, default=120)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--quiet", type=float, default=2.0)
    parser.add_argument(
        "--stock-sender",
        action="store_true",
        help="send with pynetdicom's requestor as it is (it loses a response now and then)",
    )
    args = parser.parse_args()

    studies = make_studies(args.studies, args.slices)
    folder = Path(tempfile.mkdtemp(prefix="stress-"))
    node = NodeProcess(
        folder,
        study_quiet_seconds=args.quiet,
        extra_toml=CT_PIPELINE.format(workers=args.workers),
    )
    node.start()
    results = []
    started = time.monotonic()
    try:
        for round_number in range(args.rounds):
            for study in studies:
                results.append(
                    send_study(node.port, study, round_number, guarded=not args.stock_sender)
                )
            print(f"round {round_number + 1}/{args.rounds} sent", flush=True)
    finally:
        node.stop(timeout=120)
    elapsed = time.monotonic() - started
    times = [t for r in results for t in r.times]
    slow = slow_stores(node.log_text())
    summary = {
        "machine": f"{platform.node()} ({platform.machine()}, {__import__('os').cpu_count()} CPUs)",
        "associations": len(results),
        "refused": sum(1 for r in results if r.refused),
        "aborted": sum(1 for r in results if r.aborted),
        "c_store_failures": sum(r.failures for r in results),
        "sender": "pynetdicom (stock)" if args.stock_sender else "pynetdicom (guarded)",
        "c_stores": len(times),
        "p50_s": round(statistics.median(times), 4),
        "p99_s": round(percentile(times, 0.99), 4),
        "max_s": round(max(times), 4),
        "elapsed_s": round(elapsed, 1),
        "jobs_logged_done": node.log_text().count("action=job_done"),
        # The node's own account of each store over 1 s: where the time went.
        "store_slow_records": len(slow),
        "slowest_store_records": [line for _, line in slow[:5]],
        "log": str(node.log),
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

"""Receiving under model load: CT studies sent back to back while ct-lesion-seg runs.

The scenario that once left an association without a C-STORE response for 30 s
(issue 10): eight 120-slice CT studies, one association each, sent one after the
other to ``dicomnode run`` with a ``ct-lesion-seg`` pipeline and a worker, so the
scheduler marks studies stable and the worker runs inference on both cores while
later studies are still arriving. Repeated ``--rounds`` times on one node. Each
C-STORE is timed from request to response by a pynetdicom SCU whose DIMSE timeout
(30 s) is the one the stalled sender had.

Reported: associations aborted or refused, C-STORE failures, and the response time
p50 / p99 / max over every C-STORE, plus the slowest write transaction the node
logged. Targets (issue 10): 0 aborted associations and p99 <= 0.5 s.

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

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from dicomnode.synth.ct import build_ct_series
from dicomnode.uids import derive_uid
from tests.nodeproc import NodeProcess

PIPELINE = (
    "[worker]\ncount = {workers}\n"
    '[[pipelines]]\nname = "stress"\nmatch = {{ Modality = "CT" }}\nmodel = "ct-lesion-seg"\n'
)


def make_studies(count: int, slices: int) -> list[list[Dataset]]:
    """``count`` synthetic CT studies of ``slices`` 256x256 slices (built once)."""
    studies = []
    for number in range(count):
        uid = derive_uid("stress-study", str(number))
        studies.append(
            list(
                build_ct_series(
                    slices=slices,
                    rows=256,
                    columns=256,
                    seed=number,
                    study_instance_uid=uid,
                    patient_id=f"STRESS{number:04d}",
                )
            )
        )
    return studies


def send_study(port: int, study: list[Dataset], round_number: int) -> dict[str, object]:
    """One association carrying ``study``; per-C-STORE response times."""
    ae = AE(ae_title="STRESSSCU")
    ae.add_requested_context(CTImageStorage)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMNODE")
    if not assoc.is_established:
        return {"refused": True, "times": [], "failures": 0, "aborted": False}
    times, failures = [], 0
    for ds in study:
        ds = ds.copy()
        # A fresh SOP Instance UID per round, so every round stores new instances.
        ds.SOPInstanceUID = derive_uid("stress", str(round_number), ds.SOPInstanceUID)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        started = time.monotonic()
        status = assoc.send_c_store(ds)
        times.append(time.monotonic() - started)
        if not assoc.is_established:
            break
        if status is None or getattr(status, "Status", 0xFFFF) != 0:
            failures += 1
    aborted = not assoc.is_established
    if not aborted:
        assoc.release()
    return {"refused": False, "times": times, "failures": failures, "aborted": aborted}


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
    args = parser.parse_args()

    studies = make_studies(args.studies, args.slices)
    folder = Path(tempfile.mkdtemp(prefix="stress-"))
    node = NodeProcess(
        folder,
        study_quiet_seconds=args.quiet,
        extra_toml=PIPELINE.format(workers=args.workers),
    )
    node.start()
    results = []
    started = time.monotonic()
    try:
        for round_number in range(args.rounds):
            for study in studies:
                results.append(send_study(node.port, study, round_number))
            print(f"round {round_number + 1}/{args.rounds} sent", flush=True)
    finally:
        node.stop(timeout=120)
    elapsed = time.monotonic() - started
    times = [t for r in results for t in r["times"]]  # type: ignore[attr-defined]
    summary = {
        "machine": f"{platform.node()} ({platform.machine()}, {__import__('os').cpu_count()} CPUs)",
        "associations": len(results),
        "refused": sum(1 for r in results if r["refused"]),
        "aborted": sum(1 for r in results if r["aborted"]),
        "c_store_failures": sum(int(r["failures"]) for r in results),  # type: ignore[call-overload]
        "c_stores": len(times),
        "p50_s": round(statistics.median(times), 4),
        "p99_s": round(percentile(times, 0.99), 4),
        "max_s": round(max(times), 4),
        "elapsed_s": round(elapsed, 1),
        "jobs_logged_done": node.log_text().count("action=job_done"),
        "log": str(node.log),
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

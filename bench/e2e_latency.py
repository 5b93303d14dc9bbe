"""End-to-end latency through Orthanc: last instance in -> SEG and SR stored in Orthanc.

Orthanc (the PACS) sends each synthetic CT study to the node with C-STORE (REST
``/modalities/node/store``); the node waits its quiet period, runs the pipeline and
sends SEG + SR back to Orthanc. One study at a time, so every figure is one study's.
The split per study, from the node's own records:

- quiet: last instance received -> study stable (the configured ``study_quiet_seconds``)
- queue: job created -> job started by a worker
- load: index query + volume building; model: inference
- build / validate / record: outputs built, checked by the gate, written and indexed
- send: job finished -> last output delivery acknowledged by Orthanc
- other = total - the rest (scheduler hops)

Target: everything but quiet and model <= 2 s per study. Run from the repository root:

    .venv/bin/python bench/e2e_latency.py --studies 10 --model ct-lesion-seg

``--model threshold`` uses a TorchScript threshold model (no trained weights needed).
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

from sqlalchemy import select

from dicomnode.index.schema import (
    DeliveryRecord,
    JobRecord,
    JobState,
    OutputRecord,
    StudyRecord,
)
from dicomnode.synth.ct import build_ct_series
from tests.factories import encode
from tests.model_files import write_threshold_segmenter
from tests.nodeproc import NodeProcess, free_port
from tests.orthanc import OrthancServer

STAGES = ("quiet", "queue", "load", "model", "build", "validate", "record", "send", "other")


def settings(orthanc_port: int, model: str, quiet: float) -> str:
    return (
        "[worker]\ncount = 1\n"
        "[send]\nretry_backoff_seconds = 0.3\nmax_backoff_seconds = 1.5\n"
        f'[[peers]]\nname = "pacs"\nae_title = "ORTHANC"\nhost = "127.0.0.1"\n'
        f'port = {orthanc_port}\naccepts = ["seg", "sr"]\n'
        f'[[pipelines]]\nname = "bench"\nmatch = {{ Modality = "CT" }}\nmodel = "{model}"\n'
        'send_to = ["pacs"]\n'
    )


def wait_done(node: NodeProcess, study_uid: str, timeout: float = 600) -> None:
    """Until the study's job is done and every output delivery is sent."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with node.session() as session:
            job = session.scalars(
                select(JobRecord)
                .join(StudyRecord, StudyRecord.id == JobRecord.study_id)
                .where(StudyRecord.study_instance_uid == study_uid)
            ).first()
            if job is not None and job.state in (JobState.DEAD, JobState.NOT_APPLICABLE):
                raise RuntimeError(f"job ended {job.state}: {job.error or job.result}")
            if job is not None and job.state is JobState.DONE:
                rows = session.scalars(
                    select(DeliveryRecord.state)
                    .join(OutputRecord, OutputRecord.id == DeliveryRecord.output_id)
                    .where(OutputRecord.job_id == job.id)
                ).all()
                if rows and all(r.value == "sent" for r in rows):
                    return
        time.sleep(0.05)
    raise TimeoutError(f"study {study_uid} not done:\n{node.log_text()[-3000:]}")


def breakdown(node: NodeProcess) -> list[dict[str, float]]:
    """Per study: seconds per stage, from the node's records."""
    out = []
    with node.session() as session:
        for job in session.scalars(select(JobRecord).order_by(JobRecord.id)):
            study = session.get(StudyRecord, job.study_id)
            assert study is not None and study.stable_at is not None
            assert job.started_at is not None and job.finished_at is not None
            sent = session.scalars(
                select(DeliveryRecord.sent_at)
                .join(OutputRecord, OutputRecord.id == DeliveryRecord.output_id)
                .where(OutputRecord.job_id == job.id)
            ).all()
            timings = json.loads(job.timings or "{}")
            last_sent = max(s for s in sent if s is not None)
            row = {
                "quiet": (study.stable_at - study.last_received_at).total_seconds(),
                "queue": (job.started_at - job.created_at).total_seconds(),
                "load": timings.get("load", 0.0) + timings.get("model_load", 0.0),
                "model": timings.get("model", 0.0),
                "build": timings.get("outputs_build", 0.0),
                "validate": timings.get("outputs_validate", 0.0),
                "record": timings.get("outputs_record", 0.0),
                "send": (last_sent - job.finished_at).total_seconds(),
                "total": (last_sent - study.last_received_at).total_seconds(),
            }
            row["other"] = row["total"] - sum(row[s] for s in STAGES if s != "other")
            row["overhead"] = row["total"] - row["quiet"] - row["model"]
            out.append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=10)
    parser.add_argument("--model", default="ct-lesion-seg")
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--quiet", type=float, default=2.0, help="study_quiet_seconds")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        node_port = free_port()
        orthanc = OrthancServer(
            folder / "orthanc", modalities={"node": ("DICOMNODE", "127.0.0.1", node_port)}
        )
        model = "bench-threshold" if args.model == "threshold" else args.model
        node = NodeProcess(folder / "node", port=node_port, study_quiet_seconds=args.quiet,
                           extra_toml=settings(orthanc.dicom_port, model, args.quiet))  # fmt: skip
        if args.model == "threshold":
            write_threshold_segmenter(node.data_dir / "models", model, above_hu=300.0)
        with orthanc, node:
            for i in range(args.studies):
                spacing = 0.7 * 512 / args.size  # the default 358 mm field of view
                series = build_ct_series(slices=args.slices, rows=args.size, columns=args.size,
                                         seed=9000 + i, pixel_spacing=spacing)  # fmt: skip
                study_id, study_uid = "", ""
                for ds in series:
                    study_id, study_uid = orthanc.upload(encode(ds)), str(ds.StudyInstanceUID)
                orthanc.store_to("node", [study_id])
                wait_done(node, study_uid)
                print(f"study {i + 1}/{args.studies} done", file=sys.stderr)
            rows = breakdown(node)
    report(rows, args)


def report(rows: list[dict[str, float]], args: argparse.Namespace) -> None:
    print(f"# e2e latency, {len(rows)} studies of {args.slices} x {args.size}^2 CT, "
          f"model {args.model}, quiet {args.quiet} s; {platform.node()} "
          f"{platform.processor() or platform.machine()}")  # fmt: skip
    print("| stage | median s | max s |")
    print("|---|---|---|")
    for stage in (*STAGES, "overhead", "total"):
        values = [r[stage] for r in rows]
        print(f"| {stage} | {statistics.median(values):.3f} | {max(values):.3f} |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()

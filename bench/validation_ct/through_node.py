"""Send validation studies to `dicomnode run` as a stranger would, then score its SEGs.

    .venv/bin/python bench/validation_ct/through_node.py TRUTH_DIR [TRUTH_DIR ...] \
        [--option weights=anatomical] [--json out.json]

Each TRUTH_DIR is a folder written by ``generator.py``. A node (``dicomnode run``, one
worker, a ``ct-lesion-seg`` pipeline that sends its outputs nowhere: they stay in
its data folder)
starts in a temporary folder; every ``study-*`` folder is sent with DCMTK's
``storescu`` (``+sd +sp '*.dcm'``: the slices, not the truth files); once every job has
ended, ``evaluate.py`` scores the SEGs the node wrote in its data folder against the
truth. Prints each study's job time and the scores.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import select

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

from evaluate import evaluate, report  # noqa: E402

from dicomnode.index.schema import JobRecord, JobState  # noqa: E402
from tests.nodeproc import NodeProcess  # noqa: E402

PIPELINE = (
    '[[pipelines]]\nname = "validation"\nmatch = { Modality = "CT" }\nmodel = "ct-lesion-seg"\n'
)
ENDED = (JobState.DONE, JobState.DEAD, JobState.NOT_APPLICABLE)


def send(node: NodeProcess, study: Path) -> None:
    subprocess.run(
        ["storescu", "-aec", node.ae_title, "+sd", "+sp", "*.dcm", "127.0.0.1",
         str(node.port), str(study)],
        check=True, capture_output=True,
    )  # fmt: skip


def wait_for_jobs(node: NodeProcess, count: int, timeout: float) -> list[JobRecord]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with node.session() as session:
            jobs = list(session.scalars(select(JobRecord).order_by(JobRecord.id)))
            if len(jobs) >= count and all(j.state in ENDED for j in jobs):
                session.expunge_all()
                return jobs
        time.sleep(1.0)
    raise TimeoutError(f"{count} jobs not ended in {timeout:.0f} s:\n{node.log_text()[-3000:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("truth_dirs", type=Path, nargs="+")
    parser.add_argument("--json", type=Path, help="also write the scores here")
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument(
        "--option", action="append", default=[], metavar="KEY=VALUE",
        help="a pipeline option for ct-lesion-seg, e.g. weights=anatomical (repeatable)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    pipeline = PIPELINE
    if args.option:
        pairs = [item.split("=", 1) for item in args.option]
        pipeline += "options = { " + ", ".join(f'{k} = "{v}"' for k, v in pairs) + " }\n"
    studies = [s for d in args.truth_dirs for s in sorted(d.glob("study-*")) if s.is_dir()]
    if not studies:
        print("no study-* folders", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as folder:
        node = NodeProcess(Path(folder), extra_toml=pipeline, study_quiet_seconds=2.0)
        with node:
            for study in studies:
                send(node, study)
            jobs = wait_for_jobs(node, len(studies), args.timeout)
            for job in jobs:
                timings = json.loads(job.timings or "{}")
                print(f"job {job.id}: {job.state.value}, model {timings.get('model', 0):.1f} s")
            scores = [
                score
                for truth in args.truth_dirs
                for score in evaluate(truth, node.data_dir, "lesion", 1e-9)
            ]
    print(report(scores))
    if args.json:
        from dataclasses import asdict

        args.json.write_text(json.dumps([asdict(s) for s in scores], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

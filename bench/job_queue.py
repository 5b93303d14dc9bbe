"""Job-queue benchmark: enqueue→start latency, claim throughput, scan cost.

Run by hand (not a test): ``python bench/job_queue.py [--backends sqlite,postgresql]``.

* latency: workers idle, 1,000 jobs queued one by one at a steady rate; the time from
  a job's creation to its start (p50/p95), with 1,000 other jobs waiting in the queue
  for a model no worker here runs (so the claim query must skip them);
* throughput: 1,000 jobs queued at once, drained by 1 and by 4 worker processes
  (`dicomnode worker`, the deterministic `test-stats` model on empty studies), jobs/s;
* scan: the periodic completion scan with 1,000 and with 100,000 instances already
  indexed in stable studies, and 10 studies receiving: its cost follows the active
  studies, not the store.

Each figure is measured against a real database: a SQLite file and a PostgreSQL
server started for the run (Debian ``postgresql``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import func, insert, select  # noqa: E402
from sqlalchemy.orm import Session, sessionmaker  # noqa: E402

from dicomnode.index.db import make_engine, make_session_factory, upgrade_database  # noqa: E402
from dicomnode.index.jobs import enqueue_job  # noqa: E402
from dicomnode.index.schema import (  # noqa: E402
    InstanceRecord,
    JobRecord,
    JobState,
    SeriesRecord,
    StudyRecord,
    StudyState,
    utc_now,
)
from dicomnode.index.studies import find_completed_studies  # noqa: E402
from tests.pg import PostgresServer, postgres_available  # noqa: E402


def settings_file(folder: Path, url: str) -> Path:
    path = folder / "settings.toml"
    path.write_text(
        f'[node]\ndata_dir = "{folder / "var"}"\ndatabase_url = "{url}"\n'
        "[worker]\npoll_seconds = 0.05\nlease_seconds = 30\n"
        '[[pipelines]]\nname = "bench"\nmatch = {}\nmodel = "test-stats"\n'
    )
    return path


def start_workers(config: Path, count: int, logs: Path) -> list[subprocess.Popen[bytes]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMNODE_")}
    procs = []
    for i in range(count):
        with (logs / f"worker{i}.log").open("wb") as out:
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "dicomnode",
                        "--config",
                        str(config),
                        "--log-level",
                        "WARNING",
                        "worker",
                    ],
                    stdout=out,
                    stderr=out,
                    env=env,
                )
            )
    time.sleep(3.0)  # imports and database connection: not part of the figures
    return procs


def stop_workers(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.wait(60)


def new_studies(sessions: sessionmaker[Session], count: int, prefix: str) -> list[int]:
    now = utc_now()
    with sessions() as session:
        rows = session.execute(
            insert(StudyRecord).returning(StudyRecord.id),
            [
                {
                    "study_instance_uid": f"{prefix}.{i}",
                    "state": StudyState.STABLE,
                    "first_received_at": now,
                    "last_received_at": now,
                    "version": 1,
                }
                for i in range(count)
            ],
        ).scalars()
        ids = list(rows)
        session.commit()
    return ids


def wait_done(sessions: sessionmaker[Session], total: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with sessions() as session:
            done = session.scalar(
                select(func.count(JobRecord.id)).where(JobRecord.state == JobState.DONE)
            )
        if done == total:
            return
        time.sleep(0.05)
    raise TimeoutError(f"only {done} of {total} jobs done")


def latency(sessions: sessionmaker[Session], config: Path, folder: Path) -> tuple[float, float]:
    """p50 and p95 seconds from creation to start, 1,000 jobs, 4 idle workers."""
    waiting = new_studies(sessions, 1000, "2.25.1")
    with sessions() as session:
        for study_id in waiting:  # a backlog for a model no worker here runs
            enqueue_job(session, study_id, 1, "elsewhere", "gpu-only-model", 3)
        session.commit()
    procs = start_workers(config, 4, folder)
    try:
        studies = new_studies(sessions, 1000, "2.25.2")
        for study_id in studies:
            with sessions() as session:
                enqueue_job(session, study_id, 1, "bench", "test-stats", 3)
                session.commit()
            time.sleep(0.01)
        wait_done(sessions, 1000)
    finally:
        stop_workers(procs)
    with sessions() as session:
        rows = session.execute(
            select(JobRecord.created_at, JobRecord.started_at).where(
                JobRecord.model == "test-stats"
            )
        ).all()
    waits = sorted((started - created).total_seconds() for created, started in rows)
    return statistics.median(waits), waits[int(len(waits) * 0.95) - 1]


def throughput(sessions: sessionmaker[Session], config: Path, folder: Path, workers: int) -> float:
    """Jobs per second for 1,000 queued jobs drained by ``workers`` processes."""
    procs = start_workers(config, workers, folder)
    try:
        studies = new_studies(sessions, 1000, f"2.25.3{workers}")
        started = time.perf_counter()
        with sessions() as session:
            for study_id in studies:
                enqueue_job(session, study_id, 1, "bench", "test-stats", 3)
            session.commit()
        wait_done(sessions, 1000)
        elapsed = time.perf_counter() - started
    finally:
        stop_workers(procs)
    return 1000 / elapsed


def scan_cost(sessions: sessionmaker[Session], instances: int) -> float:
    """Median seconds of the completion scan with ``instances`` stored, 10 studies active."""
    per_study = 100
    studies = new_studies(sessions, instances // per_study, f"2.25.4{instances}")
    now = utc_now()
    with sessions() as session:
        series = (
            session.execute(
                insert(SeriesRecord).returning(SeriesRecord.id),
                [{"study_id": s, "series_instance_uid": f"2.25.5{instances}.{s}"} for s in studies],
            )
            .scalars()
            .all()
        )
        common = {
            "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
            "transfer_syntax_uid": "1.2.840.10008.1.2.1",
            "number_of_frames": 1, "size_bytes": 1, "sha256": "0" * 64, "path": "x",
            "calling_ae": "BENCH", "received_at": now,
        }  # fmt: skip
        rows = [
            {"series_id": sid, "sop_instance_uid": f"2.25.6{instances}.{sid}.{i}", **common}
            for sid in series
            for i in range(per_study)
        ]
        for start in range(0, len(rows), 10000):
            session.execute(insert(InstanceRecord), rows[start : start + 10000])
        session.commit()
    active = new_studies(sessions, 10, f"2.25.7{instances}")
    with sessions() as session:
        for study in session.scalars(select(StudyRecord).where(StudyRecord.id.in_(active))):
            study.state = StudyState.RECEIVING
            study.receiving_since = now
        session.commit()
    times = []
    for _ in range(20):
        started = time.perf_counter()
        with sessions() as session:
            find_completed_studies(session, now - timedelta(seconds=10), now - timedelta(hours=1))
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def run_backend(name: str, url: str, folder: Path) -> dict[str, float]:
    results: dict[str, float] = {}
    for label, step in (
        ("latency", lambda s, c: latency(s, c, folder)),
        ("throughput_1", lambda s, c: throughput(s, c, folder, 1)),
        ("throughput_4", lambda s, c: throughput(s, c, folder, 4)),
    ):
        db_url = url(label)  # type: ignore[operator]
        upgrade_database(db_url)
        engine = make_engine(db_url)
        sessions = make_session_factory(engine)
        (folder / label).mkdir()
        config = settings_file(folder / label, db_url)
        value = step(sessions, config)
        engine.dispose()
        if label == "latency":
            results["latency_p50_s"], results["latency_p95_s"] = value  # type: ignore[misc]
        else:
            results[f"{label}_jobs_per_s"] = value  # type: ignore[assignment]
        print(f"  {name} {label}: {value}", flush=True)
    db_url = url("scan")  # type: ignore[operator]
    upgrade_database(db_url)
    engine = make_engine(db_url)
    sessions = make_session_factory(engine)
    results["scan_1k_instances_ms"] = scan_cost(sessions, 1000) * 1000
    results["scan_100k_instances_ms"] = scan_cost(sessions, 100_000) * 1000
    engine.dispose()
    print(f"  {name} scan: {results['scan_1k_instances_ms']:.2f} ms -> "
          f"{results['scan_100k_instances_ms']:.2f} ms", flush=True)  # fmt: skip
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="sqlite,postgresql")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}")
    table: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="dicomnode-bench-queue-") as tmp:
        root = Path(tmp)
        if "sqlite" in args.backends:
            folder = root / "sqlite"
            folder.mkdir()
            table["sqlite"] = run_backend(
                "sqlite", lambda label: f"sqlite:///{folder / label}.sqlite", folder
            )
        if "postgresql" in args.backends:
            reason = postgres_available()
            if reason:
                print(f"postgresql skipped: {reason}")
            else:
                with PostgresServer() as server:
                    folder = root / "pg"
                    folder.mkdir()
                    table["postgresql"] = run_backend(
                        "postgresql", lambda label: server.create_database(f"bench_{label}"), folder
                    )
    keys = sorted({k for v in table.values() for k in v})
    print("\n" + "figure".ljust(28) + "".join(name.rjust(14) for name in table))
    for key in keys:
        print(key.ljust(28) + "".join(f"{table[n].get(key, float('nan')):14.3f}" for n in table))


if __name__ == "__main__":
    main()

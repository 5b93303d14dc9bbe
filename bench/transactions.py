"""Write transactions of the scheduler: how long each holds the database's write lock.

Run by hand (not a test): ``python bench/transactions.py [--studies 20] [--series 3]
[--instances 200] [--backends sqlite,postgresql]``.

N studies are received through the real ingest path (in-process, 8 sending threads),
then the serving process's periodic jobs run over them against the same database:

* ``complete_studies``: marks each study stable and plans it in one transaction, with
  a pipeline matching every CT study and a route queueing one delivery per instance
  (the largest planning transaction there is);
* ``recover_leases``;
* ``apply_retention``, deleting every study (jobs done, deliveries sent).

Two measures:

* each write transaction, timed in the scheduler from its first INSERT, UPDATE or
  DELETE (where SQLite takes its single write lock) until its commit has returned
  (``tests/txwatch.py``); any instance file opened meanwhile is reported, and there
  must be none. On SQLite this includes a WAL auto-checkpoint when the commit runs one,
  which SQLite does after releasing the write lock (``sqlite3_wal_hook``);
* on SQLite, another writer's view: a separate process (so no GIL is shared) trying
  ``BEGIN IMMEDIATE`` every 0.5 ms, and the longest time it was kept out. That is
  what a receiving process waiting to commit would see.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pydicom.uid import generate_uid  # noqa: E402
from sqlalchemy import update  # noqa: E402

from dicomnode.config import (  # noqa: E402
    NodeSettings,
    PeerSettings,
    PipelineSettings,
    RetentionSettings,
    RouteSettings,
    Settings,
)
from dicomnode.index.db import make_engine, make_session_factory, upgrade_database  # noqa: E402
from dicomnode.index.jobs import recover_expired_leases  # noqa: E402
from dicomnode.index.schema import DeliveryRecord, DeliveryState, JobRecord, JobState  # noqa: E402
from dicomnode.receive.ingest import Ingest  # noqa: E402
from dicomnode.receive.spool import SpoolFile  # noqa: E402
from dicomnode.schedule.completion import complete_studies  # noqa: E402
from dicomnode.schedule.plan import compile_plan  # noqa: E402
from dicomnode.schedule.retention import apply_retention  # noqa: E402
from tests.factories import encode, small_ct  # noqa: E402
from tests.pg import PostgresServer, postgres_available  # noqa: E402
from tests.txwatch import WriteWatch  # noqa: E402

QUIET_S = 0.2


def _probe(database: str, stop: Any, longest: Any) -> None:
    """Try to take SQLite's write lock every 0.5 ms; record the longest lock-out (s)."""
    conn = sqlite3.connect(database, timeout=0, isolation_level=None)
    blocked_since = None
    while not stop.is_set():
        now = time.perf_counter()
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
        except sqlite3.OperationalError:  # database is locked
            blocked_since = blocked_since or now
        else:
            if blocked_since is not None:
                longest.value = max(longest.value, now - blocked_since)
                blocked_since = None
        time.sleep(0.0005)
    conn.close()


class LockProbe:
    """Another writer on an SQLite file, in its own process (see the module docstring)."""

    def __init__(self, database: str) -> None:
        context = multiprocessing.get_context("spawn")
        self._stop = context.Event()
        self._longest = context.Value("d", 0.0)
        self._process = context.Process(
            target=_probe, args=(database, self._stop, self._longest), daemon=True
        )

    def __enter__(self) -> LockProbe:
        self._process.start()
        time.sleep(1.0)  # the spawned interpreter is up and polling
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._process.join(10)

    @property
    def longest_ms(self) -> float:
        """The longest the probe was kept from the write lock, in milliseconds."""
        return float(self._longest.value) * 1000


def encoded_studies(studies: int, series: int, instances: int) -> list[tuple[str, str, bytes]]:
    """(SOP Class UID, SOP Instance UID, Part 10 bytes) of every instance to send."""
    out = []
    for _ in range(studies):
        study = generate_uid()
        for _ in range(series):
            template = small_ct(study_instance_uid=study, series_instance_uid=generate_uid())
            for number in range(1, instances + 1):
                uid = generate_uid()
                template.SOPInstanceUID = template.file_meta.MediaStorageSOPInstanceUID = uid
                template.InstanceNumber = number
                out.append((str(template.SOPClassUID), str(uid), encode(template)))
    return out


def receive(data_dir: Path, url: str, work: list[tuple[str, str, bytes]]) -> float:
    """Store the instances through ingest, from 8 threads; the seconds it took."""
    engine = make_engine(url)
    ingest = Ingest(data_dir, engine)
    ingest.start()

    def store(item: tuple[str, str, bytes]) -> None:
        spool = SpoolFile(ingest.spool_dir)
        spool.write(item[2])
        ingest.store(spool, item[0], item[1], "BENCH", None)

    started = time.perf_counter()
    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(store, work))
    finally:
        ingest.stop()
        engine.dispose()
    return time.perf_counter() - started


def report(name: str, watch: WriteWatch, seconds: float) -> float:
    durations = [t.seconds * 1000 for t in watch.transactions]
    longest = watch.longest()
    if longest is None:
        print(f"  {name:<17} no write transaction ({seconds:.2f} s)")
        return 0.0
    first = f", first {durations[0]:.1f} ms" if len(durations) > 1 else ""
    print(
        f"  {name:<17} {len(durations):>4} write transactions in {seconds:.2f} s: "
        f"median {statistics.median(durations):.1f} ms{first}, longest {max(durations):.1f} ms "
        f"({longest.first_write[:40]}...)"
    )
    if watch.reads_inside_writes:
        print(f"    FILES READ INSIDE A WRITE TRANSACTION: {len(watch.reads_inside_writes)}")
    return max(durations)


def run(url: str, folder: Path, args: argparse.Namespace) -> None:
    data_dir = folder / "var"
    upgrade_database(url)
    work = encoded_studies(args.studies, args.series, args.instances)
    seconds = receive(data_dir, url, work)
    print(f"  received {len(work)} instances in {seconds:.1f} s")
    config = Settings(
        node=NodeSettings(data_dir=data_dir, database_url=url, study_quiet_seconds=QUIET_S),
        peers=(PeerSettings(name="pacs", ae_title="PACS", host="127.0.0.1", port=104),),
        pipelines=(PipelineSettings(name="ct", model="test-stats", match={"Modality": "CT"}),),
        routes=(RouteSettings(name="all", send_to=("pacs",), match={"Modality": "CT"}),),
        retention=RetentionSettings(max_age_days=1e-9),
    )
    engine = make_engine(url)
    sessions = make_session_factory(engine)
    time.sleep(QUIET_S * 2)
    longest: list[float] = []
    probe: AbstractContextManager[Any] = nullcontext()
    if url.startswith("sqlite:///"):
        probe = LockProbe(url.removeprefix("sqlite:///"))
    with probe as watching:
        run_jobs(config, engine, sessions, data_dir, longest)
    if watching is not None:
        print(f"  another writer waited at most {watching.longest_ms:.1f} ms for the lock")
    engine.dispose()
    print(f"  longest write transaction: {max(longest):.1f} ms")


def run_jobs(
    config: Settings, engine: Any, sessions: Any, data_dir: Path, longest: list[float]
) -> None:
    """The scheduler's jobs over every study, each under a write watch."""

    def recover() -> None:
        with sessions() as session:
            recover_expired_leases(session)

    jobs = {
        "complete_studies": lambda: complete_studies(config, sessions, compile_plan(config)),
        "recover_leases": recover,
    }
    for name, job in jobs.items():
        with WriteWatch(engine, data_dir / "instances") as watch:
            started = time.perf_counter()
            job()
            longest.append(report(name, watch, time.perf_counter() - started))
    with sessions() as session:  # every study's work is done: retention may delete it
        session.execute(update(JobRecord).values(state=JobState.DONE))
        session.execute(update(DeliveryRecord).values(state=DeliveryState.SENT))
        session.commit()
    with WriteWatch(engine, data_dir / "instances") as watch:
        started = time.perf_counter()
        deleted = apply_retention(config, sessions)
        longest.append(report("apply_retention", watch, time.perf_counter() - started))
    assert deleted, "retention deleted nothing"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=20)
    parser.add_argument("--series", type=int, default=3)
    parser.add_argument("--instances", type=int, default=200, help="per series")
    parser.add_argument("--backends", default="sqlite,postgresql")
    args = parser.parse_args()
    print(f"{platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"{args.studies} studies x {args.series} series x {args.instances} instances")
    for backend in args.backends.split(","):
        with tempfile.TemporaryDirectory(prefix="bench-tx-") as tmp:
            folder = Path(tmp)
            print(backend)
            if backend == "sqlite":
                run(f"sqlite:///{folder / 'index.sqlite'}", folder, args)
                continue
            reason = postgres_available()
            if reason is not None:
                print(f"  skipped: {reason}")
                continue
            with PostgresServer() as server:
                run(server.create_database("bench"), folder, args)


if __name__ == "__main__":
    main()

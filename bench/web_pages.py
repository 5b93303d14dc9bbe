"""Web page benchmark: the studies page and /metrics over a large index, and previews.

Run by hand (not a pytest test)::

    .venv/bin/python bench/web_pages.py --database sqlite --json /tmp/bench_web.json
    .venv/bin/python bench/web_pages.py --database postgresql
    .venv/bin/python bench/web_pages.py --previews

``index``: an index with ``--studies`` studies (default 10,000) of two series each and
``--instances`` instances (default 1,000,000) written straight into the tables (the
rows ingest writes, in bulk), a done job per study and two deliveries per job; the
node's web application served by its own ``WebServer`` (uvicorn in a thread, as in
``dicomnode run``) on its own engine; each page requested ``--repeat`` times after
one warm-up request. Reported: median and 95th percentile in ms, for the studies
page (newest 100), a search by accession number, a search by modality, a study page,
the overview and ``/metrics``. Targets (issue 12): studies page <= 200 ms,
``/metrics`` <= 50 ms.

``previews``: ``dicomnode run`` with a ``ct-lesion-seg`` pipeline receives a 48-slice
256 x 256 synthetic CT (storescu); once its job is done each output's preview is
requested twice: the first render (the renderer child starts for the first one) and
the cached one. Targets: <= 1 s first, <= 20 ms cached.

``peer`` (``--peer``): the same ``--peer-studies`` studies of two small CT instances
each sent by ``storescu`` to ``dicomnode serve`` and to Orthanc; then, side by side,
each one's study list of the newest 100 (dicomnode ``/studies``; Orthanc ``POST
/tools/find`` with ``Expand``, the request Orthanc Explorer 2's study list makes) and
each one's Prometheus text (``/metrics``; Orthanc ``/tools/metrics-prometheus``).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import insert

from dicomnode.config import Settings
from dicomnode.index.db import make_engine, make_session_factory, upgrade_database
from dicomnode.index.schema import (
    DeliveryRecord,
    DeliveryState,
    InstanceRecord,
    JobRecord,
    JobState,
    OutputKind,
    OutputRecord,
    OutputState,
    SeriesRecord,
    StudyRecord,
    StudyState,
)
from dicomnode.web.app import create_app
from dicomnode.web.health import Check
from dicomnode.web.server import WebServer
from tests.nodeproc import free_port

BATCH = 20_000


def _uid(kind: int, n: int) -> str:
    return f"1.2.826.0.1.3680043.10.1000.{kind}.{n}"


def fill(url: str, studies: int, instances: int) -> float:
    """Write the rows; return the seconds it took."""
    started = time.perf_counter()
    upgrade_database(url)
    engine = make_engine(url)
    per_series = max(1, instances // (studies * 2))
    base = datetime(2026, 1, 1, tzinfo=UTC)
    with engine.begin() as conn:
        conn.execute(insert(StudyRecord), [
            {"id": s + 1, "study_instance_uid": _uid(1, s), "study_date": f"2026{1 + s % 12:02d}15",
             "accession_number": f"ACC{s:06d}", "state": StudyState.STABLE, "version": 1,
             "first_received_at": base + timedelta(minutes=s),
             "last_received_at": base + timedelta(minutes=s), "calling_ae": f"MOD{s % 7}"}
            for s in range(studies)
        ])  # fmt: skip
        conn.execute(insert(SeriesRecord), [
            {"id": i + 1, "study_id": i // 2 + 1, "series_instance_uid": _uid(2, i),
             "modality": ("CT", "MR", "MG", "CR")[(i // 2) % 4], "series_number": i % 2 + 1}
            for i in range(studies * 2)
        ])  # fmt: skip
        total = studies * 2 * per_series
        for start in range(0, total, BATCH):
            conn.execute(insert(InstanceRecord), [
                {"series_id": n // per_series + 1, "sop_instance_uid": _uid(3, n),
                 "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
                 "transfer_syntax_uid": "1.2.840.10008.1.2.1", "instance_number": n % per_series,
                 "size_bytes": 525_000, "sha256": "0" * 64,
                 "path": f"instances/{n // per_series}/{n}.dcm", "calling_ae": "MOD1",
                 "received_at": base + timedelta(seconds=n)}
                for n in range(start, min(total, start + BATCH))
            ])  # fmt: skip
        conn.execute(insert(JobRecord), [
            {"id": s + 1, "study_id": s + 1, "study_version": 1, "pipeline": "ct",
             "model": "ct-lesion-seg", "state": JobState.DONE, "attempts": 1, "max_attempts": 3,
             "timings": '{"model": 6.1}', "result": '{"model_version": "1"}'}
            for s in range(studies)
        ])  # fmt: skip
        conn.execute(insert(OutputRecord), [
            {"id": s + 1, "job_id": s + 1, "kind": OutputKind.SEG,
             "sop_class_uid": "1.2.840.10008.5.1.4.1.1.66.4", "sop_instance_uid": _uid(4, s),
             "series_instance_uid": _uid(5, s), "path": f"results/job-{s}/seg.dcm",
             "size_bytes": 1000, "sha256": "0" * 64, "state": OutputState.VALID}
            for s in range(studies)
        ])  # fmt: skip
        conn.execute(insert(DeliveryRecord), [
            {"output_id": s + 1, "peer": peer, "state": DeliveryState.SENT, "attempts": 1}
            for s in range(studies) for peer in ("pacs", "archive")
        ])  # fmt: skip
    if engine.dialect.name == "postgresql":
        # What autovacuum does soon after a bulk load; without it the planner works from
        # the statistics of empty tables.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("ANALYZE")
    engine.dispose()
    return time.perf_counter() - started


def timed(port: int, path: str, repeat: int) -> dict[str, float]:
    url = f"http://127.0.0.1:{port}{path}"
    urllib.request.urlopen(url, timeout=60).read()  # warm-up
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        with urllib.request.urlopen(url, timeout=60) as response:
            response.read()
            assert response.status == 200, (path, response.status)
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return {"median_ms": round(statistics.median(times), 1),
            "p95_ms": round(times[int(0.95 * (len(times) - 1))], 1)}  # fmt: skip


def bench_index(database: str, studies: int, instances: int, repeat: int) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="dicomnode-bench-web-"))
    server_pg = None
    if database == "postgresql":
        from tests.pg import PostgresServer

        server_pg = PostgresServer()
        server_pg.start()
        url = server_pg.create_database("bench")
    else:
        url = f"sqlite:///{folder / 'dicomnode.sqlite'}"
    try:
        fill_s = fill(url, studies, instances)
        settings = Settings(
            node={"data_dir": str(folder / "var"), "database_url": url},
            pipelines=[{"name": "ct", "model": "ct-lesion-seg", "match": {"Modality": "CT"}}],
            peers=[{"name": n, "ae_title": n.upper(), "host": "127.0.0.1", "port": 104}
                   for n in ("pacs", "archive")],
        )  # fmt: skip
        (folder / "var").mkdir(exist_ok=True)
        engine = make_engine(url)
        app = create_app(settings, make_session_factory(engine), scp=lambda: Check(True))
        web = WebServer(app, "127.0.0.1", free_port())
        web.start()
        port = web.address[1]
        pages = {
            "studies (newest 100)": "/studies",
            "studies by accession": "/studies?accession=ACC004321",
            "studies by modality": "/studies?modality=MR",
            "study page": f"/studies/{_uid(1, 4321)}",
            "overview": "/",
            "metrics": "/metrics",
        }
        results = {name: timed(port, path, repeat) for name, path in pages.items()}
        web.stop()
        engine.dispose()
        return {"database": database, "studies": studies, "instances": instances,
                "fill_seconds": round(fill_s, 1), "pages": results}  # fmt: skip
    finally:
        if server_pg is not None:
            server_pg.stop()


def bench_previews() -> dict[str, Any]:
    import re

    from dicomnode.synth.ct import build_ct_series
    from tests.factories import encode
    from tests.nodeproc import NodeProcess
    from tests.scu import storescu

    folder = Path(tempfile.mkdtemp(prefix="dicomnode-bench-previews-"))
    series = list(build_ct_series(seed=424242, slice_thickness=2.0, slices=48, rows=256,
                                  columns=256, pixel_spacing=1.4))  # fmt: skip
    files = []
    for i, ds in enumerate(series):
        path = folder / f"ct{i:03d}.dcm"
        path.write_bytes(encode(ds))
        files.append(path)
    toml = (
        '[[pipelines]]\nname = "ct"\nmodel = "ct-lesion-seg"\n[pipelines.match]\nModality = "CT"\n'
    )
    out: dict[str, Any] = {}
    with NodeProcess(folder / "node", extra_toml=toml, study_quiet_seconds=0.5) as node:
        assert storescu(node.port, files).returncode == 0
        study = f"http://127.0.0.1:{node.web_port}/studies/{series[0].StudyInstanceUID}"
        deadline = time.monotonic() + 300
        page = ""
        while time.monotonic() < deadline and "preview.png" not in page:
            time.sleep(1)
            page = urllib.request.urlopen(study, timeout=60).read().decode()
        for output in re.findall(r"/outputs/(\d+)/preview.png", page):
            url = f"http://127.0.0.1:{node.web_port}/outputs/{output}/preview.png"
            times = []
            for _ in range(6):
                started = time.perf_counter()
                urllib.request.urlopen(url, timeout=60).read()
                times.append(round((time.perf_counter() - started) * 1000, 1))
            cached = statistics.median(times[1:])
            out[f"output {output}"] = {"first_ms": times[0], "cached_median_ms": cached}
    return out


def _orthanc_timed(server: Any, method: str, path: str, body: Any, repeat: int) -> dict[str, float]:
    server.request(method, path, body)
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        server.request(method, path, body)
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return {"median_ms": round(statistics.median(times), 1),
            "p95_ms": round(times[int(0.95 * (len(times) - 1))], 1)}  # fmt: skip


def bench_peer(studies: int, repeat: int) -> dict[str, Any]:
    import subprocess

    from pydicom.uid import generate_uid

    from tests.factories import encode, small_ct
    from tests.nodeproc import NodeProcess
    from tests.orthanc import OrthancServer
    from tests.scu import dcmtk_env

    folder = Path(tempfile.mkdtemp(prefix="dicomnode-bench-peer-"))
    files = folder / "files"
    files.mkdir()
    for s in range(studies):
        study, series = generate_uid(), generate_uid()
        for i in range(2):
            ds = small_ct(study_instance_uid=study, series_instance_uid=series)
            ds.AccessionNumber = f"ACC{s:06d}"
            (files / f"{s:06d}-{i}.dcm").write_bytes(encode(ds))
    out: dict[str, Any] = {"studies": studies, "instances": 2 * studies}

    def send(port: int, ae: str) -> float:
        started = time.perf_counter()
        subprocess.run(["storescu", "-aec", ae, "+sd", "127.0.0.1", str(port), str(files)],
                       env=dcmtk_env(), check=True, capture_output=True)  # fmt: skip
        return round(time.perf_counter() - started, 1)

    with NodeProcess(folder / "node", command="serve") as node:
        out["dicomnode_send_s"] = send(node.port, "DICOMNODE")
        out["dicomnode"] = {
            "study list (newest 100)": timed(node.web_port or 0, "/studies", repeat),
            "metrics": timed(node.web_port or 0, "/metrics", repeat),
        }
    with OrthancServer(folder / "orthanc") as orthanc:
        out["orthanc_send_s"] = send(orthanc.dicom_port, orthanc.ae_title)
        find = {"Level": "Study", "Query": {}, "Limit": 100, "Expand": True}
        out["orthanc"] = {
            "study list (newest 100)": _orthanc_timed(orthanc, "POST", "/tools/find", find, repeat),
            "metrics": _orthanc_timed(orthanc, "GET", "/tools/metrics-prometheus", None, repeat),
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--studies", type=int, default=10_000)
    parser.add_argument("--instances", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--previews", action="store_true", help="the preview part instead")
    parser.add_argument("--peer", action="store_true", help="dicomnode and Orthanc side by side")
    parser.add_argument("--peer-studies", type=int, default=5000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    facts = {
        "machine": platform.processor() or platform.machine(),
        "python": platform.python_version(),
    }
    if args.previews:
        result: dict[str, Any] = {"previews": bench_previews(), **facts}
    elif args.peer:
        result = {**bench_peer(args.peer_studies, args.repeat), **facts}
    else:
        result = {**bench_index(args.database, args.studies, args.instances, args.repeat), **facts}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

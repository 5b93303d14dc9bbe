"""Ingest benchmark: dicomnode against Orthanc and DCMTK ``storescp``, side by side.

Run by hand (not a pytest test)::

    .venv/bin/python bench/ingest.py --workload all --repeat 3 --json /tmp/bench_ingest.json

Every receiver gets the same files from the same sender (DCMTK ``storescu``) on
127.0.0.1. Each run starts the receiver on fresh storage, waits until it answers
C-ECHO, then times from launching the sender(s) to the last sender exiting. A run
counts only if every sender exits 0 and every instance arrived.

Workloads:

``a``  one 300-slice 512 x 512 CT series (about 150 MB) over one association;
``b``  2,000 small CT instances (pydicom's ``CT_small.dcm`` with new UIDs: four
       studies of 500) over four concurrent associations, one ``storescu`` each.

Receivers: ``dicomnode serve`` (fsync + SQLite commit per instance), ``dicomnode-run``
(``dicomnode run`` as users start it: the same plus its worker, which imports torch
and loads the models while the sender is already sending), Orthanc
(``SyncStorageArea``: fsync + SQLite index) and plain ``storescp`` (one association at
a time, no fsync, no index). Every receiver keeps its default maximum PDU size.
Peak RSS is the receiver process's ``VmHWM`` (lifetime high-water mark) or the highest
``VmRSS`` of the process and its children (dicomnode's extra receiving processes)
sampled every 20 ms, whichever is larger; for storescp the parent process.
MB are 10^6 bytes of Part 10 files as sent.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DICOMNODE = ROOT / ".venv" / "bin" / "dicomnode"
ORTHANC = "/usr/sbin/Orthanc"
#: DCMTK tools stall ~40 ms per message on Linux loopback without TCP_NODELAY.
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
RECEIVERS = ("dicomnode", "dicomnode-run", "orthanc", "storescp")
AE_TITLES = {
    "dicomnode": "DICOMNODE",
    "dicomnode-run": "DICOMNODE",
    "dicomnode-polled": "DICOMNODE",
    "orthanc": "ORTHANC",
    "storescp": "STORESCP",
}
SMALL_STUDIES, SMALL_PER_STUDY = 4, 500
TMP = Path(tempfile.gettempdir())


# -- data ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """One set of input files and how to send them."""

    name: str
    description: str
    #: One folder per concurrent sender (one association each).
    folders: tuple[Path, ...]
    instances: int
    total_bytes: int


def _dicom_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.dcm") if p.is_file())


def _finish(name: str, description: str, folders: list[Path]) -> Workload:
    files = [f for folder in folders for f in _dicom_files(folder)]
    for path in files:  # warm the page cache so no receiver pays for the first read
        path.read_bytes()
    return Workload(
        name, description, tuple(folders), len(files), sum(f.stat().st_size for f in files)
    )


def prepare_ct(data_dir: Path) -> Workload:
    """Workload (a): the synthetic 300-slice CT series, generated once and cached."""
    folder = data_dir / "a_ct300"
    if len(_dicom_files(folder)) != 300:
        from dicomnode.synth.ct import write_ct_series

        shutil.rmtree(folder, ignore_errors=True)
        print(f"generating 300-slice CT in {folder} ...", flush=True)
        write_ct_series(folder, slices=300, rows=512, columns=512, seed=1)
    return _finish("a", "300 x 512x512 CT, 1 association", [folder])


def prepare_small(data_dir: Path) -> Workload:
    """Workload (b): 4 studies x 500 copies of CT_small.dcm with fresh UIDs, cached."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    source = get_testdata_file("CT_small.dcm", download=False)
    if source is None:
        raise SystemExit("pydicom's CT_small.dcm test file is not installed")
    folders = [data_dir / f"b_small/study{s}" for s in range(SMALL_STUDIES)]
    for s, folder in enumerate(folders):
        if len(_dicom_files(folder)) == SMALL_PER_STUDY:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        print(f"writing {SMALL_PER_STUDY} small instances in {folder} ...", flush=True)
        ds = pydicom.dcmread(source)
        # Deterministic UIDs: the same files on every run and every machine.
        ds.StudyInstanceUID = generate_uid(entropy_srcs=["dicomnode-bench", "study", str(s)])
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=["dicomnode-bench", "series", str(s)])
        ds.PatientID = f"BENCH{s}"
        ds.SeriesNumber = s + 1
        for i in range(SMALL_PER_STUDY):
            uid = generate_uid(entropy_srcs=["dicomnode-bench", "instance", str(s), str(i)])
            ds.SOPInstanceUID = uid
            ds.file_meta.MediaStorageSOPInstanceUID = uid
            ds.InstanceNumber = i + 1
            ds.save_as(folder / f"{i + 1:04d}.dcm", enforce_file_format=True)
    return _finish("b", "2000 small CT, 4 concurrent associations", folders)


def prepare_large(data_dir: Path) -> Workload:
    """Workload (c): one 157 MB multi-frame instance (300 frames of 512x512, 16 bits).

    It shows that a receiver's memory does not grow with the size of an instance.
    """
    import numpy as np
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

    folder = data_dir / "c_large"
    if len(_dicom_files(folder)) != 1:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        print(f"writing one 157 MB multi-frame instance in {folder} ...", flush=True)
        uid = generate_uid(entropy_srcs=["dicomnode-bench", "large", "instance"])
        ds = pydicom.Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.7.3")
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7.3"  # Multi-frame Grayscale Word SC
        ds.SOPInstanceUID = uid
        ds.StudyInstanceUID = generate_uid(entropy_srcs=["dicomnode-bench", "large", "study"])
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=["dicomnode-bench", "large", "series"])
        ds.PatientName, ds.PatientID, ds.Modality = "Bench^Large", "BENCHL", "OT"
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows = ds.Columns = 512
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.NumberOfFrames = 300
        ds.FrameIncrementPointer = 0x00181063  # Frame Time
        ds.FrameTime = 40
        frames = np.arange(300 * 512 * 512, dtype=np.uint32).astype(np.uint16)
        ds.PixelData = frames.tobytes()
        del frames
        ds.save_as(folder / "0001.dcm", enforce_file_format=True)
    return _finish("c", "one 157 MB multi-frame instance, 1 association", [folder])


# -- receivers -------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Receiver:
    """A receiver process on fresh storage in ``workdir``; subclasses say how to run it."""

    name = ""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.ae_title = AE_TITLES[self.name]
        self.stderr_path = workdir / "receiver.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> tuple[list[str], dict[str, str]]:
        """The argv and environment that start the receiver."""
        raise NotImplementedError

    def count(self) -> int:
        """How many instances the receiver holds now."""
        raise NotImplementedError

    def start(self, timeout: float = 60.0) -> None:
        """Start the process and wait until it answers C-ECHO."""
        argv, env = self.command()
        with self.stderr_path.open("wb") as log:
            self.proc = subprocess.Popen(
                argv, cwd=self.workdir, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} at start")
            echo = ["echoscu", "-to", "5", "-aec", self.ae_title, "127.0.0.1", str(self.port)]
            if subprocess.run(echo, env=DCMTK_ENV, capture_output=True).returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not answer C-ECHO within {timeout:.0f} s")

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM, wait, SIGKILL if it hangs; returns the exit status."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"{self.name} ignored SIGTERM for {timeout:.0f} s") from None

    def begin_load(self) -> None:
        """Called as the senders start (a receiver with load of its own starts it)."""

    def end_load(self) -> None:
        """Called once the senders are done."""

    def log_tail(self, lines: int = 40) -> str:
        """The last lines the receiver wrote to stdout/stderr."""
        text = self.stderr_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])


class DicomnodeReceiver(Receiver):
    """``dicomnode serve`` (the receiving process: SCP + scheduler, no workers) with its
    own settings file and data folder, the same work Orthanc and storescp do here."""

    name = "dicomnode"
    #: Extra ``[node]`` lines (``--node-setting``), e.g. ``receive_processes = 1``.
    node_settings: tuple[str, ...] = ()

    def command(self) -> tuple[list[str], dict[str, str]]:
        self.data_dir = self.workdir / "data"
        config = self.workdir / "settings.toml"
        extra = "".join(f"{line}\n" for line in self.node_settings)
        config.write_text(
            "[node]\n"
            f'ae_title = "{self.ae_title}"\nhost = "127.0.0.1"\nport = {self.port}\n'
            f'data_dir = "{self.data_dir}"\n{extra}',
            encoding="utf-8",
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMNODE_")}
        return [str(DICOMNODE), "--config", str(config), "serve"], env

    def count(self) -> int:
        uri = f"file:{self.data_dir / 'dicomnode.sqlite'}?mode=ro"
        with sqlite3.connect(uri, uri=True, timeout=30) as db:
            return int(db.execute("SELECT count(*) FROM instances").fetchone()[0])


class DicomnodeRunReceiver(DicomnodeReceiver):
    """``dicomnode run``: the node with its default worker, timed from its first echo."""

    name = "dicomnode-run"

    def command(self) -> tuple[list[str], dict[str, str]]:
        argv, env = super().command()
        return [*argv[:-1], "run"], env


class DicomnodePolledReceiver(DicomnodeReceiver):
    """``dicomnode serve`` while a poller loads its web page the whole time: the overview,
    the studies list and ``/metrics`` in turn, one every :attr:`interval` seconds (0:
    back to back; ``--poll-interval``). ``--receivers dicomnode,dicomnode-polled`` shows
    what serving the page costs."""

    name = "dicomnode-polled"
    #: Seconds between page loads (a browser on the overview reloads every 5 s).
    interval = 1.0

    def command(self) -> tuple[list[str], dict[str, str]]:
        argv, env = super().command()
        self.web_port = free_port()
        config = self.workdir / "settings.toml"
        config.write_text(
            config.read_text(encoding="utf-8") + f"[web]\nport = {self.web_port}\n",
            encoding="utf-8",
        )
        return argv, env

    def begin_load(self) -> None:
        self._polling = threading.Event()
        self.pages = 0
        self._poller = threading.Thread(target=self._poll, daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        paths = ("/", "/studies", "/metrics")
        while not self._polling.is_set():
            url = f"http://127.0.0.1:{self.web_port}{paths[self.pages % len(paths)]}"
            try:
                with urllib.request.urlopen(url, timeout=30) as response:
                    response.read()
            except OSError:  # the web server binds just after the SCP answers C-ECHO
                time.sleep(0.05)
                continue
            self.pages += 1
            self._polling.wait(self.interval)

    def end_load(self) -> None:
        self._polling.set()
        self._poller.join()
        print(f"   {self.pages} pages served during the run", file=sys.stderr)


class OrthancReceiver(Receiver):
    """Orthanc with a private JSON configuration, fsyncing its storage area."""

    name = "orthanc"

    def command(self) -> tuple[list[str], dict[str, str]]:
        self.http_port = free_port()
        config = {
            "Name": "bench",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "DicomAet": self.ae_title,
            "DicomPort": self.port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "HttpServerEnabled": True,
            "DicomCheckCalledAet": False,
            "StorageCompression": False,
            "Plugins": [],
            "ConcurrentJobs": 2,
            "DicomAlwaysAllowStore": True,
            "DicomServerEnabled": True,
            "SyncStorageArea": True,
        }
        path = self.workdir / "orthanc.json"
        path.write_text(json.dumps(config, indent=2), encoding="utf-8")
        # Orthanc's DICOM network layer is DCMTK's: without TCP_NODELAY it stalls ~40 ms
        # per instance on loopback, like the DCMTK tools.
        return [ORTHANC, str(path)], DCMTK_ENV

    def count(self) -> int:
        url = f"http://127.0.0.1:{self.http_port}/statistics"
        with urllib.request.urlopen(url, timeout=30) as response:
            return int(json.load(response)["CountInstances"])


class StorescpReceiver(Receiver):
    """Plain DCMTK ``storescp``: one association at a time, files only."""

    name = "storescp"

    def command(self) -> tuple[list[str], dict[str, str]]:
        self.out_dir = self.workdir / "out"
        self.out_dir.mkdir()
        argv = ["storescp", "+xa", "-od", str(self.out_dir), "-aet", self.ae_title, str(self.port)]
        return argv, DCMTK_ENV

    def count(self) -> int:
        return sum(1 for p in self.out_dir.iterdir() if p.is_file())


RECEIVER_CLASSES: dict[str, type[Receiver]] = {
    cls.name: cls
    for cls in (
        DicomnodeReceiver,
        DicomnodeRunReceiver,
        DicomnodePolledReceiver,
        OrthancReceiver,
        StorescpReceiver,
    )
}


# -- measuring -------------------------------------------------------------------------


def _status_kib(pid: int | str, key: str) -> int:
    """A ``kB`` field of /proc/PID/status (or of a /proc file named by path); 0 if gone."""
    path = pid if isinstance(pid, str) else f"/proc/{pid}/status"
    try:
        with open(path, encoding="ascii") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def _children(pid: int) -> list[int]:
    """Child process ids of ``pid`` (dicomnode's extra receivers), from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            found.append(int(stat.parent.name))
    return found


class RssSampler(threading.Thread):
    """Samples the VmRSS of a process and its children every ``interval`` seconds;
    keeps the highest total."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval, self.peak_kib = pid, interval, 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        children: list[int] = []
        samples = 0
        while not self._stop_event.is_set():
            if samples % 50 == 0:  # scanning /proc is costly: refresh about once a second
                children = _children(self.pid)
            samples += 1
            total = sum(_status_kib(pid, "VmRSS") for pid in [self.pid, *children])
            self.peak_kib = max(self.peak_kib, total)
            self._stop_event.wait(self.interval)

    def finish(self) -> int:
        """Stop sampling; the peak in KiB, VmHWM included."""
        self._stop_event.set()
        self.join()
        return max(self.peak_kib, _status_kib(self.pid, "VmHWM"))


@dataclass
class RunResult:
    """One timed run of one workload against one receiver."""

    receiver: str
    workload: str
    repeat: int
    ok: bool
    seconds: float = 0.0
    received: int = 0
    peak_rss_mb: float = 0.0
    error: str = ""


def run_once(name: str, workload: Workload, repeat: int, scratch: Path) -> RunResult:
    """Start a fresh receiver, send the workload, check it all arrived, stop it."""
    workdir = Path(tempfile.mkdtemp(prefix=f"{name}-{workload.name}{repeat}-", dir=scratch))
    receiver = RECEIVER_CLASSES[name](workdir)
    result = RunResult(name, workload.name, repeat, ok=False)
    try:
        receiver.start()
        assert receiver.proc is not None
        sampler = RssSampler(receiver.proc.pid)
        sampler.start()
        logs = [(workdir / f"storescu{i}.log").open("wb") for i in range(len(workload.folders))]
        argv = ["storescu", "-aet", "BENCHSCU", "-aec", receiver.ae_title, "+sd", "+r", "-nh"]
        receiver.begin_load()
        begin = time.perf_counter()
        senders = []
        for folder, log in zip(workload.folders, logs, strict=True):
            cmd = [*argv, "127.0.0.1", str(receiver.port), str(folder)]
            senders.append(subprocess.Popen(cmd, env=DCMTK_ENV, stdout=log, stderr=log))
        codes = [sender.wait() for sender in senders]
        result.seconds = time.perf_counter() - begin
        receiver.end_load()
        for log in logs:
            log.close()
        result.peak_rss_mb = sampler.finish() / 1024
        result.received = receiver.count()
        problems = [f"storescu #{i} exited {c}" for i, c in enumerate(codes) if c != 0]
        if receiver.proc.poll() is not None:
            problems.append(f"{name} died with {receiver.proc.returncode}")
        if result.received != workload.instances:
            problems.append(f"received {result.received} of {workload.instances}")
        result.error = "; ".join(problems)
        result.ok = not problems
    except Exception as exc:  # one broken run must not end the benchmark
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        try:
            status = receiver.stop()
            if status not in (None, 0, -signal.SIGTERM) and result.ok:
                result.ok, result.error = False, f"{name} exited {status} on SIGTERM"
        except RuntimeError as exc:
            result.ok, result.error = False, str(exc)
    if result.ok and "Traceback" in receiver.log_tail(10**6):
        result.ok, result.error = False, "traceback in the receiver's output"
    if result.ok:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"\n!! {name} / {workload.name} run {repeat}: {result.error}", file=sys.stderr)
        print(f"!! kept {workdir}; receiver output tail:", file=sys.stderr)
        print(receiver.log_tail(), file=sys.stderr)
    return result


# -- reporting -------------------------------------------------------------------------


@dataclass
class Summary:
    """Medians over the successful runs of one receiver and workload."""

    receiver: str
    workload: str
    runs_ok: int
    runs: int
    seconds: float = float("nan")
    inst_per_s: float = float("nan")
    mb_per_s: float = float("nan")
    peak_rss_mb: float = float("nan")
    all_seconds: list[float] = field(default_factory=list)


def summarise(results: list[RunResult], workload: Workload, name: str) -> Summary:
    """Median wall time and derived throughput for one receiver on one workload."""
    mine = [r for r in results if r.receiver == name and r.workload == workload.name]
    good = [r for r in mine if r.ok]
    summary = Summary(name, workload.name, len(good), len(mine))
    if good:
        summary.all_seconds = [round(r.seconds, 3) for r in good]
        summary.seconds = statistics.median(r.seconds for r in good)
        summary.inst_per_s = workload.instances / summary.seconds
        summary.mb_per_s = workload.total_bytes / 1e6 / summary.seconds
        summary.peak_rss_mb = statistics.median(r.peak_rss_mb for r in good)
    return summary


def print_table(workloads: list[Workload], summaries: list[Summary]) -> None:
    """The result table, then dicomnode's throughput ratios against the others."""
    header = (
        f"{'workload':<9}{'receiver':<11}{'ok':>5}{'median s':>10}{'inst/s':>10}"
        f"{'MB/s':>9}{'peak RSS MB':>13}  runs (s)"
    )
    print("\n" + header + "\n" + "-" * len(header))
    for s in summaries:
        print(
            f"{s.workload:<9}{s.receiver:<11}{f'{s.runs_ok}/{s.runs}':>5}{s.seconds:>10.2f}"
            f"{s.inst_per_s:>10.1f}{s.mb_per_s:>9.1f}{s.peak_rss_mb:>13.1f}  {s.all_seconds}"
        )
    print()
    for workload in workloads:
        print(
            f"({workload.name}) {workload.description}: {workload.instances} instances, "
            f"{workload.total_bytes / 1e6:.1f} MB"
        )
        by_name = {s.receiver: s for s in summaries if s.workload == workload.name}
        mine = by_name.get("dicomnode")
        for other in ("orthanc", "storescp"):
            if mine is None or other not in by_name:
                continue
            ratio = mine.inst_per_s / by_name[other].inst_per_s
            print(f"    dicomnode/{other} throughput: {ratio:.2f}x")
        if mine is not None and "dicomnode-run" in by_name:
            ratio = by_name["dicomnode-run"].inst_per_s / mine.inst_per_s
            print(f"    dicomnode run/serve throughput: {ratio:.2f}x")


def machine_facts() -> dict[str, Any]:
    """CPU count, CPU model and memory, for the record."""
    model = ""
    with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_gib = round(_status_kib("/proc/meminfo", "MemTotal") / 2**20, 1)
    return {"nproc": os.cpu_count(), "cpu_model": model, "mem_gib": mem_gib,
            "kernel": platform.release(), "python": platform.python_version()}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Parse options, prepare the data, run every repeat, print and save the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=("a", "b", "c", "all"), default="all")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--receivers", default=",".join(RECEIVERS))
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=1.0,
        help="dicomnode-polled: seconds between page loads (0: back to back)",
    )
    parser.add_argument("--json", type=Path, help="save runs and summaries as JSON here")
    parser.add_argument("--data-dir", type=Path, default=TMP / "dicomnode-bench-data")
    parser.add_argument("--scratch", type=Path, default=TMP, help="parent of run storage")
    parser.add_argument(
        "--node-setting",
        action="append",
        default=[],
        metavar="'KEY = VALUE'",
        help="an extra [node] line for dicomnode's settings (repeatable)",
    )
    args = parser.parse_args(argv)
    DicomnodeReceiver.node_settings = tuple(args.node_setting)
    DicomnodePolledReceiver.interval = args.poll_interval
    names = [n.strip() for n in args.receivers.split(",") if n.strip()]
    unknown = sorted(set(names) - set(RECEIVER_CLASSES))
    if unknown or not names:
        parser.error(f"unknown receivers {unknown}; choose from {', '.join(RECEIVER_CLASSES)}")
    for tool in ("storescu", "echoscu", *(["storescp"] if "storescp" in names else [])):
        if shutil.which(tool) is None:
            parser.error(f"{tool} (DCMTK) is not on PATH")
    args.data_dir.mkdir(parents=True, exist_ok=True)
    workloads = []
    if args.workload in ("a", "all"):
        workloads.append(prepare_ct(args.data_dir))
    if args.workload in ("b", "all"):
        workloads.append(prepare_small(args.data_dir))
    if args.workload in ("c", "all"):
        workloads.append(prepare_large(args.data_dir))
    facts = machine_facts()
    print(f"machine: {facts}")
    scratch = Path(tempfile.mkdtemp(prefix="bench-ingest-", dir=args.scratch))
    results: list[RunResult] = []
    for workload in workloads:
        for repeat in range(1, args.repeat + 1):
            for name in names:  # interleaved, so drift hits every receiver alike
                result = run_once(name, workload, repeat, scratch)
                results.append(result)
                print(
                    f"  {workload.name} #{repeat} {name:<10} "
                    f"{'ok ' if result.ok else 'FAIL'} {result.seconds:7.2f} s "
                    f"{result.peak_rss_mb:7.1f} MB {result.error}",
                    flush=True,
                )
    if not any(scratch.iterdir()):
        scratch.rmdir()
    summaries = [summarise(results, w, n) for w in workloads for n in names]
    print_table(workloads, summaries)
    if args.json is not None:
        payload = {
            "machine": facts,
            "workloads": [{**asdict(w), "folders": [str(f) for f in w.folders]} for w in workloads],
            "runs": [asdict(r) for r in results],
            "summaries": [asdict(s) for s in summaries],
        }
        args.json.write_text(json.dumps(payload, indent=2), encoding="utf-8")
        print(f"\nsaved {args.json}")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

"""What a success promises: disk full, a killed node, large instances, no PHI in logs."""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage

from dicomnode.receive.status import Status
from dicomnode.synth.ct import write_ct_series
from tests.factories import dataset_bytes, encode, sha256_file, small_ct
from tests.nodeproc import NodeProcess
from tests.scu import send_file, storescu
from tests.tmpfs import mounted_tmpfs


def check_rows_match_files(node: NodeProcess) -> None:
    """Every row has its intact file, every file has a row, nothing left in the spool."""
    records = node.instances()
    files = node.stored_files()
    assert sorted(node.data_dir / r.path for r in records) == files
    for record in records:
        assert sha256_file(node.data_dir / record.path) == record.sha256
    assert [p for p in (node.data_dir / "spool").rglob("*") if p.is_file()] == []


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path / "disk", "3m") as mount:
        yield mount


def test_disk_full_answers_a700_leaves_nothing_partial_and_recovers(
    tmp_path: Path, small_disk: Path
) -> None:
    with NodeProcess(tmp_path / "node", data_dir=small_disk / "var") as node:
        filler = small_disk / "filler"
        free = shutil.disk_usage(small_disk).free
        filler.write_bytes(b"\0" * max(0, free - 400_000))
        statuses = []
        for i in range(60):
            path = tmp_path / f"{i}.dcm"
            path.write_bytes(encode(small_ct(rows=128, columns=128)))  # ~33 KB each
            statuses.append(send_file(node.port, path))
        assert set(statuses) <= {Status.SUCCESS, Status.OUT_OF_RESOURCES}
        assert Status.OUT_OF_RESOURCES in statuses
        assert (
            "action=instance_store_failed" in node.log_text() or "store_refused" in node.log_text()
        )
        check_rows_match_files(node)

        filler.unlink()  # space is back: the node serves again without a restart
        again = tmp_path / "again.dcm"
        again.write_bytes(encode(small_ct(rows=128, columns=128)))
        assert send_file(node.port, again) == Status.SUCCESS
        check_rows_match_files(node)


def _stream(port: int, files: list[Path], acked: dict[str, int]) -> None:
    """Send files over one association until it breaks; record each success."""
    ae = AE(ae_title="STREAMER")
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 10
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    _config.STORE_SEND_CHUNKED_DATASET = True
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMNODE")
    if not assoc.is_established:
        return
    for path in files:
        try:
            status = assoc.send_c_store(path)
        except (OSError, RuntimeError, ValueError):
            break
        if not status or "Status" not in status:
            break
        acked[path.name] = int(status.Status)
    if assoc.is_established:
        assoc.release()


# pynetdicom leaks its socket when the peer dies under it; that is the point here.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_sigkill_loses_no_acknowledged_instance_and_resend_adds_no_duplicate(
    tmp_path: Path,
) -> None:
    source = tmp_path / "src"
    source.mkdir()
    files = []
    for i in range(400):
        path = source / f"{i:04d}.dcm"
        path.write_bytes(encode(small_ct(rows=64, columns=64)))
        files.append(path)
    node = NodeProcess(tmp_path / "node").start()
    acked: dict[str, int] = {}
    sender = threading.Thread(target=_stream, args=(node.port, files, acked))
    sender.start()
    while len(acked) < 100 and sender.is_alive():
        threading.Event().wait(0.01)
    node.kill()  # mid-stream, like a power cut
    sender.join(30)
    assert 100 <= len(acked) < len(files)
    assert set(acked.values()) == {Status.SUCCESS}

    restarted = NodeProcess(tmp_path / "node2", data_dir=node.data_dir).start()
    try:
        # Everything acknowledged before the kill is there and intact.
        by_uid = {r.sop_instance_uid: r for r in restarted.instances()}
        for name in acked:
            sent = files[int(name[:4])]
            uid = dcmread(sent, stop_before_pixels=True).SOPInstanceUID
            assert dataset_bytes(restarted.data_dir / by_uid[uid].path) == dataset_bytes(sent)
        # Resend what did not get a success: nothing is duplicated.
        rest = [path for path in files if path.name not in acked]
        resent: dict[str, int] = {}
        _stream(restarted.port, rest, resent)
        assert len(resent) == len(rest) and set(resent.values()) == {Status.SUCCESS}
        records = restarted.instances()
        assert len(records) == len({r.sop_instance_uid for r in records}) == len(files)
        check_rows_match_files(restarted)
    finally:
        restarted.stop()


@pytest.mark.slow
@pytest.mark.dcmtk
@pytest.mark.skipif(shutil.which("storescu") is None, reason="DCMTK not installed")
def test_storescu_300_slice_ct_arrives_intact(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path / "ct", slices=300, rows=512, columns=512, seed=3)
    with NodeProcess(tmp_path / "node") as node:
        done = storescu(node.port, paths, ("-R",))
        assert done.returncode == 0, done.stderr
        records = node.instances()
        assert len(records) == 300
        by_uid = {r.sop_instance_uid: r for r in records}
        for path in paths[::29]:
            ds = dcmread(path)
            stored = dcmread(node.data_dir / by_uid[ds.SOPInstanceUID].path)
            assert stored == ds
        assert {r.rows for r in records} == {512}
        assert {r.image_plane for r in records} == {"AXIAL"}
        check_rows_match_files(node)


def test_no_patient_name_id_or_birth_date_reaches_logs_or_index(tmp_path: Path) -> None:
    secrets = {
        "PatientName": "SECRET^NAME",
        "PatientID": "PID-SECRET-77",
        "PatientBirthDate": "19010203",
    }
    with NodeProcess(tmp_path / "node") as node:
        node.stop()
        node.start(log_level="DEBUG")
        for i in range(2):
            ds = small_ct()
            for key, value in secrets.items():
                setattr(ds, key, value)
            path = tmp_path / f"{i}.dcm"
            data = encode(ds)
            path.write_bytes(data if i == 0 else data[: len(data) - 100])  # one refused
            send_file(node.port, path)
        node.stop()
        logs = node.log_text()
        assert "action=instance_stored" in logs and "action=store_refused" in logs
        dump = subprocess.run(
            ["sqlite3", str(node.data_dir / "dicomnode.sqlite"), ".dump"],
            capture_output=True, text=True, check=False,
        ).stdout if shutil.which("sqlite3") else ""  # fmt: skip
        for value in secrets.values():
            assert value not in logs
            assert value not in dump
            assert value.split("^")[0] not in logs

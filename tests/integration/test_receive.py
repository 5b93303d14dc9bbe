"""The SCP, started as a user starts it, against pynetdicom and DCMTK senders."""

from __future__ import annotations

import os
import shutil
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]
from sqlalchemy import select

from dicomnode import __version__
from dicomnode.index.schema import AssociationRecord, StudyRecord, StudyState
from dicomnode.receive.status import RESERVED_BY_PYNETDICOM, Status
from dicomnode.uids import implementation_identity
from tests.factories import (
    bogus_length_element,
    dataset_bytes,
    encode,
    sha256_file,
    short_pixel_data,
    small_ct,
    truncated_pixel_data,
)
from tests.nodeproc import NodeProcess
from tests.scu import send_file, storescu, try_associate

#: One real file per transfer syntax that pydicom bundles with complete UIDs.
#: (No bundled JPEG-LS near-lossless file has a Study Instance UID.)
BUNDLED_BY_SYNTAX = {
    "1.2.840.10008.1.2": "MR_small_implicit.dcm",
    "1.2.840.10008.1.2.1": "CT_small.dcm",
    "1.2.840.10008.1.2.2": "MR_small_bigendian.dcm",
    "1.2.840.10008.1.2.1.99": "image_dfl.dcm",
    "1.2.840.10008.1.2.4.50": "SC_rgb_dcmtk_+eb+cr.dcm",
    "1.2.840.10008.1.2.4.51": "JPEG-lossy.dcm",
    "1.2.840.10008.1.2.4.70": "SC_rgb_jpeg_gdcm.dcm",
    "1.2.840.10008.1.2.4.80": "MR_small_jpeg_ls_lossless.dcm",
    "1.2.840.10008.1.2.4.90": "MR_small_jp2klossless.dcm",
    "1.2.840.10008.1.2.4.91": "JPEG2000.dcm",
    "1.2.840.10008.1.2.5": "MR_small_RLE.dcm",
}

needs_dcmtk = pytest.mark.skipif(shutil.which("storescu") is None, reason="DCMTK not installed")


def bundled(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    assert path is not None, f"pydicom does not bundle {name}"
    return Path(path)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    # Two receiving processes whatever the machine, as on a two-core one by default.
    with NodeProcess(
        tmp_path_factory.mktemp("node"), study_quiet_seconds=2, receive_processes=2
    ) as running:
        yield running


def stored_path(node: NodeProcess, sop_instance_uid: str) -> Path:
    for record in node.instances():
        if record.sop_instance_uid == sop_instance_uid:
            return node.data_dir / record.path
    raise AssertionError(f"{sop_instance_uid} is not in the index")


def write(tmp_path: Path, data: bytes, name: str = "x.dcm") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("syntax", sorted(BUNDLED_BY_SYNTAX))
def test_store_keeps_bundled_file_byte_for_byte_in_every_transfer_syntax(
    node: NodeProcess, syntax: str
) -> None:
    source = bundled(BUNDLED_BY_SYNTAX[syntax])
    assert send_file(node.port, source) == Status.SUCCESS
    ds = dcmread(source, stop_before_pixels=True)
    stored = stored_path(node, ds.SOPInstanceUID)
    assert dataset_bytes(stored) == dataset_bytes(source)
    record = next(r for r in node.instances() if r.sop_instance_uid == ds.SOPInstanceUID)
    assert record.transfer_syntax_uid == syntax
    assert record.sop_class_uid == ds.SOPClassUID
    assert record.size_bytes == stored.stat().st_size
    assert record.sha256 == sha256_file(stored)
    assert record.calling_ae == "TESTSCU"


@needs_dcmtk
@pytest.mark.dcmtk
def test_serving_processes_run_without_numpy(node: NodeProcess, tmp_path: Path) -> None:
    # The node's own process and its extra receiving processes never decode pixels:
    # they keep numpy (and pydicom's pixel plugins) out, ~14 MB each.
    send_file(node.port, write(tmp_path, encode(small_ct())))
    for pid in node.serving_pids():
        mapped = Path(f"/proc/{pid}/maps").read_text()
        assert "numpy" not in mapped, f"process {pid} loaded numpy"


@needs_dcmtk
@pytest.mark.dcmtk
def test_serving_processes_run_without_numpy_when_rules_are_configured(tmp_path: Path) -> None:
    # Compiling [[pipelines]] and [[routes]] rules at start reads pydicom's data
    # dictionary; pydicom must not drag numpy in with it.
    rules = (
        '[[pipelines]]\nname = "ct"\nmatch = { Modality = "CT" }\nmodel = "test-stats"\n'
        '[[peers]]\nname = "pacs"\nae_title = "PACS"\nhost = "127.0.0.1"\nport = 9\n'
        '[[routes]]\nname = "mr"\nmatch = { Modality = "re:^MR$" }\nsend_to = ["pacs"]\n'
    )
    with NodeProcess(tmp_path / "node", extra_toml=rules) as node:
        send_file(node.port, write(tmp_path, encode(small_ct())))
        for pid in node.serving_pids():
            mapped = Path(f"/proc/{pid}/maps").read_text()
            assert "numpy" not in mapped, f"process {pid} loaded numpy"


def _open_sockets(pids: list[int]) -> int:
    count = 0
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                count += os.readlink(fd).startswith("socket:")
            except FileNotFoundError:  # closed while we looked
                continue
    return count


def test_finished_associations_leave_no_open_sockets_behind(node: NodeProcess) -> None:
    # Every receiving process must be up and listening before the baseline is taken.
    deadline = time.monotonic() + 30
    while len(node.serving_pids()) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert try_associate(node.port, "DICOMNODE", "TESTSCU")
    time.sleep(1)
    pids = node.serving_pids()
    before = _open_sockets(pids)
    for _ in range(40):
        assert try_associate(node.port, "DICOMNODE", "TESTSCU")
    deadline = time.monotonic() + 10
    while _open_sockets(pids) > before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _open_sockets(pids) <= before


def test_echoscu_gets_success(node: NodeProcess) -> None:
    import subprocess

    from tests.scu import dcmtk_env

    done = subprocess.run(
        ["echoscu", "-aec", "DICOMNODE", "127.0.0.1", str(node.port)],
        capture_output=True, text=True, env=dcmtk_env(), timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


@needs_dcmtk
@pytest.mark.dcmtk
def test_storescu_series_is_indexed_with_its_attributes(node: NodeProcess) -> None:
    folder = bundled("CT_small.dcm").parent / "dicomdirtests" / "98892001" / "CT5N"
    files = sorted(folder.iterdir())
    done = storescu(node.port, files, ("-R",))  # propose only what is sent
    assert done.returncode == 0, done.stderr
    for source in files:
        # storescu re-encodes what it reads (byte-for-byte storage of what arrives is
        # proven with the pynetdicom sender above), so compare element by element.
        ds = dcmread(source)
        stored = dcmread(stored_path(node, ds.SOPInstanceUID))
        assert stored == ds
    records = [r for r in node.instances() if r.calling_ae == "STORESCU"]
    series_uids = {dcmread(f, stop_before_pixels=True).SeriesInstanceUID for f in files}
    with node.session() as session:
        from dicomnode.index.schema import SeriesRecord

        series = session.scalars(
            select(SeriesRecord).where(SeriesRecord.series_instance_uid.in_(series_uids))
        ).all()
        assert {s.modality for s in series} == {"CT"}
    assert len({r.sop_instance_uid for r in records}) >= len(files)


def test_study_becomes_stable_after_the_quiet_period(node: NodeProcess, tmp_path: Path) -> None:
    ds = small_ct()
    sent = time.monotonic()
    assert send_file(node.port, write(tmp_path, encode(ds))) == Status.SUCCESS
    state = None
    while time.monotonic() - sent < 15:
        with node.session() as session:
            study = session.scalars(
                select(StudyRecord).where(StudyRecord.study_instance_uid == ds.StudyInstanceUID)
            ).one()
            state = study.state
        if state is StudyState.STABLE:
            break
        time.sleep(0.1)
    waited = time.monotonic() - sent
    assert state is StudyState.STABLE
    # quiet period is 2 s; the scan runs every 0.4 s
    assert 1.9 <= waited <= 6.0, waited  # generous upper bound: CI machines are busy
    assert study.stable_at is not None
    assert (study.stable_at - study.last_received_at).total_seconds() >= 2.0


def test_same_instance_twice_with_same_bytes_is_stored_once(
    node: NodeProcess, tmp_path: Path
) -> None:
    path = write(tmp_path, encode(small_ct()))
    assert send_file(node.port, path) == Status.SUCCESS
    files_before = node.stored_files()
    assert send_file(node.port, path) == Status.SUCCESS
    assert node.stored_files() == files_before
    assert "instance_duplicate" in node.log_text()


def test_same_uid_with_different_bytes_replaces_and_keeps_the_old_copy(
    node: NodeProcess, tmp_path: Path
) -> None:
    first = small_ct()
    second = small_ct(
        sop_instance_uid=first.SOPInstanceUID,
        study_instance_uid=first.StudyInstanceUID,
        series_instance_uid=first.SeriesInstanceUID,
    )
    second.InstanceNumber = 99
    assert send_file(node.port, write(tmp_path, encode(first), "a.dcm")) == Status.SUCCESS
    old_hash = sha256_file(stored_path(node, first.SOPInstanceUID))
    assert send_file(node.port, write(tmp_path, encode(second), "b.dcm")) == Status.SUCCESS
    stored = stored_path(node, first.SOPInstanceUID)
    assert dataset_bytes(stored) == dataset_bytes(encode(second))
    kept = list((node.data_dir / "superseded").rglob(f"{first.SOPInstanceUID}.*.dcm"))
    assert [sha256_file(p) for p in kept] == [old_hash]
    assert "instance_replaced" in node.log_text()


def with_bad_uid(keyword: str, value: str) -> bytes:
    """An encoded small CT whose ``keyword`` (and File Meta copy) holds ``value``."""
    ds = small_ct()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid UI value
        setattr(ds, keyword, value)
        if keyword == "SOPInstanceUID":
            ds.file_meta.MediaStorageSOPInstanceUID = value
        return encode(ds)


@pytest.mark.parametrize("bad_uid", ["../../evil", "1.2/../../3", "/etc/cron.d/x", "1..2", "1.2.a"])
def test_invalid_uid_is_refused_and_writes_nothing_outside_the_store(
    node: NodeProcess, tmp_path: Path, bad_uid: str
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pynetdicom warns about the invalid UID it sends
        status = send_file(node.port, write(tmp_path, with_bad_uid("SOPInstanceUID", bad_uid)))
    assert status == Status.CANNOT_UNDERSTAND
    assert not any("evil" in str(p) or "cron" in str(p) for p in node.data_dir.parent.rglob("*"))
    assert not [p for p in (node.data_dir / "spool").rglob("*") if p.is_file()]


def test_study_uid_with_path_separator_is_refused(node: NodeProcess, tmp_path: Path) -> None:
    data = with_bad_uid("StudyInstanceUID", "1.2.3/../../../outside")
    assert send_file(node.port, write(tmp_path, data)) == Status.CANNOT_UNDERSTAND
    assert not list(node.data_dir.parent.rglob("outside*"))


def test_command_and_dataset_uid_mismatch_gets_a900(node: NodeProcess, tmp_path: Path) -> None:
    ds = small_ct()
    data = encode(ds)
    # The sender takes the command's UID from the File Meta: make it differ.
    other = ds.SOPInstanceUID[:-1] + ("1" if ds.SOPInstanceUID[-1] != "1" else "2")
    meta_end = len(data) - len(dataset_bytes(data))
    patched = data[:meta_end].replace(ds.SOPInstanceUID.encode(), other.encode()) + data[meta_end:]
    path = write(tmp_path, patched)
    assert send_file(node.port, path) == Status.DATASET_MISMATCH
    assert ds.SOPInstanceUID not in {r.sop_instance_uid for r in node.instances()}


@pytest.mark.parametrize(
    "make",
    [truncated_pixel_data, bogus_length_element, lambda ds: encode(short_pixel_data(ds))],
    ids=["pixel-data-cut-short", "length-past-end", "pixel-data-shorter-than-rows-columns"],
)
def test_truncated_data_gets_c000_and_leaves_no_file(
    node: NodeProcess, tmp_path: Path, make: object
) -> None:
    ds = small_ct(rows=64, columns=64)
    path = write(tmp_path, make(ds))  # type: ignore[operator]
    files_before = node.stored_files()
    assert send_file(node.port, path) == Status.CANNOT_UNDERSTAND
    assert node.stored_files() == files_before
    assert not [p for p in (node.data_dir / "spool").rglob("*") if p.is_file()]


def test_no_reply_ever_uses_a_pynetdicom_reserved_status() -> None:
    assert not {int(s) for s in Status} & RESERVED_BY_PYNETDICOM


def test_wrong_called_ae_is_rejected(node: NodeProcess) -> None:
    assert try_associate(node.port, "NOTUS", "TESTSCU") is False
    assert try_associate(node.port, "DICOMNODE", "TESTSCU") is True
    assert "association_rejected" in node.log_text()


def test_calling_ae_outside_the_allow_list_is_rejected(tmp_path: Path) -> None:
    with NodeProcess(tmp_path, allowed_calling_aets=["MODALITY1"]) as restricted:
        assert try_associate(restricted.port, "DICOMNODE", "INTRUDER") is False
        assert try_associate(restricted.port, "DICOMNODE", "MODALITY1") is True
        path = write(tmp_path, encode(small_ct()))
        assert send_file(restricted.port, path, calling_ae="INTRUDER") is None
        assert send_file(restricted.port, path, calling_ae="MODALITY1") == Status.SUCCESS
        assert restricted.log_text().count("action=association_rejected") >= 2


def test_connection_from_a_host_outside_the_allow_list_is_closed(tmp_path: Path) -> None:
    import socket

    with NodeProcess(tmp_path, allowed_hosts=["127.0.0.1"]) as restricted:
        assert try_associate(restricted.port, "DICOMNODE", "TESTSCU") is True  # from 127.0.0.1
        # Still to 127.0.0.1, from another loopback address outside the list: the node
        # closes the connection before reading anything.
        with socket.create_connection(
            ("127.0.0.1", restricted.port), timeout=10, source_address=("127.0.0.2", 0)
        ) as refused:
            assert refused.recv(1) == b""
        # An allowed host's idle connection stays open (until pynetdicom's timeout).
        with socket.create_connection(("127.0.0.1", restricted.port), timeout=1) as allowed:
            with pytest.raises(TimeoutError):
                allowed.recv(1)
        assert "action=host_rejected peer=127.0.0.2:" in restricted.log_text()


def test_associations_are_recorded_with_their_instance_counts(
    node: NodeProcess, tmp_path: Path
) -> None:
    send_file(node.port, write(tmp_path, encode(small_ct())), calling_ae="COUNTME")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with node.session() as session:
            rows = session.scalars(
                select(AssociationRecord).where(AssociationRecord.calling_ae == "COUNTME")
            ).all()
        if rows and rows[0].ended_at is not None:
            break
        time.sleep(0.05)
    assert [(r.instances_received, r.end_reason) for r in rows] == [(1, "released")]


def test_the_node_names_itself_on_the_wire_and_in_stored_files(
    node: NodeProcess, tmp_path: Path
) -> None:
    uid, name = implementation_identity(__version__)
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="DICOMNODE")
    assert assoc.is_established
    # The A-ASSOCIATE-AC names dicomnode, not pynetdicom (PS3.7 D.3.3.2).
    assert (
        assoc.acceptor.implementation_class_uid,
        assoc.acceptor.implementation_version_name,
    ) == (uid, name)
    ds = small_ct()
    assert assoc.send_c_store(ds).Status == Status.SUCCESS
    assoc.release()
    meta = dcmread(stored_path(node, ds.SOPInstanceUID)).file_meta
    assert (meta.ImplementationClassUID, meta.ImplementationVersionName) == (uid, name)

"""Routes deliver: the whole node forwards MG studies to DCMTK storescp and to Orthanc.

What is compared byte for byte: the encoded dataset after the File Meta Information.
A receiver writes its own File Meta (storescp puts its Implementation Class UID and
our AE title as Source Application Entity Title there), so the File Meta is compared
only by its UIDs; storescp runs with ``+B`` (bit-preserving) so its file holds the
dataset exactly as it came off the wire.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pydicom.filereader import read_file_meta_info
from pydicom.uid import ImplicitVRLittleEndian, RLELossless
from sqlalchemy import select

from dicomnode.index.schema import DeliveryRecord, DeliveryState
from dicomnode.receive.status import Status
from tests.factories import dataset_bytes, encode, small_ct
from tests.nodeproc import NodeProcess, free_port, wait_for_echo
from tests.orthanc import OrthancServer, require_orthanc
from tests.scu import dcmtk_env, send_file

MAMMOGRAPHY = "1.2.840.10008.5.1.4.1.1.1.2"  # Digital Mammography X-Ray, For Presentation
ROUTE = '\n[[routes]]\nname = "mammo"\nmatch = { Modality = "MG" }\nsend_to = ["archive"]\n'


def peer_toml(ae_title: str, port: int) -> str:
    return (
        f'\n[[peers]]\nname = "archive"\nae_title = "{ae_title}"\nhost = "127.0.0.1"\n'
        f"port = {port}\n"
    )


def settings_toml(ae_title: str, port: int) -> str:
    send = "[send]\nretry_backoff_seconds = 0.3\nmax_backoff_seconds = 1.5\n"
    return "[worker]\ncount = 0\n" + send + peer_toml(ae_title, port) + ROUTE


def mammogram(study_instance_uid: str, transfer_syntax: str | None = None) -> Dataset:
    """A one-frame MG image (a small CT relabelled; what a route looks at is Modality)."""
    ds = small_ct(study_instance_uid=study_instance_uid, rows=32, columns=32)
    ds.Modality = "MG"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = MAMMOGRAPHY
    if transfer_syntax == RLELossless:
        ds.compress(RLELossless)
    elif transfer_syntax is not None:
        ds.file_meta.TransferSyntaxUID = transfer_syntax
    return ds


def send_study(node: NodeProcess, folder: Path) -> dict[str, Path]:
    """Send three MG instances (explicit, implicit, RLE) and one CT to the node."""
    folder.mkdir(parents=True, exist_ok=True)
    study = small_ct().StudyInstanceUID
    sent: dict[str, Path] = {}
    for syntax in (None, ImplicitVRLittleEndian, RLELossless):
        ds = mammogram(study, syntax)
        sent[ds.SOPInstanceUID] = folder / f"{ds.SOPInstanceUID}.dcm"
        sent[ds.SOPInstanceUID].write_bytes(encode(ds))
    ct = folder / "ct.dcm"
    ct.write_bytes(encode(small_ct(study_instance_uid=study)))  # not routed
    for path in [*sent.values(), ct]:
        assert send_file(node.port, path) == Status.SUCCESS
    return sent


def deliveries(node: NodeProcess) -> list[DeliveryRecord]:
    with node.session() as session:
        return list(session.scalars(select(DeliveryRecord).order_by(DeliveryRecord.id)))


def wait(predicate: Callable[[], bool], timeout: float = 20, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not reached: {what}"
        time.sleep(0.1)


def all_sent(node: NodeProcess, count: int) -> Callable[[], bool]:
    def check() -> bool:
        rows = deliveries(node)
        return len(rows) == count and all(d.state is DeliveryState.SENT for d in rows)

    return check


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """DCMTK storescp on a free port, bit-preserving, writing files to a folder."""
    exe = shutil.which("storescp")
    if exe is None:
        pytest.skip("DCMTK storescp not installed (Debian package: dcmtk)")
    port, out = free_port(), tmp_path / "storescp"
    out.mkdir()
    # storescp cannot take port 0: a port free a moment ago. +xa: every transfer
    # syntax; +B: write the dataset exactly as received.
    argv = [exe, "+xa", "+B", "-aet", "STORESCP", "-od", str(out), str(port)]
    with (tmp_path / "storescp.log").open("wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=log, env=dcmtk_env())
    try:
        wait_for_echo(port, "STORESCP", timeout=15)
        yield port, out
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.dcmtk
def test_route_forwards_mammograms_to_storescp_byte_for_byte(
    tmp_path: Path, storescp: tuple[int, Path]
) -> None:
    port, out = storescp
    config = settings_toml("STORESCP", port)
    with NodeProcess(tmp_path / "n", extra_toml=config, study_quiet_seconds=0.3) as node:
        sent = send_study(node, tmp_path / "sent")
        wait(all_sent(node, 3), what="three deliveries sent")
        assert [d.attempts for d in deliveries(node)] == [1, 1, 1]

    received = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in out.iterdir()}
    assert received.keys() == sent.keys(), "exactly the MG instances, each once"
    for uid, original in sent.items():
        mine, theirs = read_file_meta_info(original), read_file_meta_info(received[uid])
        for keyword in ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID",
                        "TransferSyntaxUID"):  # fmt: skip
            assert mine[keyword].value == theirs[keyword].value, keyword
        assert dataset_bytes(received[uid]) == dataset_bytes(original), uid
        assert theirs.SourceApplicationEntityTitle.strip() == "DICOMNODE"


@pytest.mark.orthanc
@pytest.mark.slow
def test_route_to_orthanc_that_was_down_delivers_everything_exactly_once(
    tmp_path: Path,
) -> None:
    require_orthanc()
    node_port = free_port()
    orthanc = OrthancServer(
        tmp_path / "orthanc", modalities={"node": ("DICOMNODE", "127.0.0.1", node_port)}
    )
    config = settings_toml("ORTHANC", orthanc.dicom_port)
    node = NodeProcess(tmp_path / "n", extra_toml=config, port=node_port, study_quiet_seconds=0.3)
    with node, orthanc:
        orthanc.stop()  # the PACS is down while the node receives and queues
        sent = send_study(node, tmp_path / "sent")
        wait(
            lambda: len(deliveries(node)) == 3
            and all(d.attempts >= 2 and d.state is DeliveryState.PENDING for d in deliveries(node)),
            what="three deliveries retried while Orthanc is down",
        )  # fmt: skip
        assert all("cannot connect" in (d.error or "") for d in deliveries(node))

        orthanc.start()
        wait(all_sent(node, 3), what="three deliveries sent after Orthanc returned")
        time.sleep(2)  # longer than the largest backoff: nothing is sent a second time

        assert sorted(orthanc.received_stores()) == sorted(sent), "each instance once"
        assert orthanc.sop_instance_uids() == sorted(sent)
        for orthanc_id in orthanc.instances():
            stored = orthanc.instance_file(orthanc_id)
            uid = str(dcmread(BytesIO(stored), stop_before_pixels=True).SOPInstanceUID)
            assert dataset_bytes(stored) == dataset_bytes(sent[uid]), uid
    assert node.proc is not None and node.proc.returncode == 0

"""Bombs, giants and hostile values against the node, from a real pynetdicom SCU.

Each refusal must come at once with our status and an Error Comment, leave nothing
behind (no file under ``instances/`` or ``spool/``, no index row) and, for the bombs,
keep the receiving process's memory flat (its RSS read from /proc while it works).
"""

from __future__ import annotations

import struct
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import Dataset
from pynetdicom import AE, _config
from pynetdicom.pdu_primitives import P_DATA
from sqlalchemy import select

from dicomnode.index.schema import SeriesRecord, StudyRecord
from dicomnode.receive.status import Status
from tests.factories import (
    dataset_bytes,
    deflate_bomb,
    empty_element_bomb,
    encode,
    small_ct,
    with_raw_value,
)
from tests.nodeproc import NodeProcess

NO_WORKERS = "[worker]\ncount = 0\n"
MiB = 2**20


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """A node with the default limits; one receiving process, whose RSS we read."""
    with NodeProcess(
        tmp_path_factory.mktemp("node"), extra_toml=NO_WORKERS, receive_processes=1
    ) as running:
        yield running


@pytest.fixture(scope="module")
def tight_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """A node whose three limits are set low in its settings file."""
    limits = {"max_instance_bytes": 64 * 1024, "max_inflated_bytes": MiB, "max_elements": 1000}
    with NodeProcess(
        tmp_path_factory.mktemp("tight"), extra_toml=NO_WORKERS, receive_processes=1, **limits
    ) as running:
        yield running


class PeakRss:
    """Samples a process's resident set size (/proc/PID/status) in a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.baseline = self.now()
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def now(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.now())

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth(self) -> int:
        """How far the peak rose above the RSS before."""
        return self.peak - self.baseline


def store(port: int, path: Path) -> Dataset:
    """C-STORE the file's bytes as they are (streamed from disk); the response."""
    from pydicom.filereader import read_file_meta_info

    meta = read_file_meta_info(path)
    ae = AE(ae_title="TESTSCU")
    ae.acse_timeout = ae.network_timeout = 30
    ae.dimse_timeout = 60
    ae.add_requested_context(str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        assoc = ae.associate("127.0.0.1", port, ae_title="DICOMNODE")
        assert assoc.is_established
        try:
            response = assoc.send_c_store(path)
        finally:
            assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
    assert "Status" in response, "no response"
    return response


def _command_element(element: int, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\0"
    return struct.pack("<HHI", 0x0000, element, len(value)) + value


def store_command(sop_class_uid: str, sop_instance_uid: bytes) -> bytes:
    """A C-STORE-RQ command set (PS3.7 9.3.1.1) with the Affected SOP Instance UID
    exactly as given: pynetdicom's SCU would not send an empty or invalid one."""
    body = b"".join(
        (
            _command_element(0x0002, sop_class_uid.encode()),
            _command_element(0x0100, struct.pack("<H", 0x0001)),  # C-STORE-RQ
            _command_element(0x0110, struct.pack("<H", 1)),  # Message ID
            _command_element(0x0700, struct.pack("<H", 0)),  # Priority: medium
            _command_element(0x0800, struct.pack("<H", 0)),  # a data set follows
            _command_element(0x1000, sop_instance_uid),
        )
    )
    return _command_element(0x0000, struct.pack("<I", len(body))) + body


def store_with_command_uid(
    port: int, sop_instance_uid: bytes, wait: float = 10
) -> tuple[Dataset | None, float]:
    """Associate with pynetdicom and send a C-STORE-RQ whose command carries
    ``sop_instance_uid``, then a small CT; the response (None: none within ``wait``
    seconds) and how long it took."""
    ds = small_ct()
    ae = AE(ae_title="TESTSCU")
    ae.acse_timeout = ae.network_timeout = 30
    ae.dimse_timeout = wait
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMNODE")
    assert assoc.is_established
    try:
        # Pause the association's reactor, as pynetdicom's own send_* methods do, or it
        # may take the response off the queue before we read it.
        assoc._reactor_checkpoint.clear()
        while not assoc._is_paused:
            time.sleep(0.0001)
        context_id = assoc.accepted_contexts[0].context_id
        started = time.monotonic()
        for control, value in (
            (0x03, store_command(ds.SOPClassUID, sop_instance_uid)),  # last command fragment
            (0x02, dataset_bytes(encode(ds))),  # last data set fragment
        ):
            pdata = P_DATA()
            pdata.presentation_data_value_list = [[context_id, bytes([control]) + value]]
            assoc.dul.send_pdu(pdata)
        _, response = assoc.dimse.get_msg(block=True)
        return response, time.monotonic() - started
    finally:
        assoc.abort()


def assert_nothing_kept(node: NodeProcess, ds: Dataset) -> None:
    """No file, no spool or scratch file, no index row of ``ds`` or its study."""
    uids = {str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)}
    assert not [
        p for p in node.stored_files() if uids & set(p.parts) or ds.SOPInstanceUID in p.name
    ]
    assert not [p for p in (node.data_dir / "spool").rglob("*") if p.is_file()]
    assert ds.SOPInstanceUID not in {r.sop_instance_uid for r in node.instances()}
    with node.session() as session:
        assert not session.scalars(
            select(StudyRecord).where(StudyRecord.study_instance_uid == ds.StudyInstanceUID)
        ).all()


def wait_for_log(node: NodeProcess, text: str, timeout: float = 5) -> str:
    deadline = time.monotonic() + timeout
    while text not in (log := node.log_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return log


# -- bombs ----------------------------------------------------------------------------


def test_deflate_bomb_of_1_gib_is_refused_with_c000_and_memory_stays_flat(
    node: NodeProcess, tmp_path: Path
) -> None:
    ds = small_ct()
    path = tmp_path / "bomb.dcm"
    assert deflate_bomb(ds, path, 1024 * MiB) < 2 * MiB  # 1 GiB inflated, ~1 MiB sent
    assert node.proc is not None
    with PeakRss(node.proc.pid) as rss:
        response = store(node.port, path)
    assert response.Status == Status.CANNOT_UNDERSTAND
    assert response.ErrorComment == "deflated data set inflates past node.max_inflated_bytes"
    assert_nothing_kept(node, ds)
    assert rss.growth < 48 * MiB, f"RSS rose by {rss.growth / MiB:.1f} MiB"
    log = wait_for_log(node, ds.SOPInstanceUID)
    assert "action=store_refused status=0xC000" in log


def test_deflated_instance_within_the_limit_is_stored(node: NodeProcess, tmp_path: Path) -> None:
    ds = small_ct()
    path = tmp_path / "deflated.dcm"
    deflate_bomb(ds, path, 8 * MiB)  # 8 MiB of zeros is an image, not a bomb
    assert store(node.port, path).Status == Status.SUCCESS
    assert ds.SOPInstanceUID in {r.sop_instance_uid for r in node.instances()}


@pytest.mark.parametrize("nested", [False, True], ids=["top-level", "in-a-sequence"])
def test_empty_element_bomb_is_refused_early_with_c000_and_memory_stays_flat(
    node: NodeProcess, tmp_path: Path, nested: bool
) -> None:
    ds = small_ct()
    path = tmp_path / "bomb.dcm"
    path.write_bytes(empty_element_bomb(ds, 12_000_000, nested=nested))  # 92 MiB
    assert node.proc is not None
    with PeakRss(node.proc.pid) as rss:
        started = time.monotonic()
        response = store(node.port, path)
        took = time.monotonic() - started
    assert response.Status == Status.CANNOT_UNDERSTAND
    assert response.ErrorComment == "more than 1000000 data elements"
    assert_nothing_kept(node, ds)
    # Walking all 12 million elements took ~9 s of CPU; the walk stops at 1 million.
    assert took < 8, f"{took:.1f} s"
    assert rss.growth < 48 * MiB, f"RSS rose by {rss.growth / MiB:.1f} MiB"


def test_instance_of_a_million_elements_is_stored(node: NodeProcess, tmp_path: Path) -> None:
    ds = small_ct()
    path = tmp_path / "many.dcm"
    # The default limit counts every element, the dataset's own ~60 included.
    path.write_bytes(empty_element_bomb(ds, 999_000, nested=True))
    assert store(node.port, path).Status == Status.SUCCESS


# -- configured limits ----------------------------------------------------------------


def test_instance_over_max_instance_bytes_gets_a700_and_leaves_nothing(
    tight_node: NodeProcess, tmp_path: Path
) -> None:
    ds = small_ct(rows=256, columns=256)  # 128 KiB of pixels, over the 64 KiB limit
    path = tmp_path / "large.dcm"
    path.write_bytes(encode(ds))
    response = store(tight_node.port, path)
    # PS3.4 B.2.3 "Refused: Out of Resources": the data is fine, this node keeps
    # nothing that large (until an operator raises the limit).
    assert response.Status == Status.OUT_OF_RESOURCES
    assert response.ErrorComment == "instance larger than node.max_instance_bytes"
    assert_nothing_kept(tight_node, ds)
    small = small_ct()
    path.write_bytes(encode(small))
    assert store(tight_node.port, path).Status == Status.SUCCESS


def test_configured_element_and_inflation_limits_apply(
    tight_node: NodeProcess, tmp_path: Path
) -> None:
    ds = small_ct()
    path = tmp_path / "x.dcm"
    path.write_bytes(empty_element_bomb(ds, 2000))
    response = store(tight_node.port, path)
    assert (response.Status, response.ErrorComment) == (
        Status.CANNOT_UNDERSTAND,
        "more than 1000 data elements",
    )
    assert_nothing_kept(tight_node, ds)
    deflated = small_ct()
    deflate_bomb(deflated, path, 2 * MiB)
    assert store(tight_node.port, path).Status == Status.CANNOT_UNDERSTAND
    assert_nothing_kept(tight_node, deflated)


# -- input hygiene --------------------------------------------------------------------


@pytest.mark.parametrize("keyword", ["StudyInstanceUID", "SeriesInstanceUID"])
def test_uid_with_a_trailing_newline_is_refused_and_not_indexed(
    node: NodeProcess, tmp_path: Path, keyword: str
) -> None:
    ds = small_ct()
    uid = str(getattr(ds, keyword))[:60]
    path = tmp_path / "x.dcm"
    path.write_bytes(with_raw_value(ds, keyword, uid.encode() + b"\n"))
    response = store(node.port, path)
    assert response.Status == Status.CANNOT_UNDERSTAND
    assert response.ErrorComment == f"{keyword} is missing or not a valid UID"
    assert not [p for p in node.data_dir.rglob("*") if "\n" in p.name]
    with node.session() as session:
        assert not session.scalars(
            select(StudyRecord).where(StudyRecord.study_instance_uid.startswith(uid))
        ).all()
        assert not session.scalars(
            select(SeriesRecord).where(SeriesRecord.series_instance_uid.startswith(uid))
        ).all()
    assert_nothing_kept(node, ds)


@pytest.mark.parametrize("frames", [b"-5", b"0", b"1A", b"99999999999"])
def test_number_of_frames_that_is_not_a_positive_integer_gets_c000(
    node: NodeProcess, tmp_path: Path, frames: bytes
) -> None:
    ds = small_ct()
    path = tmp_path / "x.dcm"
    ds.NumberOfFrames = 1  # so that the element is there to be replaced
    path.write_bytes(with_raw_value(ds, "NumberOfFrames", frames))
    response = store(node.port, path)
    assert response.Status == Status.CANNOT_UNDERSTAND
    assert response.ErrorComment == "NumberOfFrames is not a positive integer"
    assert_nothing_kept(node, ds)


@pytest.mark.parametrize(
    "uid",
    [
        b"1.2.a",
        b"../../x",
        b"1.2.3.\x00.4",
        pytest.param(
            b"1" * 65,
            id="65-characters",
        ),
    ],
)
def test_invalid_affected_sop_instance_uid_gets_c000_at_once(node: NodeProcess, uid: bytes) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pynetdicom warns about the UID it decodes
        response, took = store_with_command_uid(node.port, uid)
    assert response is not None and response.Status == Status.CANNOT_UNDERSTAND
    assert took < 2
    assert not [p for p in (node.data_dir / "spool").rglob("*") if p.is_file()]


def test_empty_affected_sop_instance_uid_gets_a_failure_at_once(node: NodeProcess) -> None:
    response, took = store_with_command_uid(node.port, b"", wait=5)
    assert response is not None and response.Status == Status.CANNOT_UNDERSTAND
    assert took < 2


def test_control_characters_from_the_wire_are_escaped_in_the_log(node: NodeProcess) -> None:
    # At most 64 characters: pynetdicom aborts on a longer one before our handler.
    forged = b"1.2.3\nts=2026-01-01 level=info action=instance_stored\x00.4"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        response, _ = store_with_command_uid(node.port, forged)
    assert response is not None and response.Status == Status.CANNOT_UNDERSTAND
    # pynetdicom's own warning quotes the UID too; every record shows it escaped
    # (quoted values double the backslash, as logfmt quoting does).
    log = wait_for_log(node, "x0ats=2026-01-01")
    assert log.count("1.2.3\\\\x0ats=2026-01-01 level=info action=instance_stored\\\\x00.4") >= 2
    assert not [line for line in log.splitlines() if line.startswith("ts=2026-01-01")]
    assert "\x00" not in log

"""A crash between an instance's rename and its index commit is repaired at start."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from tests.factories import small_ct
from tests.nodeproc import NodeProcess, wait_for_echo

CRASHING_NODE = Path(__file__).resolve().parents[1] / "crashing_node.py"


def _send(port: int) -> None:
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(CTImageStorage)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMNODE")
    assert assoc.is_established
    status = assoc.send_c_store(small_ct())
    # The node died before answering: no status, the association is gone.
    assert status is None or not status
    if assoc.is_established:
        assoc.abort()


def _crash_once(node: NodeProcess) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMNODE_")}
    with node.log.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, str(CRASHING_NODE), "--config", str(node.config), "serve"],
            stdout=log, stderr=log, env=env, cwd=node.folder,
        )  # fmt: skip
    try:
        wait_for_echo(node.port)
        _send(node.port)
        assert proc.wait(30) == 137
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("command", ["serve", "run"])
def test_file_renamed_before_a_crash_is_indexed_at_the_next_start(
    tmp_path: Path, command: str
) -> None:
    node = NodeProcess(tmp_path, command=command, receive_processes=1)
    _crash_once(node)
    assert len(node.stored_files()) == 1
    assert node.instances() == []
    stray = node.data_dir / "instances" / "not-dicom.dcm"
    stray.write_bytes(b"garbage")
    with node:
        records = node.instances()
        files = node.stored_files()
        assert [r.path for r in records] == [f.relative_to(node.data_dir).as_posix() for f in files]
        assert len(records) == 1
        assert (node.data_dir / "quarantine" / "not-dicom.dcm").read_bytes() == b"garbage"
        assert "instances_reconciled" in node.log_text()

"""A database held locked by another process gets senders 0xA700 before they give up."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from dicomnode.receive.ingest import COMMIT_TIMEOUT_S
from dicomnode.receive.status import Status
from tests.factories import small_ct
from tests.nodeproc import NodeProcess

#: What most senders wait for a C-STORE response (pynetdicom's and DCMTK's default).
SENDER_DIMSE_TIMEOUT = 30


@pytest.mark.slow
def test_store_gets_out_of_resources_before_the_sender_times_out_when_the_index_is_locked(
    tmp_path: Path,
) -> None:
    with NodeProcess(tmp_path, receive_processes=1) as node:
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context(CTImageStorage)
        ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = SENDER_DIMSE_TIMEOUT
        assoc = ae.associate("127.0.0.1", node.port, ae_title="DICOMNODE")
        assert assoc.is_established
        assert assoc.send_c_store(small_ct()).Status == Status.SUCCESS  # index warmed up
        holder = sqlite3.connect(node.data_dir / "dicomnode.sqlite", timeout=5)
        try:
            holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
            started = time.monotonic()
            status = assoc.send_c_store(small_ct())
            took = time.monotonic() - started
        finally:
            holder.rollback()
            holder.close()
        assert status is not None and status.Status == Status.OUT_OF_RESOURCES
        assert COMMIT_TIMEOUT_S <= took < SENDER_DIMSE_TIMEOUT
        assert assoc.is_established
        assert assoc.send_c_store(small_ct()).Status == Status.SUCCESS  # lock gone: stored
        assoc.release()
    # The node said where the time went: its index writer was waiting on the database.
    slow = [line for line in node.log.read_text().splitlines() if "action=store_slow" in line]
    assert len(slow) == 1, slow
    assert "writer_step=index" in slow[0]
    assert "inspect_s=" in slow[0] and "fsync_s=" in slow[0]

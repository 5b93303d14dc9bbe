"""Every process of a node logs into the node's one file, whole records with their role.

``dicomnode run`` with two receiving processes and a worker: the serving process
writes ``data_dir/logs/dicomnode.log`` alone; the extra receiver, the worker and the
forked start-up check send their records to it (dicomnode/log.py). Instances are sent
over many associations at once, so both receiving processes log at the same moment.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.factories import encode, small_ct
from tests.logfmt import parse_line
from tests.nodeproc import NodeProcess, WorkerProcess
from tests.scu import send_file

#: One worker; no web server, whose thread plays no part here.
CHILDREN = "[worker]\ncount = 1\n[web]\nenabled = false\n"
ROUNDS = 6
CANARY = "CANARY^SECRET"
PER_ROUND = 8  # associations at once


class StyledNode(NodeProcess):
    """``dicomnode run``, with ``--log-json`` when the style asks for it."""

    def __init__(self, folder: Path, style: str, **node: Any) -> None:
        super().__init__(folder, **node)
        self.style = style

    def launch(self, log_level: str = "INFO") -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMNODE_")}
        json_flag = ["--log-json"] if self.style == "json" else []
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dicomnode", "--config", str(self.config),
                 "--log-level", log_level, *json_flag, self.command],
                stdout=log, stderr=log, env=env, cwd=self.folder,
            )  # fmt: skip
        return self.proc


def file_records(data_dir: Path, style: str) -> list[dict[str, Any]]:
    """Every record in the node's log file; AssertionError on a line that is not one."""
    path = data_dir / "logs" / "dicomnode.log"
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    assert text == "" or text.endswith("\n")
    return [parse_line(line, style) for line in text.splitlines()]


def wait_for_roles(data_dir: Path, style: str, wanted: set[tuple[str, str]]) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        seen = {(r["role"], r["action"]) for r in file_records(data_dir, style)}
        if wanted <= seen:
            return
        time.sleep(0.2)
    raise AssertionError(f"never in the log file: {wanted - seen}")


def stored_by_role(data_dir: Path, style: str) -> Counter[str]:
    records = file_records(data_dir, style)
    return Counter(r["role"] for r in records if r["action"] == "instance_stored")


@pytest.mark.parametrize("style", ["text", "json"])
def test_receivers_and_worker_log_whole_records_with_their_role_into_the_nodes_file(
    tmp_path: Path, style: str
) -> None:
    node = StyledNode(tmp_path / "n", style, receive_processes=2, extra_toml=CHILDREN)
    files = []
    for i in range(ROUNDS * PER_ROUND):
        path = tmp_path / f"{i}.dcm"
        path.write_bytes(encode(small_ct(patient_name=CANARY)))
        files.append(path)
    node.start(log_level="DEBUG")  # the libraries' debug chatter must stay out too
    try:
        wait_for_roles(
            node.data_dir, style,
            {("receiver-2", "scp_listening"), ("worker-1", "worker_started")},
        )  # fmt: skip
        sent = 0
        with ThreadPoolExecutor(PER_ROUND) as pool:
            # The kernel spreads connections over both processes (SO_REUSEPORT).
            for start in range(0, len(files), PER_ROUND):
                batch = files[start : start + PER_ROUND]
                assert list(pool.map(lambda p: send_file(node.port, p), batch)) == [0] * len(batch)
                sent += len(batch)
                if {"main", "receiver-2"} <= set(stored_by_role(node.data_dir, style)):
                    break
    finally:
        node.stop()
    assert CANARY.split("^")[0] not in (node.data_dir / "logs" / "dicomnode.log").read_text()
    records = file_records(node.data_dir, style)  # after the node stopped
    stored = [r for r in records if r["action"] == "instance_stored"]
    assert {r["role"] for r in stored} == {"main", "receiver-2"}
    # Each C-STORE once: none doubled, and none lost but those a child counted as
    # dropped (only when the node takes longer than 0.5 s to read; not expected here).
    uids = [r["sop_instance_uid"] for r in stored]
    assert len(set(uids)) == len(uids)
    dropped = sum(int(r["dropped"]) for r in records if r["action"] == "log_records_dropped")
    assert sent - dropped <= len(uids) <= sent
    roles = {r["role"] for r in records}
    assert {"main", "startup", "receiver-2", "worker-1"} <= roles <= {
        "main", "startup", "receiver-2", "worker-1", "web",
    }  # fmt: skip
    assert ("main", "node_stopped") == (records[-1]["role"], records[-1]["action"])
    # The node's stderr has the children's records as well (they inherit it).
    on_stderr = {
        parse_line(line, style)["role"]
        for line in node.log_text().splitlines()
        if line.startswith(("ts=", "{"))
    }
    assert {"receiver-2", "worker-1"} <= on_stderr


def test_a_worker_started_on_its_own_writes_its_own_file_as_before(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "n")  # its settings only; no node runs
    worker = WorkerProcess(node.config, tmp_path / "worker.log")
    try:
        wait_for_roles(node.data_dir, "text", {("worker", "worker_started")})
    finally:
        assert worker.stop() == 0
    assert "role=worker " in worker.log_text()  # and on stderr

"""No process outlives its node: SIGKILL the node at any moment, its children go too.

A node (``dicomnode run``) starts extra receiving processes, which share its DICOM port,
and workers. Killed by SIGKILL while a child is still starting, the node must leave no
child behind: none alive and the port free within two seconds.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dicomnode.worker.supervisor import EXIT_NODE_GONE, LIFELINE_ENV, WORKER_NICENESS
from tests.nodeproc import NodeProcess, alive, children, port_is_free, processes_running

#: Everything a node's children must have done by this long after the node's death.
GONE_WITHIN_S = 2.0
KILLS = 12
CHILDREN = "[worker]\ncount = 1\n"  # and receive_processes = 2: one extra receiver


def wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def supervised(node: NodeProcess) -> list[int]:
    """The node's children (receivers, workers) that still run, wherever they are now."""
    return [
        pid
        for pid in processes_running(str(node.config))
        if b"--supervised" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]


def kill_and_time_until_gone(node: NodeProcess) -> float:
    """SIGKILL the node; seconds until nothing of it runs and its port is free."""
    assert node.proc is not None
    node.proc.kill()
    killed = time.monotonic()
    node.proc.wait()
    while time.monotonic() - killed < 10:
        if not processes_running(str(node.config)) and port_is_free(node.port):
            return time.monotonic() - killed
        time.sleep(0.01)
    return float("inf")


def role_of(pid: int) -> str:
    """``receive`` or ``worker``: the command a supervised child runs."""
    words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    return words[words.index(b"--supervised") - 1].decode()


def nice_value(pid: int, thread: int | None = None) -> int:
    """The nice value in /proc/PID/stat (or of one of its threads)."""
    path = f"/proc/{pid}/task/{thread}/stat" if thread else f"/proc/{pid}/stat"
    return int(Path(path).read_text().rsplit(")", 1)[1].split()[16])


@pytest.mark.slow
def test_no_child_outlives_a_node_killed_at_any_moment_of_its_start_up(tmp_path: Path) -> None:
    seed = int(os.environ.get("LIFETIME_SEED", time.time_ns() % 10**6))
    rng = random.Random(seed)
    node = NodeProcess(tmp_path / "n", receive_processes=2, extra_toml=CHILDREN)
    node.start()  # once fully, so that the database exists and later starts are quick
    node.stop()
    timings = []
    for kill in range(KILLS):
        node.launch()
        wait_for(lambda: supervised(node), 60, "the node to start a child")
        time.sleep(rng.uniform(0.0, 1.5))
        running = len(supervised(node))
        took = kill_and_time_until_gone(node)
        timings.append((round(took, 3), running))
        assert took <= GONE_WITHIN_S, (
            f"kill {kill} (seed {seed}): children or port still there after "
            f"{took:.2f} s; timings so far {timings}\n{node.log_text()[-3000:]}"
        )
    print(f"seed {seed}: seconds until gone, children running at the kill: {timings}")


def test_children_of_a_killed_running_node_are_gone_and_the_port_free_at_once(
    tmp_path: Path,
) -> None:
    node = NodeProcess(tmp_path / "n", receive_processes=2, extra_toml=CHILDREN).start()
    wait_for(lambda: "action=worker_started" in node.log_text(), 60, "the worker")
    assert len(supervised(node)) == 2
    took = kill_and_time_until_gone(node)
    assert took <= GONE_WITHIN_S, node.log_text()[-3000:]
    print(f"children gone and port free {took:.3f} s after the kill")


def test_supervised_workers_run_nicer_than_the_node_and_its_receivers(tmp_path: Path) -> None:
    with NodeProcess(tmp_path / "n", receive_processes=2, extra_toml=CHILDREN) as node:
        wait_for(lambda: "action=worker_started" in node.log_text(), 60, "the worker")
        assert node.proc is not None
        roles = {role_of(pid): pid for pid in children(node.proc.pid)}
        node_nice = nice_value(node.proc.pid)
        assert nice_value(roles["receive"]) == node_nice
        # Every thread of the worker (torch's among them), not only its first.
        worker_threads = [int(t.name) for t in Path(f"/proc/{roles['worker']}/task").iterdir()]
        assert len(worker_threads) > 1
        expected = min(19, node_nice + WORKER_NICENESS)
        assert {nice_value(roles["worker"], t) for t in worker_threads} == {expected}


def _start_child(tmp_path: Path, lifeline: str, fd: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMNODE_")}
    node = NodeProcess(tmp_path / "n", receive_processes=2)
    return subprocess.Popen(
        [sys.executable, "-m", "dicomnode", "--config", str(node.config), "receive",
         "--supervised"],
        env={**env, LIFELINE_ENV: lifeline}, pass_fds=(fd,), stderr=subprocess.PIPE,
    )  # fmt: skip


def test_supervised_child_exits_at_once_when_its_node_died_before_it_started(
    tmp_path: Path,
) -> None:
    read_end, write_end = os.pipe()
    os.close(write_end)  # the node (here: this test) is gone
    try:
        child = _start_child(tmp_path, f"{os.getpid()}:{read_end}:", read_end)
        _, stderr = child.communicate(timeout=30)
    finally:
        os.close(read_end)
    assert child.returncode == EXIT_NODE_GONE
    assert b"the node is gone" in stderr


def test_supervised_child_exits_at_once_when_it_has_another_parent_than_its_node(
    tmp_path: Path,
) -> None:
    read_end, write_end = os.pipe()
    try:
        # The pipe is open, but the child's parent is not the node it was told of, as
        # when the node died and another process took its children over.
        child = _start_child(tmp_path, f"{os.getppid()}:{read_end}:", read_end)
        child.communicate(timeout=30)
    finally:
        os.close(read_end)
        os.close(write_end)
    assert child.returncode == EXIT_NODE_GONE
    assert not alive(child.pid)

"""Start the node the way a user does (``python -m dicomnode run``) for tests."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pynetdicom import AE
from pynetdicom.sop_class import Verification
from sqlalchemy import select
from sqlalchemy.orm import Session

from dicomnode.index.db import make_engine, make_session_factory
from dicomnode.index.schema import InstanceRecord

__all__ = [
    "NodeProcess",
    "WorkerProcess",
    "alive",
    "children",
    "free_port",
    "port_is_free",
    "processes_running",
    "run_dicomnode",
    "wait_for_echo",
    "wait_for_port",
]


def children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def processes_running(cmdline_contains: str) -> list[int]:
    """Running processes (not zombies, not this one) whose command line has the text."""
    needle = cmdline_contains.encode()
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        pid = int(cmdline.parent.name)
        try:
            if pid != os.getpid() and needle in cmdline.read_bytes() and alive(pid):
                found.append(pid)
        except OSError:  # gone while we looked
            continue
    return found


def run_dicomnode(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m dicomnode ARGS`` as a user would, without our DICOMNODE_ overrides."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DICOMNODE_")}
    return subprocess.run(
        [sys.executable, "-m", "dicomnode", *args],
        capture_output=True, text=True, cwd=cwd, env=clean | (env or {}), timeout=120, check=False,
    )  # fmt: skip


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    """Whether nothing listens on ``port`` (on any address) any more."""
    with socket.socket() as sock:
        # SO_REUSEADDR passes over closed connections in TIME_WAIT, never over a
        # listening socket; without SO_REUSEPORT ours cannot share the node's port.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
            sock.listen()
        except OSError:
            return False
    return True


def wait_for_echo(
    port: int,
    ae_title: str = "DICOMNODE",
    timeout: float = 30,
    calling_ae: str = "TESTPROBE",
    tls: ssl.SSLContext | None = None,
) -> None:
    """Block until an SCP on ``port`` answers C-ECHO with success (over TLS if given)."""
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(Verification)
    ae.acse_timeout = 2
    ae.network_timeout = 2
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # Probe with a plain socket first: pynetdicom leaks one on a refused connect.
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            time.sleep(0.1)
            continue
        tls_args = (tls, "localhost") if tls is not None else None
        assoc = ae.associate("127.0.0.1", port, ae_title=ae_title, tls_args=tls_args)
        if assoc.is_established:
            status = assoc.send_c_echo()
            assoc.release()
            if status and status.Status == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"no C-ECHO answer on port {port} within {timeout} s")


def wait_for_port(port: int, timeout: float = 30) -> None:
    """Block until something accepts TCP connections on 127.0.0.1:``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} within {timeout} s")


def _toml(value: Any) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)


class NodeProcess:
    """A ``dicomnode run`` subprocess with its own settings file and data folder."""

    def __init__(
        self,
        folder: Path,
        data_dir: Path | None = None,
        command: str = "run",
        extra_toml: str = "",
        probe_tls: ssl.SSLContext | None = None,
        env: dict[str, str] | None = None,
        **node: Any,
    ) -> None:
        self.folder = folder
        #: Environment variables the node starts with (``DICOMNODE_*`` of the test
        #: process are dropped, these added).
        self.env = dict(env or {})
        self.command = command
        self.probe_tls = probe_tls  # how start() reaches a node that speaks TLS
        folder.mkdir(parents=True, exist_ok=True)
        self.data_dir = data_dir or folder / "var"
        self.port = int(node.pop("port", 0)) or free_port()
        self.ae_title = str(node.get("ae_title", "DICOMNODE"))
        allowed = list(node.get("allowed_calling_aets", []))
        self.probe_ae = allowed[0] if allowed else "TESTPROBE"
        values = {"port": self.port, "data_dir": str(self.data_dir), **node}
        self.database_url = str(
            node.get("database_url") or f"sqlite:///{self.data_dir / 'dicomnode.sqlite'}"
        )
        lines = ["[node]"] + [f"{k} = {_toml(v)}" for k, v in values.items()]
        #: The web server's port; None when ``extra_toml`` has its own ``[web]``.
        self.web_port: int | None = None
        if "[web]" not in extra_toml:
            # Its own free port, as [node] port: nodes of parallel tests never collide
            # on the default 8080.
            self.web_port = free_port()
            extra_toml = f"{extra_toml}\n[web]\nport = {self.web_port}\n"
        self.config = folder / "settings.toml"
        self.config.write_text("\n".join(lines) + "\n" + extra_toml, encoding="utf-8")
        self.log = folder / "node.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def launch(self, log_level: str = "INFO") -> subprocess.Popen[bytes]:
        """Start the node as a user does, without waiting for it."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMNODE_")}
        env.update(self.env)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dicomnode", "--config", str(self.config),
                 "--log-level", log_level, self.command],
                stdout=log, stderr=log, env=env, cwd=self.folder,
            )  # fmt: skip
        return self.proc

    def start(self, log_level: str = "INFO") -> NodeProcess:
        """Start the node and wait until it answers C-ECHO."""
        self.launch(log_level)
        try:
            wait_for_echo(self.port, self.ae_title, calling_ae=self.probe_ae, tls=self.probe_tls)
            if self.web_port is not None:  # bound just after the SCP: a moment later
                wait_for_port(self.web_port)
        except TimeoutError:
            self.kill()
            raise RuntimeError(f"node did not start:\n{self.log.read_text()}") from None
        return self

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            # What it was doing when it did not stop (CI once saw only the timeout).
            tail = "\n".join(self.log_text().splitlines()[-40:])
            raise AssertionError(
                f"node did not stop within {timeout} s; its log:\n{tail}"
            ) from None

    def kill(self) -> None:
        """SIGKILL, as a crash would; then wait for its children to notice and exit."""
        if self.proc is not None and self.proc.poll() is None:
            kids = children(self.proc.pid)
            self.proc.kill()
            self.proc.wait()
            deadline = time.monotonic() + 30
            while any(alive(pid) for pid in kids) and time.monotonic() < deadline:
                time.sleep(0.05)

    def __enter__(self) -> NodeProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.stop()

    def serving_pids(self) -> list[int]:
        """The node's own process and its extra receiving processes (from /proc)."""
        assert self.proc is not None
        return [self.proc.pid] + [
            pid
            for pid in children(self.proc.pid)
            if " receive " in Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
        ]

    def log_text(self) -> str:
        """Everything the node logged so far."""
        return self.log.read_text(encoding="utf-8", errors="replace")

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session on the node's index (read it as another process would)."""
        engine = make_engine(self.database_url)
        try:
            with make_session_factory(engine)() as session:
                yield session
        finally:
            engine.dispose()

    def instances(self) -> list[InstanceRecord]:
        """Every instance row in the index."""
        with self.session() as session:
            return list(session.scalars(select(InstanceRecord)))

    def stored_files(self) -> list[Path]:
        """Every file under ``data_dir/instances``."""
        return sorted(p for p in (self.data_dir / "instances").rglob("*") if p.is_file())


class WorkerProcess:
    """A ``dicomnode worker`` subprocess using a node's settings file."""

    def __init__(self, config: Path, log: Path) -> None:
        self.log = log
        env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMNODE_")}
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dicomnode", "--config", str(config), "worker"],
                stdout=out, stderr=out, env=env, cwd=config.parent,
            )  # fmt: skip

    @property
    def pid(self) -> int:
        """The worker's process id."""
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM and wait."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def log_text(self) -> str:
        """What the worker logged."""
        return self.log.read_text(encoding="utf-8", errors="replace")

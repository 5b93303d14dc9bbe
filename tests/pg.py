"""A throwaway PostgreSQL server for tests: initdb in a temp folder, 127.0.0.1 only.

Each ``PostgresServer`` owns a fresh cluster in its own temporary folder on a free
port, so pytest-xdist workers never share one. PostgreSQL refuses to run as root;
under root the server binaries run as the ``postgres`` system user instead.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import psycopg
from psycopg import sql

__all__ = ["PostgresServer", "postgres_available", "postgres_bindir"]

#: The system user the server runs as when the tests run as root.
SERVER_USER = "postgres"
_BINARIES = ("initdb", "pg_ctl", "postgres")
_START_ATTEMPTS = 5


def _version_key(path: Path) -> tuple[int, ...]:
    # /usr/lib/postgresql/<version>/bin: newest major first.
    return tuple(int(part) for part in re.findall(r"\d+", path.parent.name))


def postgres_bindir() -> Path | None:
    """The folder with initdb, pg_ctl and postgres: Debian's newest, else PATH."""
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
    for bindir in candidates:
        if all((bindir / name).is_file() for name in _BINARIES):
            return bindir
    on_path = shutil.which("pg_ctl")
    if on_path is not None:
        # Resolve links (/usr/local/bin/pg_ctl -> /usr/lib/postgresql/15/bin/pg_ctl) so
        # initdb and postgres come from the same build as pg_ctl.
        bindir = Path(on_path).resolve().parent
        if all((bindir / name).is_file() for name in _BINARIES):
            return bindir
    return None


def _running_as_root() -> bool:
    return os.geteuid() == 0


def postgres_available() -> str | None:
    """None when a test server can be started here, else the reason it cannot."""
    if postgres_bindir() is None:
        return (
            "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found in "
            "/usr/lib/postgresql/*/bin or on PATH (Debian package: postgresql)"
        )
    if _running_as_root():
        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError:
            return f"running as root and there is no {SERVER_USER!r} user to run PostgreSQL as"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    """A private PostgreSQL cluster on 127.0.0.1 with trust auth, for one test session.

    Use as a context manager, or call ``start()`` and ``stop()``. Databases made with
    ``create_database`` live until the server stops; ``stop()`` deletes everything.
    """

    def __init__(self, bindir: Path | None = None) -> None:
        self.bindir = bindir or postgres_bindir()
        self.port: int | None = None
        self.startup_seconds: float | None = None
        self._root: Path | None = None

    # -- paths -----------------------------------------------------------------

    @property
    def root(self) -> Path:
        """The temporary folder holding the cluster, its socket and its log."""
        if self._root is None:
            raise RuntimeError("PostgreSQL server is not started")
        return self._root

    @property
    def data_dir(self) -> Path:
        """The cluster's data directory (PGDATA)."""
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        """The server log, kept until ``stop()`` for failure reports."""
        return self.root / "server.log"

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> PostgresServer:
        """Create a cluster in a fresh temp folder and start it on a free port."""
        if self._root is not None:
            raise RuntimeError("PostgreSQL server already started")
        if self.bindir is None:
            raise RuntimeError(postgres_available() or "PostgreSQL binaries not found")
        began = time.monotonic()
        # The Unix socket lives here and socket paths max out near 107 bytes.
        parent = None if len(tempfile.gettempdir()) <= 64 else "/tmp"
        self._root = Path(tempfile.mkdtemp(prefix="dicomnode-pg-", dir=parent))
        try:
            if _running_as_root():
                entry = pwd.getpwnam(SERVER_USER)
                os.chown(self._root, entry.pw_uid, entry.pw_gid)
            self._run(
                "initdb",
                "-D",
                str(self.data_dir),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            )
            self._start_on_free_port()
        except BaseException:
            self._remove_root()
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    def _start_on_free_port(self) -> None:
        # Another process (e.g. a sibling xdist worker) can take the port between
        # picking and binding it; the postmaster then fails to start, so try again.
        failure = ""
        for _ in range(_START_ATTEMPTS):
            port = _free_port()
            options = f"-h 127.0.0.1 -p {port} -k {self.root} -F"
            result = self._run(
                "pg_ctl",
                "start",
                "-w",
                "-t",
                "60",
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_file),
                "-o",
                options,
                check=False,
            )
            if result.returncode == 0:
                self.port = port
                return
            failure = f"{result.stdout}{result.stderr}\n--- server log ---\n{self._log_tail()}"
        raise RuntimeError(f"PostgreSQL did not start after {_START_ATTEMPTS} attempts:\n{failure}")

    def stop(self) -> None:
        """Stop the server (fast shutdown) and delete its temp folder; safe to repeat."""
        if self._root is None:
            return
        try:
            if self.port is not None and (self.data_dir / "postmaster.pid").exists():
                result = self._run(
                    "pg_ctl", "stop", "-w", "-m", "fast", "-D", str(self.data_dir), check=False
                )
                if result.returncode != 0:
                    self._run("pg_ctl", "stop", "-w", "-m", "immediate", "-D", str(self.data_dir))
        finally:
            self.port = None
            self._remove_root()

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- databases -------------------------------------------------------------

    def url(self, dbname: str = "postgres") -> str:
        """The SQLAlchemy URL of ``dbname`` on this server."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self._port()}/{dbname}"

    def create_database(self, name: str) -> str:
        """Create an empty database ``name``; its SQLAlchemy URL."""
        conninfo = f"host=127.0.0.1 port={self._port()} user=postgres dbname=postgres"
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    # -- helpers ---------------------------------------------------------------

    def _port(self) -> int:
        if self.port is None:
            raise RuntimeError("PostgreSQL server is not running")
        return self.port

    def _run(
        self, program: str, *args: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        assert self.bindir is not None
        kwargs: dict[str, Any] = {}
        if _running_as_root():
            # What ``runuser -u postgres`` does, without PAM: drop to the user's ids.
            kwargs = {"user": SERVER_USER, "group": SERVER_USER, "extra_groups": []}
        env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        env.update(LC_ALL="C", LANG="C")
        result = subprocess.run(
            [str(self.bindir / program), *args],
            cwd=self.root,  # the server user may not be able to enter the caller's cwd
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            **kwargs,
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"{program} failed with exit status {result.returncode}:\n"
                f"{result.stdout}{result.stderr}"
            )
        return result

    def _log_tail(self, limit: int = 4000) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-limit:]
        except OSError:
            return "(no server log)"

    def _remove_root(self) -> None:
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None

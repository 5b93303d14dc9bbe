"""Watch an engine's write transactions, and the files a thread opens while in one.

A write transaction starts at its first INSERT, UPDATE or DELETE (where SQLite takes
its one write lock; PostgreSQL its row locks) and ends once its commit or rollback has
returned: SQLAlchemy's ``commit`` event fires before the DBAPI commit (the fsync), so
the clock stops when the connection goes back to the pool, as a session's does right
after committing, or at the thread's next statement. The
watch times each one, and, through a Python audit hook (``open`` events, PEP 578),
records every file under a folder that the same thread opens meanwhile: what would
stall every other writer on SQLite. Nothing is mocked: the engine runs as it does in
the node, with SQLAlchemy event listeners added for the watch's duration.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from sqlalchemy import Engine, event

__all__ = ["WriteTransaction", "WriteWatch"]

_WRITES = ("INSERT", "UPDATE", "DELETE")
_ACTIVE: list[WriteWatch] = []
_hook_installed = False


def _audit(name: str, args: tuple[Any, ...]) -> None:
    # Runs on every audited event of the process: return at once when unwatched.
    if name != "open" or not _ACTIVE or not args or isinstance(args[0], int):
        return
    for watch in tuple(_ACTIVE):
        watch.opened(args[0])


def _install_hook() -> None:
    # Audit hooks cannot be removed (PEP 578): install one, once, for the process.
    global _hook_installed
    if not _hook_installed:
        sys.addaudithook(_audit)
        _hook_installed = True


@dataclass
class WriteTransaction:
    """One write transaction the watch saw."""

    seconds: float
    #: The first write statement, shortened (what took the lock).
    first_write: str
    #: Files under the watched folder opened by its thread while it was open.
    files_read: list[str] = field(default_factory=list)


@dataclass
class _Open:
    started: float
    first_write: str
    files_read: list[str] = field(default_factory=list)
    #: Commit or rollback has begun; the transaction is over once it returns.
    ending: bool = False


class WriteWatch:
    """Times ``engine``'s write transactions and catches file reads inside them.

    Parameters
    ----------
    engine
        The engine to watch (other engines, e.g. the ingest writer's, are not).
    folder
        Files opened under this folder count as reads.
    """

    def __init__(self, engine: Engine, folder: Path) -> None:
        self.engine = engine
        self.folder = os.fspath(folder.resolve())
        self.transactions: list[WriteTransaction] = []
        #: Files under ``folder`` opened with no write transaction open in that thread.
        self.files_read_outside: list[str] = []
        self._open: dict[int, _Open] = {}
        self._lock = threading.Lock()

    # -- SQLAlchemy events ---------------------------------------------------------

    def _before_execute(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self._finish()  # a commit of this thread's previous transaction has returned
        if not statement.lstrip().upper().startswith(_WRITES):
            return
        with self._lock:
            self._open.setdefault(
                threading.get_ident(), _Open(time.perf_counter(), " ".join(statement.split())[:60])
            )

    def _ending(self, conn: Any) -> None:
        with self._lock:
            current = self._open.get(threading.get_ident())
            if current is not None:
                current.ending = True

    def _finish(self, *args: Any) -> None:
        ended = time.perf_counter()
        with self._lock:
            current = self._open.get(threading.get_ident())
            if current is None or not current.ending:
                return
            del self._open[threading.get_ident()]
            self.transactions.append(
                WriteTransaction(ended - current.started, current.first_write, current.files_read)
            )

    # -- audit hook ------------------------------------------------------------------

    def opened(self, path: object) -> None:
        """Called by the audit hook for every file opened in the process."""
        if not isinstance(path, str | bytes | os.PathLike):
            return
        text = os.fsdecode(path)
        if not os.path.abspath(text).startswith(self.folder):
            return
        with self._lock:
            current = self._open.get(threading.get_ident())
            if current is None:
                self.files_read_outside.append(text)
            else:
                current.files_read.append(text)

    # -- results -----------------------------------------------------------------------

    @property
    def reads_inside_writes(self) -> list[tuple[str, str]]:
        """(first write statement, file) for each file read inside a write transaction."""
        return [(t.first_write, f) for t in self.transactions for f in t.files_read]

    def longest(self) -> WriteTransaction | None:
        """The longest write transaction seen, if any."""
        return max(self.transactions, key=lambda t: t.seconds, default=None)

    def __enter__(self) -> WriteWatch:
        _install_hook()
        event.listen(self.engine, "before_cursor_execute", self._before_execute)
        event.listen(self.engine, "commit", self._ending)
        event.listen(self.engine, "rollback", self._ending)
        event.listen(self.engine, "checkin", self._finish)
        _ACTIVE.append(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        _ACTIVE.remove(self)
        event.remove(self.engine, "before_cursor_execute", self._before_execute)
        event.remove(self.engine, "commit", self._ending)
        event.remove(self.engine, "rollback", self._ending)
        event.remove(self.engine, "checkin", self._finish)

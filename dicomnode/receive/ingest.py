"""Make a received instance durable: validate, fsync, rename, index, then answer.

Success (0x0000) means durable (docs/receive.md): the spooled file is fsynced, renamed to
its final path (same filesystem, so atomic), the directory fsynced and the index
row committed before the handler returns. Association threads do the per-file work
(validation, fsync) in parallel; one writer thread does the renames, directory
fsyncs and database commits for everything queued at that moment in a single
transaction (group commit). With several associations sending at once this turns
N commits into one without weakening what a success means.

Duplicates (same SOP Instance UID): same bytes -> success, no second copy. Different
bytes -> the newer copy replaces the stored one (last writer wins, as a modality
re-sending a corrected image expects) and the older bytes are kept under
``data_dir/superseded/<study>/`` so nothing is lost; both cases are logged. Where
each file goes is :class:`~dicomnode.index.layout.DataLayout`'s to say.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import logging
import os
import queue
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from dicomnode.errors import DatasetMismatchError, InvalidDatasetError, StorageError
from dicomnode.index.durable import fsync_dir, make_dirs
from dicomnode.index.instances import IdCache, find_instances, record_instances
from dicomnode.index.layout import DataLayout
from dicomnode.index.schema import utc_now
from dicomnode.receive.inspect import (
    MAX_ELEMENTS,
    MAX_INFLATED_BYTES,
    InstanceInfo,
    inspect_instance,
    is_valid_uid,
)
from dicomnode.receive.spool import SpoolFile

__all__ = ["Ingest", "Outcome", "instance_relpath"]

logger = logging.getLogger(__name__)

_MAX_BATCH = 128
_INFO_FIELDS = tuple(f.name for f in fields(InstanceInfo))
#: How long a handler waits for its index commit before answering 0xA700: below the
#: 30 s most senders wait for a response (pynetdicom's and DCMTK's DIMSE timeouts),
#: so a stuck database gets the sender a status it retries, never silence and an
#: abort (issue 10: an association once went 30 s without a response this way).
COMMIT_TIMEOUT_S = 20.0
#: The default of ``node.max_instance_bytes``: a native Pixel Data element holds at
#: most 4 GiB (its 32-bit length), so no uncompressed instance needs more.
MAX_INSTANCE_BYTES = 4 * 2**30
#: A store whose handler takes longer than this logs where the time went
#: (``store_slow``): the record that tells a full disk queue from a held database
#: lock from a starved process when a sender sees a slow response.
SLOW_STORE_S = 1.0


class Outcome(enum.StrEnum):
    """What storing an instance did."""

    STORED = "stored"
    DUPLICATE = "duplicate"
    REPLACED = "replaced"


def instance_relpath(info: InstanceInfo) -> Path:
    """Where an instance lives under ``data_dir``; built only from validated UIDs."""
    for uid in (info.study_instance_uid, info.series_instance_uid, info.sop_instance_uid):
        if not is_valid_uid(uid):  # defence in depth: inspect_instance checked already
            raise InvalidDatasetError("invalid UID in path", info.sop_instance_uid)
    return DataLayout.instance_relpath(
        info.study_instance_uid, info.series_instance_uid, info.sop_instance_uid
    )


def _dead_process_folder(folder: Path) -> bool:
    """Whether ``folder`` is a spool folder whose process no longer runs."""
    if not folder.name.isdigit():
        return True
    try:
        os.kill(int(folder.name), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _writers_lock_path(engine: Engine) -> Path | None:
    """The lock file receiving processes share for an SQLite file; None otherwise."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        return None
    return Path(f"{database}.writers")


@dataclass
class _Request:
    spool: SpoolFile
    info: InstanceInfo
    calling_ae: str
    association_id: int | None
    future: Future[Outcome] = field(default_factory=Future)
    #: Seconds spent in each step, for the ``store_slow`` record; the writer
    #: thread adds its steps before it resolves ``future``.
    steps: dict[str, float] = field(default_factory=dict)
    queued_at: float = 0.0


def _add_steps(batch: list[_Request], **steps: float) -> None:
    """Record the writer's step timings of one batch in each of its requests."""
    for request in batch:
        request.steps.update(steps)


@dataclass
class _Undo:
    """Renames to reverse when a batch fails: each (from, to) goes back to ``from``."""

    moved: list[tuple[Path, Path]] = field(default_factory=list)

    def run(self) -> None:
        for source, target in reversed(self.moved):
            os.replace(target, source)


class Ingest:
    """Stores received instances durably; one instance per data folder and database.

    Parameters
    ----------
    data_dir
        The node's data folder (instances, spool, superseded copies).
    engine
        The index database. The writer thread keeps one connection open (a checkout
        per batch cost more than the batch's statements) and opens a new one after a
        database error.
    max_instance_bytes
        The largest stored file (File Meta and dataset) accepted; a larger one is
        refused with 0xA700 (``node.max_instance_bytes``).
    max_inflated_bytes, max_elements
        Limits on what a dataset may make the check do (``node.max_inflated_bytes``,
        ``node.max_elements``); over either is refused with 0xC000.
    """

    def __init__(
        self,
        data_dir: Path,
        engine: Engine,
        *,
        max_instance_bytes: int = MAX_INSTANCE_BYTES,
        max_inflated_bytes: int = MAX_INFLATED_BYTES,
        max_elements: int = MAX_ELEMENTS,
    ) -> None:
        self.data_dir = data_dir
        self.layout = DataLayout(data_dir)
        self.max_instance_bytes = max_instance_bytes
        self.max_inflated_bytes = max_inflated_bytes
        self.max_elements = max_elements
        # One spool folder per receiving process: a process cleaning its leftovers at
        # start must not delete what another one is receiving.
        self.spool_root = self.layout.spool
        self.spool_dir = self.layout.spool_dir(os.getpid())
        self.engine = engine
        self._conn: Connection | None = None
        self._writers_lock = _writers_lock_path(engine)
        self._writers_fd = -1
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._ids = IdCache()
        self._thread = threading.Thread(target=self._run, name="index-writer", daemon=True)
        self._local = threading.local()  # each association thread's step timings
        #: What the writer thread is doing now (read unlocked, for ``store_slow``).
        self._writer_step = "idle"

    def start(self) -> None:
        """Clean leftovers of a previous run and start the writer thread."""
        self.layout.instances.mkdir(parents=True, exist_ok=True)
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        for folder in self.spool_root.iterdir():
            if folder == self.spool_dir or not _dead_process_folder(folder):
                continue
            # Spooled files never got a success response: the sender will resend.
            shutil.rmtree(folder, ignore_errors=True)
        self._thread.start()

    def stop(self) -> None:
        """Finish what is queued and stop the writer thread."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._writers_fd >= 0:
            os.close(self._writers_fd)
            self._writers_fd = -1
        try:
            self.spool_dir.rmdir()  # empty once every association has ended
        except OSError:
            pass  # files left by an aborted association: removed at the next start

    # -- association threads ------------------------------------------------------

    def store(
        self,
        spool: SpoolFile,
        command_sop_class_uid: str,
        command_sop_instance_uid: str,
        calling_ae: str,
        association_id: int | None,
    ) -> Outcome:
        """Validate a spooled instance and make it durable; raises a ReceiveError."""
        started = time.monotonic()
        try:
            return self._store(spool, command_sop_class_uid, command_sop_instance_uid,
                               calling_ae, association_id, started)  # fmt: skip
        finally:
            # Failures too: a slow refusal is as much a sender's problem as a slow success.
            if time.monotonic() - started > SLOW_STORE_S:
                self._log_slow(command_sop_instance_uid, calling_ae, started)

    def _store(self, spool: SpoolFile, sop_class_uid: str, sop_instance_uid: str,
               calling_ae: str, association_id: int | None, started: float) -> Outcome:  # fmt: skip
        # A fresh dict each time: after a commit timeout the writer may still add the
        # old request's steps to the dict it holds.
        steps: dict[str, float] = {}
        self._local.steps = steps
        try:
            if spool.error is not None:
                raise StorageError(f"cannot write the instance: {spool.error.strerror}")
            if not is_valid_uid(sop_instance_uid):
                raise InvalidDatasetError("Affected SOP Instance UID is not a valid UID")
            if spool.too_large or spool.size > self.max_instance_bytes:
                # PS3.4 B.2.3 "Refused: Out of Resources": the data may be fine, but
                # this node does not keep instances this large (an operator can raise
                # the limit, and then a resend succeeds).
                raise StorageError("instance larger than node.max_instance_bytes", sop_instance_uid)
            spool.start_writeback()  # the disk works while we check the dataset
            info = inspect_instance(
                Path(spool.name), self.spool_dir, self.max_inflated_bytes, self.max_elements
            )
            steps["inspect"] = time.monotonic() - started
            if info.sop_instance_uid != sop_instance_uid:
                raise DatasetMismatchError(
                    "SOP Instance UID differs from the C-STORE command", info.sop_instance_uid
                )
            if info.sop_class_uid != sop_class_uid:
                raise DatasetMismatchError(
                    "SOP Class UID differs from the C-STORE command", info.sop_instance_uid
                )
            synced = time.monotonic()
            try:
                spool.sync_and_close()
            except OSError as exc:
                raise StorageError(f"cannot write the instance: {exc.strerror}") from exc
            steps["fsync"] = time.monotonic() - synced
        except BaseException:
            spool.discard()
            raise
        request = _Request(spool, info, calling_ae, association_id, steps=steps)
        request.queued_at = time.monotonic()
        self._queue.put(request)
        try:
            return request.future.result(timeout=COMMIT_TIMEOUT_S)
        except TimeoutError as exc:
            # The database is stuck (locked, unreachable): answer 0xA700 while the
            # sender still listens. Should the commit land later, a resend is a
            # duplicate and succeeds.
            raise StorageError("index commit timed out", info.sop_instance_uid) from exc

    def _log_slow(self, sop_instance_uid: str, calling_ae: str, started: float) -> None:
        # Steps the writer thread times are read after it resolved the future, or
        # (on a commit timeout) while it may still add to them: copy first.
        steps = dict(getattr(self._local, "steps", {}))
        logger.warning(
            "slow store",
            extra={
                "action": "store_slow",
                "sop_instance_uid": sop_instance_uid,
                "calling_ae": calling_ae,
                "seconds": round(time.monotonic() - started, 3),
                "writer_step": self._writer_step,
                **{f"{name}_s": round(value, 3) for name, value in steps.items()},
            },
        )

    # -- writer thread --------------------------------------------------------------

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < _MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            self._commit_batch(batch)
            if stop:
                return

    def _commit_batch(self, batch: list[_Request]) -> None:
        try:
            outcomes = self._commit(batch)
        except Exception as exc:
            if len(batch) > 1:
                # One bad request must not fail its neighbours: retry one by one.
                for request in batch:
                    self._commit_batch([request])
                return
            self._fail(batch[0], exc)
            return
        for request, outcome in zip(batch, outcomes, strict=True):
            self._log(request, outcome)
            request.future.set_result(outcome)

    def _fail(self, request: _Request, exc: Exception) -> None:
        request.spool.discard()
        kind = "database" if isinstance(exc, SQLAlchemyError) else "storage"
        logger.error(
            "instance not stored",
            extra={
                "action": "instance_store_failed",
                "sop_instance_uid": request.info.sop_instance_uid,
                "calling_ae": request.calling_ae,
                "reason": f"{kind}: {type(exc).__name__}",
            },
        )
        text = getattr(exc, "strerror", None) or type(exc).__name__
        request.future.set_exception(
            StorageError(f"{kind} failure: {text}", request.info.sop_instance_uid)
        )

    def _connection(self) -> Connection:
        if self._conn is None:
            self._conn = self.engine.connect()
        return self._conn

    @contextlib.contextmanager
    def _sqlite_writers_turn(self) -> Iterator[None]:
        """Hold the receiving processes' shared lock file while writing to SQLite.

        Two receiving processes writing one SQLite file collide on its write lock, and
        the loser polls with sleeps of 1, 2, 5, 10 ms... (SQLite's busy handler) while
        the holder needs about a millisecond. Waiting on a lock file instead queues
        them: the kernel wakes the next writer the moment the lock is released.
        """
        if self._writers_lock is None:
            yield
            return
        if self._writers_fd < 0:
            self._writers_fd = os.open(self._writers_lock, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._writers_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._writers_fd, fcntl.LOCK_UN)

    def _commit(self, batch: list[_Request]) -> list[Outcome]:
        begun = time.monotonic()
        self._writer_step = "place"
        for request in batch:
            request.steps["queued"] = begun - request.queued_at
        undo = _Undo()
        dirs: set[Path] = set()
        rows: list[dict[str, Any]] = []
        replaced: set[str] = set()
        outcomes: list[Outcome] = []
        now = utc_now()
        conn = self._connection()
        try:
            with conn.begin() as transaction:  # rolls back if anything below fails
                known = find_instances(conn, (r.info.sop_instance_uid for r in batch))
                for request in batch:
                    outcome = self._place(request, known, undo, dirs)
                    outcomes.append(outcome)
                    if outcome is Outcome.DUPLICATE:
                        continue
                    if outcome is Outcome.REPLACED:
                        replaced.add(request.info.sop_instance_uid)
                    row = self._row(request)
                    rows.append(row)
                    # A later copy in this batch must compare with this one.
                    known[request.info.sop_instance_uid] = (request.spool.sha256, row["path"])
                placed = time.monotonic()
                self._writer_step = "writers_lock"
                with self._sqlite_writers_turn():  # the first write takes SQLite's lock
                    locked = time.monotonic()
                    self._writer_step = "index"
                    record_instances(conn, rows, replaced, now, self._ids)
                    recorded = time.monotonic()
                    self._writer_step = "dir_fsync"
                    for folder in dirs:
                        fsync_dir(folder)
                    synced = time.monotonic()
                    self._writer_step = "commit"
                    transaction.commit()
                self._writer_step = "idle"
                _add_steps(
                    batch,
                    place=placed - begun,
                    writers_lock=locked - placed,
                    index=recorded - locked,
                    dir_fsync=synced - recorded,
                    commit=time.monotonic() - synced,
                )
        except BaseException as exc:
            self._writer_step = "idle"
            self._ids.clear()  # ids inserted in this transaction are gone
            undo.run()
            if isinstance(exc, DBAPIError):
                # The connection may be broken (server restarted): start afresh.
                self._conn = None
                conn.invalidate()
                conn.close()
            raise
        self._ids.trim()
        for request, outcome in zip(batch, outcomes, strict=True):
            if outcome is Outcome.DUPLICATE:
                request.spool.discard()
        return outcomes

    def _place(
        self,
        request: _Request,
        known: dict[str, tuple[str, str]],
        undo: _Undo,
        dirs: set[Path],
    ) -> Outcome:
        """Rename the spooled file into place (moving an older copy aside)."""
        info = request.info
        final = self.layout.path(instance_relpath(info))
        outcome = Outcome.STORED
        if info.sop_instance_uid in known:
            sha, path = known[info.sop_instance_uid]
            old = self.layout.path(path)
            if sha == request.spool.sha256 and old.exists():
                return Outcome.DUPLICATE
            if old.exists():
                kept = self.layout.superseded_path(
                    info.study_instance_uid, info.sop_instance_uid, sha
                )
                dirs |= make_dirs(kept.parent, self.data_dir)
                os.replace(old, kept)
                undo.moved.append((old, kept))
                dirs.add(old.parent)
            outcome = Outcome.REPLACED
        dirs |= make_dirs(final.parent, self.data_dir)
        os.replace(request.spool.name, final)
        undo.moved.append((Path(request.spool.name), final))
        return outcome

    def _row(self, request: _Request) -> dict[str, Any]:
        info = request.info
        return {name: getattr(info, name) for name in _INFO_FIELDS} | {
            "size_bytes": request.spool.size,
            "sha256": request.spool.sha256,
            "path": instance_relpath(request.info).as_posix(),
            "calling_ae": request.calling_ae,
            "association_id": request.association_id,
        }

    def _log(self, request: _Request, outcome: Outcome) -> None:
        info = request.info
        level = logging.WARNING if outcome is Outcome.REPLACED else logging.INFO
        logger.log(
            level,
            f"instance {outcome.value}",
            extra={
                "action": f"instance_{outcome.value}",
                "study_instance_uid": info.study_instance_uid,
                "series_instance_uid": info.series_instance_uid,
                "sop_instance_uid": info.sop_instance_uid,
                "calling_ae": request.calling_ae,
                "bytes": request.spool.size,
            },
        )

"""At start: make the files under ``data_dir/instances`` and the index agree again.

The writer renames an instance into place and then commits its index row (in one
transaction per batch, rolled back with the renames if anything fails). A crash
between the two (SIGKILL, power cut) leaves a file the index does not know. Its
sender never got a success, so it will resend; but until then the file is invisible
to rules, jobs and retention, and the disk holds bytes nobody will ever delete.

:func:`reconcile_instances` runs once at start, before any receiving process
accepts (``run`` and ``serve``, in their forked start-up child), and looks at every
instance file the index does not know:

- a file that passes ingest's own check (:func:`~dicomnode.receive.inspect.inspect_instance`)
  and lies where ingest would have put it is indexed, as if it had just arrived;
- anything else is moved to ``data_dir/quarantine/`` (same relative path), never
  deleted: an administrator decides.

What it did is logged (``instances_reconciled``) and returned.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from sqlalchemy import select

from dicomnode.errors import ReceiveError
from dicomnode.index.db import make_engine
from dicomnode.index.durable import fsync_dir, make_dirs
from dicomnode.index.instances import record_instances
from dicomnode.index.layout import DataLayout
from dicomnode.index.schema import InstanceRecord, utc_now
from dicomnode.receive.ingest import instance_relpath
from dicomnode.receive.inspect import InstanceInfo, inspect_instance

__all__ = ["ReconcileReport", "reconcile_instances"]

logger = logging.getLogger(__name__)

#: Files indexed per write transaction.
BATCH = 200


@dataclass
class ReconcileReport:
    """What one reconcile pass found and did."""

    files: int = 0
    indexed: int = 0
    quarantined: int = 0
    seconds: float = 0.0


def reconcile_instances(database_url: str, data_dir: Path) -> ReconcileReport:
    """Index or quarantine every instance file the index does not know (see above)."""
    started = time.monotonic()
    report = ReconcileReport()
    layout = DataLayout(data_dir)
    if not layout.instances.is_dir():
        return report
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            known = set(conn.scalars(select(InstanceRecord.path)))
        unknown = []
        for path in _files(layout.instances):
            report.files += 1
            if layout.relative(path) not in known:
                unknown.append(path)
        del known
        with layout.scratch_dir("reconcile") as scratch:
            rows = []
            for path in unknown:
                row = _row(path, layout, Path(scratch))
                if row is None:
                    _quarantine(path, layout)
                    report.quarantined += 1
                    continue
                rows.append(row)
                if len(rows) >= BATCH:
                    report.indexed += _record(engine, rows)
                    rows = []
            report.indexed += _record(engine, rows)
    finally:
        engine.dispose()
    report.seconds = round(time.monotonic() - started, 3)
    if report.indexed or report.quarantined:
        logger.warning(
            "instance files the index did not know",
            extra={"action": "instances_reconciled", **vars(report)},
        )
    else:
        logger.info("index and instance files agree", extra={"action": "instances_reconciled",
                                                              **vars(report)})  # fmt: skip
    return report


def _files(folder: Path) -> list[Path]:
    found: list[Path] = []
    for root, _, names in os.walk(folder):
        found.extend(Path(root) / name for name in names)
    return found


def _row(path: Path, layout: DataLayout, scratch: Path) -> dict[str, Any] | None:
    """The index row ingest would have written for ``path``; None if it must not be."""
    try:
        info = inspect_instance(path, scratch)
    except ReceiveError:
        return None
    relpath = instance_relpath(info)
    if layout.path(relpath) != path:
        return None  # not where ingest puts this instance: not ours to index
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    row: dict[str, Any] = {f.name: getattr(info, f.name) for f in fields(InstanceInfo)}
    return row | {
        "size_bytes": path.stat().st_size,
        "sha256": digest.hexdigest(),
        "path": relpath.as_posix(),
        "calling_ae": "",  # unknown: the association record went with the crash
        "association_id": None,
    }


def _record(engine: Any, rows: list[dict[str, Any]]) -> int:
    if not rows:
        return 0
    with engine.begin() as conn:
        record_instances(conn, rows, set(), utc_now())
    return len(rows)


def _quarantine(path: Path, layout: DataLayout) -> None:
    target = layout.quarantine_path(path)
    changed = make_dirs(target.parent, layout.root)
    os.replace(path, target)
    for folder in changed | {path.parent}:
        fsync_dir(folder)

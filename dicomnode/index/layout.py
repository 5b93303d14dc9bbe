"""The layout of ``data_dir``: every path under it is built here and nowhere else.

The index owns the data folder as it owns the database (STYLE: the folder is the
stage, as in mercure): a stage asks :class:`DataLayout` where a file goes instead of
joining names itself, so a folder cannot be added without its owner knowing, and
retention cannot miss one. Paths stored in the index are relative to ``data_dir``
(``instances/...``, ``results/...``), so a node's data folder can move.

======================  ============================================  =============
folder                  holds                                         per study
======================  ============================================  =============
``instances/``          received instances, byte for byte:            yes
                        ``<study>/<series>/<sop>.dcm``
``superseded/``         older copies of re-sent instances:            yes
                        ``<study>/<sop>.<sha256[:16]>.dcm``
``results/``            per job: ``job-<id>/masks.npz`` and its       yes (jobs)
                        outputs ``job-<id>/<kind>-<sop>.dcm``
``spool/``              one folder per receiving process, files       no
                        being received (:mod:`dicomnode.receive.spool`)
``quarantine/``         instance files the index did not know and     no
                        could not take (:mod:`dicomnode.receive.reconcile`)
``scratch/``            one folder per start-up task that reads       no
                        headers (backfill, reconcile), removed when
                        it ends
``models/``             model manifests an operator drops in          no
``logs/``               the node's log files                          no
``metrics/``            the Prometheus values of the node's           no
                        processes (multiprocess mode), emptied by
                        the node at start (:mod:`dicomnode.metrics`)
``previews/``           rendered result thumbnails, a cache; safe     yes
                        to delete: ``<study>/<key>.png``
                        (:mod:`dicomnode.web.previews`)
``dicomnode.sqlite``    the index, when no ``database_url`` is set    no
======================  ============================================  =============

:meth:`DataLayout.remove_study_files` deletes every per-study file of a study that
retention deleted; the others are owned by their stage (the spool is emptied at
start, quarantine is left to an administrator). A study's previews go with it too,
as a whole folder: they are a cache, and one rendered meanwhile is rendered again.

This module imports nothing of ours (only the standard library), so that
:mod:`dicomnode.config` may take the SQLite file and the models folder from it
without importing the rest of the index (``tests/unit/test_import_rules.py``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DataLayout"]

#: How much of the older copy's SHA-256 names it in ``superseded/``: enough to tell
#: the copies of one instance apart.
_SUPERSEDED_HASH_CHARS = 16


def _component(value: str) -> str:
    """``value`` as one path component; refuses anything that could leave its folder."""
    if not value or value in (".", "..") or "/" in value or "\0" in value:
        raise ValueError(f"{value!r} cannot name a file under data_dir")
    return value


@dataclass(frozen=True, slots=True)
class DataLayout:
    """The folders and files of one node's ``data_dir`` (see the module docstring).

    Parameters
    ----------
    root
        ``data_dir``, absolute (``Settings.data_dir`` resolves it).
    """

    root: Path

    @property
    def instances(self) -> Path:
        """Received instances."""
        return self.root / "instances"

    @property
    def spool(self) -> Path:
        """Receiving processes' spool folders."""
        return self.root / "spool"

    @property
    def superseded(self) -> Path:
        """Older copies of instances received again with different bytes."""
        return self.root / "superseded"

    @property
    def results(self) -> Path:
        """Jobs' folders."""
        return self.root / "results"

    @property
    def quarantine(self) -> Path:
        """Instance files reconcile found unindexed and could not index."""
        return self.root / "quarantine"

    @property
    def scratch(self) -> Path:
        """Start-up tasks' temporary folders (:meth:`scratch_dir`)."""
        return self.root / "scratch"

    @property
    def models(self) -> Path:
        """Model manifests searched after ``[models] dirs``."""
        return self.root / "models"

    @property
    def logs(self) -> Path:
        """The node's log files."""
        return self.root / "logs"

    @property
    def metrics(self) -> Path:
        """The node's processes' Prometheus values (``PROMETHEUS_MULTIPROC_DIR``)."""
        return self.root / "metrics"

    @property
    def previews(self) -> Path:
        """Rendered result thumbnails, a cache (:class:`dicomnode.web.previews.PreviewCache`)."""
        return self.root / "previews"

    @property
    def database(self) -> Path:
        """The SQLite index used when no ``database_url`` is set."""
        return self.root / "dicomnode.sqlite"

    def path(self, relative: str | os.PathLike[str]) -> Path:
        """The absolute path of a path the index records (relative to ``data_dir``)."""
        return self.root / relative

    def relative(self, path: Path) -> str:
        """What the index records for ``path``, a file under ``data_dir``."""
        return path.relative_to(self.root).as_posix()

    @staticmethod
    def instance_relpath(
        study_instance_uid: str, series_instance_uid: str, sop_instance_uid: str
    ) -> Path:
        """Where an instance lives, relative to ``data_dir`` (the path the index records).

        The caller validates the UIDs (ingest refuses an invalid one with 0xC000); this
        only refuses what would put the file outside its folder.
        """
        return Path(
            "instances", _component(study_instance_uid), _component(series_instance_uid),
            f"{_component(sop_instance_uid)}.dcm",
        )  # fmt: skip

    def spool_dir(self, pid: int) -> Path:
        """The spool folder of the receiving process ``pid``: a process cleaning its
        leftovers at start must not delete what another one is receiving."""
        return self.spool / str(pid)

    def scratch_dir(self, task: str) -> tempfile.TemporaryDirectory[str]:
        """A new temporary folder for ``task``, removed when its ``with`` block ends.

        Headers read outside ingest are inflated here (deflated transfer syntax), on
        the data folder's disk rather than the system temp folder, which may be small.

        Parameters
        ----------
        task
            What the folder is for (``backfill``, ``reconcile``): its name's prefix,
            so a folder left by a crash says who left it.
        """
        self.scratch.mkdir(parents=True, exist_ok=True)
        return tempfile.TemporaryDirectory(prefix=f"{_component(task)}-", dir=self.scratch)

    def superseded_path(self, study_instance_uid: str, sop_instance_uid: str, sha256: str) -> Path:
        """Where the older copy (SHA-256 ``sha256``) of a re-sent instance is kept.

        Filed under the study of the instance that replaced it, so retention deletes
        it with that study.
        """
        name = f"{_component(sop_instance_uid)}.{sha256[:_SUPERSEDED_HASH_CHARS]}.dcm"
        return self.superseded / _component(study_instance_uid) / name

    def job_folder(self, job_id: int) -> Path:
        """The folder of a job's files: its masks and its DICOM outputs. A rerun of the
        job writes into it again; retention deletes it with the study."""
        return self.results / f"job-{job_id}"

    def masks_path(self, job_id: int) -> Path:
        """Where a job's label masks are kept (:mod:`dicomnode.worker.results`)."""
        return self.job_folder(job_id) / "masks.npz"

    def output_path(self, job_id: int, kind: str, sop_instance_uid: str) -> Path:
        """Where a job's output (``seg``, ``sr``, ``sc``) is kept."""
        return self.job_folder(job_id) / f"{_component(kind)}-{_component(sop_instance_uid)}.dcm"

    def preview_dir(self, study_instance_uid: str) -> Path:
        """The folder of one study's rendered previews; retention deletes it with the
        study."""
        return self.previews / _component(study_instance_uid)

    def quarantine_path(self, instance_file: Path) -> Path:
        """Where reconcile moves an instance file it cannot index: the same path under
        ``quarantine/`` as under ``instances/``."""
        return self.quarantine / instance_file.relative_to(self.instances)

    def superseded_copies(
        self, study_instance_uid: str, sop_instance_uids: Collection[str]
    ) -> list[Path]:
        """The kept older copies of these instances of a study.

        Releases before this layout kept them all in ``superseded/`` itself
        (``<sop>.<hash>.dcm``); those are found too.
        """
        wanted = set(sop_instance_uids)
        found = [
            path
            for path in _files(self.superseded / _component(study_instance_uid))
            if _superseded_sop(path.name) in wanted
        ]
        found += [path for path in _files(self.superseded) if _superseded_sop(path.name) in wanted]
        return found

    def remove_study_files(
        self,
        study_instance_uid: str,
        instance_paths: Iterable[str],
        sop_instance_uids: Collection[str],
        job_ids: Iterable[int],
    ) -> int:
        """Delete what ``data_dir`` holds for a study whose rows are gone; count the files.

        That is every per-study folder of the module docstring: the instance files
        (by the paths their rows recorded), the superseded copies of those instances,
        the jobs' folders (masks and outputs) and the study's previews. Folders left
        empty are removed. Only files named by the deleted rows are touched, never a
        whole study folder, since the same study may be received again while this
        runs; the previews folder is the exception: a cache, re-rendered on demand.
        """
        removed = 0
        files = [self.path(p) for p in instance_paths]
        files += self.superseded_copies(study_instance_uid, sop_instance_uids)
        for path in files:
            try:
                path.unlink()
                removed += 1
            except FileNotFoundError:
                pass  # removed before (a crash between rows and files): fine
        for job_id in job_ids:  # the jobs' masks and outputs went with their rows
            shutil.rmtree(self.job_folder(job_id), ignore_errors=True)
        shutil.rmtree(self.preview_dir(study_instance_uid), ignore_errors=True)
        for folder in sorted({p.parent for p in files}, key=lambda p: len(p.parts), reverse=True):
            for empty in (folder, folder.parent):
                if not self._study_subfolder(empty):
                    continue
                try:
                    os.rmdir(empty)
                except OSError:
                    pass  # not empty (or gone): fine
        return removed

    def _study_subfolder(self, folder: Path) -> bool:
        """Whether ``folder`` lies inside ``instances/`` or ``superseded/`` (not either)."""
        return any(top in folder.parents for top in (self.instances, self.superseded))


def _files(folder: Path) -> list[Path]:
    """The plain files directly in ``folder`` (none if it does not exist)."""
    try:
        with os.scandir(folder) as entries:
            return [Path(e.path) for e in entries if e.is_file(follow_symlinks=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []


def _superseded_sop(name: str) -> str:
    """The SOP Instance UID in a ``superseded/`` file name (``<sop>.<hash>.dcm``)."""
    return name.removesuffix(".dcm").rpartition(".")[0]

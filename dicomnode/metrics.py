"""Every Prometheus metric the node's processes record, defined once.

The stages import this module and count where they already log the event (a
received instance, an association, a finished job, a delivery attempt); the web
stage exposes them at ``/metrics`` (:mod:`dicomnode.web.metrics`). It imports only
:mod:`prometheus_client`, so any stage may use it, and it is cheap on the receive
hot path: one counter increment and one histogram observation per instance, under
prometheus-client's own per-value locks.

Receivers and workers are separate processes. The node runs prometheus-client in
multiprocess mode: before any of its processes imports this module, ``dicomnode
run`` / ``serve`` sets ``PROMETHEUS_MULTIPROC_DIR`` to ``data_dir/metrics/``
(:attr:`~dicomnode.index.layout.DataLayout.metrics`), emptied at start and
inherited by every child, so each process writes its values to its own files there
and a scrape adds them up. A process that imports this module without that variable
(a test, ``dicomnode worker`` on another machine) keeps its values in memory.

No label carries patient data: labels are AE titles, peer and pipeline names from
the settings, states, outcomes and fixed reasons. ``docs/operate.md`` lists every
metric with its type, labels and meaning.
"""

from __future__ import annotations

import logging
import os
import threading

__all__ = [
    "ASSOCIATIONS_ACCEPTED",
    "ASSOCIATIONS_REJECTED",
    "DELIVERY_ATTEMPTS",
    "INSTANCES_RECEIVED",
    "JOBS_FINISHED",
    "JOB_STAGE_SECONDS",
    "MAX_CALLING_AE_LABELS",
    "MULTIPROCESS_ENV",
    "OTHER_CALLING_AE",
    "RECEIVED_BYTES",
    "STORE_SECONDS",
    "calling_ae_label",
    "forget_process",
]

logger = logging.getLogger(__name__)

#: The variable prometheus-client reads, at import, to share values between processes.
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Distinct calling AE titles one process labels; later ones count as
#: :data:`OTHER_CALLING_AE`, so a node open to any calling AE cannot be made to grow
#: its metrics without bound by peers inventing titles.
MAX_CALLING_AE_LABELS = 200
#: The label of calling AE titles beyond :data:`MAX_CALLING_AE_LABELS`.
OTHER_CALLING_AE = "_other"
#: The files prometheus-client 0.20-0.26 writes per process for counters and
#: histograms (``<kind>_<pid>.db``, ``values.MultiProcessValue``), and the room
#: reserved in each: some 700 samples (a sample's key holds its help text), e.g. 100
#: calling AE titles, or 5 pipelines' job stages. A dead process's files stay (its
#: counts are totals): a small reservation keeps restarts cheap.
_FILE_KINDS = ("counter", "histogram")
_RESERVED_BYTES = 256 * 1024


def _reserve_files() -> None:
    """Give this process's metrics files their disk space before prometheus-client
    maps them.

    prometheus-client writes each value through a memory map of a sparse file: a page
    first touched when the disk is full kills the process with SIGBUS, and a full
    disk is what receiving must survive (it answers 0xA700). Allocated here
    (``posix_fallocate``), the pages are there; prometheus-client takes the file's
    size as its capacity. Without the room, this process keeps its values in memory
    (unseen at ``/metrics``) rather than risk it.
    """
    folder = os.environ.get(MULTIPROCESS_ENV)
    if not folder:
        return
    try:
        for kind in _FILE_KINDS:
            path = os.path.join(folder, f"{kind}_{os.getpid()}.db")
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                os.posix_fallocate(fd, 0, _RESERVED_BYTES)
            finally:
                os.close(fd)
    except OSError as exc:
        del os.environ[MULTIPROCESS_ENV]
        logger.warning(
            "no room for this process's metrics files; its metrics are not shared",
            extra={"action": "metrics_not_shared", "reason": exc.strerror or type(exc).__name__},
        )


# Before prometheus-client is imported: it reads MULTIPROCESS_ENV once, on import.
_reserve_files()

from prometheus_client import Counter, Histogram  # noqa: E402

INSTANCES_RECEIVED = Counter(
    "dicomnode_instances_received",
    "C-STORE requests answered, by calling AE title and outcome "
    "(stored, duplicate, replaced, refused).",
    ["calling_ae", "outcome"],
)
RECEIVED_BYTES = Counter(
    "dicomnode_received_bytes",
    "Bytes of datasets received in C-STORE requests (as spooled), whatever the outcome.",
    ["calling_ae"],
)
STORE_SECONDS = Histogram(
    "dicomnode_store_seconds",
    "Time from a C-STORE dataset having arrived to its response: checks, fsync, index commit.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0),
)
ASSOCIATIONS_ACCEPTED = Counter(
    "dicomnode_associations_accepted",
    "Associations accepted, by calling AE title.",
    ["calling_ae"],
)
ASSOCIATIONS_REJECTED = Counter(
    "dicomnode_associations_rejected",
    "Connections refused or associations rejected, by reason.",
    ["reason"],
)
JOBS_FINISHED = Counter(
    "dicomnode_jobs_finished",
    "Job attempts ended, by pipeline and the state they left the job in "
    "(done, not_applicable, failed, dead).",
    ["pipeline", "state"],
)
JOB_STAGE_SECONDS = Histogram(
    "dicomnode_job_stage_seconds",
    "Seconds a job attempt spent in each stage (queue, model_load, load, model, and "
    "the output stages), by pipeline.",
    ["pipeline", "stage"],
    buckets=(0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0),
)
DELIVERY_ATTEMPTS = Counter(
    "dicomnode_delivery_attempts",
    "Delivery attempts recorded, by peer and outcome (sent, warning, retry, failed, lost).",
    ["peer", "outcome"],
)

#: Calling AE titles as received -> their label; at most MAX_CALLING_AE_LABELS.
_calling_aes: dict[str, str] = {}
_calling_aes_lock = threading.Lock()


def calling_ae_label(calling_ae: str) -> str:
    """The ``calling_ae`` label value of a calling AE title.

    Stripped of padding, with any control character written as an escape (the title
    comes from the wire), and :data:`OTHER_CALLING_AE` for titles beyond the first
    :data:`MAX_CALLING_AE_LABELS` this process has seen.

    Parameters
    ----------
    calling_ae
        The peer's AE title as received.
    """
    label = _calling_aes.get(calling_ae)  # the hot path: a title seen before, no lock
    if label is not None:
        return label
    with _calling_aes_lock:
        if len(_calling_aes) >= MAX_CALLING_AE_LABELS:
            return OTHER_CALLING_AE
        title = calling_ae.strip()
        label = title if title.isprintable() else ascii(title)[1:-1]
        _calling_aes[calling_ae] = label
    return label


def forget_process(pid: int) -> None:
    """Tell prometheus-client that the child process ``pid`` has exited.

    Its counters and histograms stay (they are totals); only live gauges of a dead
    process would be dropped. A no-op outside multiprocess mode.
    """
    if os.environ.get(MULTIPROCESS_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]

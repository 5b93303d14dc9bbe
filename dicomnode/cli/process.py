"""Process control for the node's long-running commands: signals, parent death, draining.

The commands in :mod:`dicomnode.cli.serving` stay thin; what they share about the life
of a process is here:

- :func:`stop_event`: SIGTERM and SIGINT set an event the main thread waits on, so a
  stop runs in order: stop accepting, finish or release jobs, exit cleanly
  (docs/jobs.md, "Supervised processes").
- :func:`stop_with_parent`: a supervised child stops when its node dies, however it
  dies (the lifeline pipe of :mod:`dicomnode.worker.supervisor`, else the kernel's
  parent-death signal and polling).
- :func:`drain_associations`: a receiving process lets established associations
  finish, within a grace period, before it aborts the rest.
- :func:`hide_pixel_libraries`: keeps numpy out of a process that never decodes
  pixels.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pynetdicom.transport import AssociationServer

    from dicomnode.worker.supervisor import Lifeline

__all__ = [
    "ORPHAN_RECEIVER_EXIT_S",
    "drain_associations",
    "hide_pixel_libraries",
    "show_pixel_libraries",
    "stop_event",
    "stop_with_parent",
]

logger = logging.getLogger(__name__)

#: How long a receiving process whose node died may take to stop before it exits.
ORPHAN_RECEIVER_EXIT_S = 5.0


def stop_event() -> threading.Event:
    """An event set by SIGTERM or SIGINT."""
    stop = threading.Event()

    def _set(name: str) -> None:
        logger.info("stopping", extra={"action": "node_stopping", "signal": name})
        stop.set()

    def _on_signal(signum: int, _frame: object) -> None:
        # The handler runs between two bytecodes of the main thread, which may be inside
        # stop.set() or a logging call holding their (non-reentrant) locks already, as
        # when a second SIGTERM arrives during the first: setting the event here would
        # deadlock. A thread takes the locks once the main thread lets go of them.
        name = signal.Signals(signum).name
        threading.Thread(target=_set, args=(name,), name="stop-signal", daemon=True).start()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    return stop


def stop_with_parent(stop: threading.Event, supervised: bool, exit_after: float) -> Lifeline | None:
    """Set ``stop`` when a supervised child's node is gone, even by SIGKILL.

    The node's lifeline (see :mod:`dicomnode.worker.supervisor`) was armed as this
    process started; here a thread starts watching it, and the process exits
    ``exit_after`` seconds after the node died if it has not stopped by then.

    Parameters
    ----------
    stop
        The event the process's main thread waits on.
    supervised
        Whether the process was started as a node's child (``--supervised``).
    exit_after
        Seconds the orderly stop may take once the node is gone.

    Returns
    -------
    Lifeline or None
        The lifeline; ``None`` when not started by a node.
    """
    from dicomnode.worker.supervisor import arm_lifeline, die_with_node

    if not supervised:
        return None
    lifeline = arm_lifeline()  # again: `dicomnode` (not `python -m`) skipped __main__
    if lifeline is not None:
        lifeline.watch(stop.set, exit_after)
        return lifeline
    # `--supervised` by hand, without a lifeline: die with whoever is our parent (the
    # kernel's signal where there is one, the polling below everywhere).
    parent = os.getppid()
    die_with_node(parent)

    def _watch() -> None:
        while not stop.wait(1.0):
            if os.getppid() != parent:
                logger.warning("node gone; stopping", extra={"action": "orphan_stopping"})
                stop.set()

    threading.Thread(target=_watch, daemon=True).start()
    return None


def drain_associations(server: AssociationServer, grace: float = 30.0) -> None:
    """Wait up to ``grace`` seconds for established associations to end; abort the rest.

    Call it after ``server.shutdown()``, so no association starts meanwhile.
    """
    deadline = time.monotonic() + grace
    # Rejected or never-negotiated sockets linger until pynetdicom's ARTIM timer;
    # only established associations are worth waiting for.
    while time.monotonic() < deadline and any(
        assoc.is_established for assoc in server.active_associations
    ):
        time.sleep(0.1)
    for assoc in server.active_associations:
        assoc.abort()


def hide_pixel_libraries() -> None:
    """Keep numpy (and so pydicom's pixel plugins) out of this serving process.

    Receiving, indexing, scheduling and sending never decode pixels (docs/receive.md), yet
    ``import pydicom`` loads numpy and every pixel plugin it finds: ~14 MB in each
    serving process. Marking numpy unavailable before pydicom is imported leaves
    pydicom without pixel support here, as it is designed to run. Workers, which
    decode pixels, are separate processes and unaffected.
    """
    if "numpy" not in sys.modules:
        sys.modules["numpy"] = None  # type: ignore[assignment]  # "import numpy" fails


def show_pixel_libraries() -> None:
    """Undo :func:`hide_pixel_libraries` (in a forked child that needs numpy)."""
    if "numpy" in sys.modules and sys.modules["numpy"] is None:
        del sys.modules["numpy"]

"""Close every association socket pynetdicom opens, on both sides (pynetdicom 3.0.4).

pynetdicom ends a connection with ``AssociationSocket._shutdown_socket``, which calls
``shutdown()`` then ``close()`` inside one ``try``. ``shutdown()`` raises ENOTCONN
on a socket that never connected (a refused or timed-out connect) or whose peer
reset it, so ``close()`` is skipped and the file descriptor stays open until the
garbage collector finds the socket, whenever that is. A requestor retrying a dead
peer leaks one descriptor per try; under ``ResourceWarning`` as an error (our test
suite) the late finaliser fails whichever test happens to be running.
:func:`close_sockets_always` makes ``close()`` run whatever ``shutdown()`` does.

It is process-wide, idempotent, and neutral: the receiving side installs it with its
other changes (:func:`dicomnode.receive._patches.install`), the sending side before
it associates (:mod:`dicomnode.send.scu`).
"""

from __future__ import annotations

import contextlib
import socket
import threading

import pynetdicom
from pynetdicom.transport import AssociationSocket

__all__ = ["STOCK_SHUTDOWN", "WRITTEN_FOR", "close_sockets_always", "shutdown_then_close"]

#: The pynetdicom version whose ``_shutdown_socket`` this replaces.
WRITTEN_FOR = "3.0.4"

_lock = threading.Lock()
#: pynetdicom's own method, as imported (only this module replaces it).
STOCK_SHUTDOWN = AssociationSocket._shutdown_socket


def shutdown_then_close(self: AssociationSocket) -> None:
    """Shut the socket down if it still can be, and close it in every case."""
    sock = self.socket
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


def close_sockets_always() -> None:
    """Replace ``AssociationSocket._shutdown_socket`` with :func:`shutdown_then_close`.

    Raises
    ------
    RuntimeError
        On a pynetdicom version other than :data:`WRITTEN_FOR`.
    """
    if pynetdicom.__version__ != WRITTEN_FOR:
        raise RuntimeError(
            f"dicomnode's socket fix is written for pynetdicom {WRITTEN_FOR}, "
            f"not {pynetdicom.__version__}"
        )
    with _lock:
        AssociationSocket._shutdown_socket = shutdown_then_close  # type: ignore[method-assign]

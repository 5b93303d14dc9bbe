"""Run start-up work in a forked child, so the long-running process stays small.

What a process imports stays resident for its lifetime. The serving process (SCP,
index writer, scheduler) checks the configured models and upgrades the database
schema once at start: the first imports numpy and the model interface, the second
Alembic and its templates, together ~40 MB it would otherwise carry for weeks.
:func:`run_forked` does such work in a child forked for the purpose and reports
its error, if any, back to the parent. Its records reach the node's log file
through a log channel (:mod:`dicomnode.log`) with the role ``startup``: the node
stays the file's one writer, and the child never rotates it under the node.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from dicomnode.errors import DicomnodeError
from dicomnode.log import open_channel

__all__ = ["ForkedError", "run_forked"]


class ForkedError(DicomnodeError):
    """The work done in the child failed; the message is the child's error."""


def _describe(exc: BaseException) -> str:
    # Our own errors and click's carry a message meant for the user as it is.
    format_message = getattr(exc, "format_message", None)
    if callable(format_message):
        return str(format_message())
    if isinstance(exc, DicomnodeError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def run_forked(function: Callable[..., Any], *args: Any) -> None:
    """Call ``function(*args)`` in a forked child and wait for it.

    Call it before this process starts threads. Raises :class:`ForkedError` with
    the child's error text when the function raised (or the child died). Where
    ``fork`` does not exist the function runs in this process. When this process
    writes the node's log file, the child's records go there through a channel
    that this thread reads while it waits.
    """
    if not hasattr(os, "fork"):
        function(*args)
        return
    channel = open_channel("startup")
    reader, writer = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        pid = os.fork()
    except OSError:
        if channel is not None:
            channel.close()
        raise
    if pid == 0:  # the child: run, report any error through the pipe, exit
        os.close(reader)
        code = 0
        try:
            if channel is not None:
                channel.attach()
            function(*args)
        except BaseException as exc:  # everything must reach the parent
            os.write(writer, _describe(exc).encode(errors="replace")[:4000])
            code = 1
        finally:
            logging.shutdown()
            os._exit(code)
    os.close(writer)
    if channel is not None:
        # Until the child exits: it writes at most 4000 bytes of error to the pipe,
        # which never fill it, so it never waits for us to read that first.
        channel.close_child_end()
        channel.drain()
    with os.fdopen(reader, "rb") as pipe:
        error = pipe.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise ForkedError(error or f"the start-up process died (exit status {code})")

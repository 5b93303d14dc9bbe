"""Structured logging: one action name per record, UIDs and AE titles, never PHI.

Modules log with ``logger.info("...", extra={"action": "instance_stored", ...})``.
Only :func:`configure_logging` (called by the CLI) installs handlers. Records are
written as one line of ``key=value`` pairs (logfmt) or as JSON.

No patient name, ID or birth date may appear in a record: the extras we pass carry
only UIDs, AE titles, counts and sizes, and :class:`PhiGuard` drops pydicom's and
pynetdicom's debug chatter, the only places a dataset value could reach a log. An
exception is written as :func:`describe_error` says, never as its library's text,
which can quote element values (PITFALLS.md).

Values from the wire can hold control characters (a UID ending in LF, a NUL): the
formatter writes every one of them escaped (:func:`escape_control`), in the message,
in each extra and in both formats, so no peer can cut a record or forge another.

One file for all of a node's processes
--------------------------------------
The serving process (``run``, ``serve``) alone writes ``data_dir/logs/dicomnode.log``
and rotates it (:class:`NodeLogFile`). Every process it starts (extra receivers,
workers, the forked start-up child) gets a *log channel* (:class:`LogChannel`): one
end of a Unix ``SOCK_SEQPACKET`` socket pair, inherited, never a path another local
user could connect to. The child keeps writing stderr and also sends each record to
the node as one message: the record's fields as a JSON object (never pickle), at most
:data:`MAX_MESSAGE_BYTES`, a bigger record cut with a marker (:func:`encode_message`).
A sequenced-packet send is atomic, so a message is never split or half sent, and the
kernel keeps the boundaries: no framing to resynchronise. A thread of the serving
process per channel receives the messages and hands them to the one file handler,
whose lock keeps whole records apart. The node renders each message itself, with the
escaping and :class:`PhiGuard` above, and writes the role the *channel* was opened
for, so a child can neither forge a line nor pass for another process. A child whose
node is gone, or that cannot send within :data:`SEND_TIMEOUT_S`, drops the record
from the file (it is on stderr) and later logs how many it dropped.
"""

from __future__ import annotations

import atexit
import errno
import json
import logging
import logging.handlers
import os
import re
import socket
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Literal

from dicomnode.errors import DicomnodeError

__all__ = [
    "LOG_CHANNEL_ENV",
    "MAX_MESSAGE_BYTES",
    "SEND_TIMEOUT_S",
    "ChannelHandler",
    "LogChannel",
    "NodeLogFile",
    "PhiGuard",
    "RelayedRecord",
    "StructuredFormatter",
    "configure_logging",
    "decode_message",
    "describe_error",
    "encode_message",
    "escape_control",
    "open_channel",
    "take_channel",
]

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
#: C0 controls (NUL, CR, LF, ESC...), DEL, C1 controls and the Unicode line and
#: paragraph separators: each can end, rewrite or split a line in some log viewer.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
#: ``"<fd>:<role>"``: the child's end of its log channel and the role its records
#: carry, set by the node for each process it starts.
LOG_CHANNEL_ENV = "DICOMNODE_LOG_CHANNEL"
#: The largest channel message; a record that encodes bigger is cut with a marker.
MAX_MESSAGE_BYTES = 64 * 1024
#: How long a child waits for room in its channel before it drops a record.
SEND_TIMEOUT_S = 0.5
#: After such a wait ran out, how long the child drops what does not fit at once.
_STALL_S = 5.0
#: How long an exiting node waits for its channels to hand over their last records.
_CHANNELS_EXIT_S = 2.0
_FILE_MAX_BYTES = 10 * 2**20
_FILE_BACKUPS = 5
_ROLE = re.compile(r"[a-z][a-z0-9-]{0,31}")
#: Threads of a process whose records carry a role of their own: the web server's.
_THREAD_ROLES = {"web": "web"}
#: The fields kept, besides a cut message, when a record is too big for a message.
_HEAD = ("ts", "level", "logger", "action")
_TRUNCATED = " [truncated]"
#: How deep a value's lists and dicts are written; deeper ones become a marker.
_MAX_DEPTH = 8


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def escape_control(text: str) -> str:
    """``text`` with every control character written as ``\\xNN`` (``\\uNNNN``)."""
    return _CONTROL.sub(_escaped, text)


def _clean(value: Any, depth: int = 0) -> Any:
    """A record value with its text escaped; numbers, booleans and None as they are."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, list | tuple | dict) and depth >= _MAX_DEPTH:
        return "[nested too deep]"  # a message from a channel can nest anything
    if isinstance(value, list | tuple):
        return [_clean(v, depth + 1) for v in value]
    if isinstance(value, dict):
        return {escape_control(str(k)): _clean(v, depth + 1) for k, v in value.items()}
    return escape_control(str(value))


def _key(key: object) -> str:
    """A field name that cannot open another field in logfmt (no space, quote or ``=``)."""
    return escape_control(str(key)).translate(str.maketrans(' "=', "___"))


def _timestamp(created: float, msecs: float | None = None) -> str:
    msecs = (created - int(created)) * 1000 if msecs is None else msecs
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(msecs):03d}Z"


def describe_error(exc: BaseException) -> str:
    """An exception in our words: safe to log and to store, never patient data.

    The message of one of our own errors (:class:`~dicomnode.errors.DicomnodeError`,
    which names UIDs only) is kept unless it wraps another exception, whose text it
    may quote. Any other exception, pydicom's and highdicom's included, can quote
    element values: only its type and where it was raised are given.
    """
    name = type(exc).__name__
    if isinstance(exc, DicomnodeError) and exc.__cause__ is None:
        return escape_control(f"{name}: {exc}")
    text = name
    if exc.__cause__ is not None:
        text += f" (from {type(exc.__cause__).__name__})"
    frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ else []
    if frames:
        where = frames[-1]
        text += f" at {Path(where.filename).stem}.{where.name}:{where.lineno}"
    return text


class RelayedRecord(logging.LogRecord):
    """A record a child process sent through its channel, as the node received it.

    Parameters
    ----------
    fields
        The decoded message: the record's fields, not yet escaped.
    role
        The role of the channel it came through (never the message's own).
    """

    def __init__(self, fields: dict[str, Any], role: str) -> None:
        level = logging.getLevelName(str(fields.get("level", "")).upper())
        levelno = level if isinstance(level, int) else logging.NOTSET
        super().__init__(str(fields.get("logger", "")), levelno, "", 0, "", None, None)
        self.fields = fields
        self.role = role


class StructuredFormatter(logging.Formatter):
    """Format records as logfmt or JSON with ``role``, ``action`` and the extras.

    Parameters
    ----------
    style_name
        ``"text"`` (logfmt) or ``"json"`` (one JSON object per line).
    role
        The process's role (``main``, ``receiver-2``, ``worker-1``...), written right
        after the level; ``None`` writes none. A record from the web server's thread
        carries ``web`` instead, one relayed from a child its channel's role.
    """

    def __init__(
        self, style_name: Literal["text", "json"] = "text", role: str | None = None
    ) -> None:
        super().__init__()
        self.style_name = style_name
        self.role = role

    def fields(self, record: logging.LogRecord) -> dict[str, Any]:
        """The record's fields, not yet escaped (what a child sends to its node)."""
        fields: dict[str, Any] = {
            "ts": _timestamp(record.created, record.msecs),
            "level": record.levelname.lower(),
            "logger": record.name,
            "action": getattr(record, "action", "-"),
        }
        fields.update(
            (k, v) for k, v in vars(record).items() if k not in _STANDARD and k != "action"
        )
        fields["msg"] = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            fields["error"] = describe_error(record.exc_info[1])
        return fields

    def role_of(self, record: logging.LogRecord) -> str | None:
        """The role ``record`` is written with."""
        if isinstance(record, RelayedRecord):
            return record.role
        if self.role is None:
            return None
        return _THREAD_ROLES.get(record.threadName or "", self.role)

    def format(self, record: logging.LogRecord) -> str:
        fields = record.fields if isinstance(record, RelayedRecord) else self.fields(record)
        return self.render(fields, self.role_of(record))

    def render(self, fields: dict[str, Any], role: str | None) -> str:
        """One line: ``fields`` with ``role`` after the level, every value escaped."""
        ordered: dict[str, Any] = {}
        for key, value in fields.items():
            if key != "role" or role is None:  # the role is ours to say, not the record's
                ordered[key] = value
            if key == "level" and role is not None:
                ordered["role"] = role
        if role is not None and "role" not in ordered:
            ordered = {"role": role, **ordered}
        clean = {_key(k): _clean(v) for k, v in ordered.items()}
        if self.style_name == "json":
            return json.dumps(clean, default=str)
        return " ".join(f"{k}={_quote(v)}" for k, v in clean.items())


def _quote(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' "='):
        return json.dumps(text)
    return text


class PhiGuard(logging.Filter):
    """Keep library records that may quote dataset values out of the log.

    pydicom's output (and the Python warnings it raises about invalid values) can
    quote element values, so only its errors pass; pynetdicom's DEBUG output can dump
    datasets, so only its warnings and errors pass. The node applies it again to the
    records its children relay.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith(("pydicom", "py.warnings")):
            return record.levelno >= logging.ERROR
        if record.name.startswith("pynetdicom"):
            return record.levelno >= logging.WARNING
        return True


def encode_message(fields: dict[str, Any]) -> bytes:
    """A record's fields as one channel message: a JSON object, ASCII, bounded.

    A record that encodes to more than :data:`MAX_MESSAGE_BYTES` keeps its time,
    level, logger and action, its message cut and marked ``[truncated]``, and
    ``truncated_bytes``, the size it had.
    """
    message = json.dumps(fields, default=str).encode("ascii")
    if len(message) <= MAX_MESSAGE_BYTES:
        return message
    # ensure_ascii writes a character as at most 12 bytes (a surrogate pair), so
    # these cuts always fit: 4 x 200 x 12 + 4096 x 12 bytes < MAX_MESSAGE_BYTES.
    kept: dict[str, Any] = {k: str(fields[k])[:200] for k in _HEAD if k in fields}
    kept["msg"] = str(fields.get("msg", ""))[: MAX_MESSAGE_BYTES // 16] + _TRUNCATED
    kept["truncated_bytes"] = len(message)
    return json.dumps(kept).encode("ascii")


def decode_message(message: bytes) -> dict[str, Any] | None:
    """The fields a channel message carries; ``None`` when it is not a record.

    Anything but one JSON object of at most :data:`MAX_MESSAGE_BYTES` is refused:
    nothing a peer sends is evaluated (no pickle), only parsed.
    """
    if len(message) > MAX_MESSAGE_BYTES:
        return None
    try:
        fields = json.loads(message)
    except (ValueError, RecursionError):  # not UTF-8, not JSON, nested beyond reason
        return None
    return fields if isinstance(fields, dict) else None


def _own_record(action: str, msg: str, **extra: Any) -> dict[str, Any]:
    """The fields of a record about the channels themselves."""
    return {"ts": _timestamp(time.time()), "level": "warning", "logger": __name__,
            "action": action, **extra, "msg": msg}  # fmt: skip


class NodeLogFile(logging.handlers.RotatingFileHandler):
    """The node's log file (10 MB x 5, rotated): its own records and its children's.

    Only the serving process opens it; its children reach it through the channels
    opened here (:meth:`open_channel`).
    """

    def __init__(self, path: Path) -> None:
        super().__init__(path, maxBytes=_FILE_MAX_BYTES, backupCount=_FILE_BACKUPS)
        self._threads: list[threading.Thread] = []
        # Before logging.shutdown (atexit runs last in, first out): let the children's
        # last records in first.
        atexit.register(self.join_channels)

    def open_channel(self, role: str) -> LogChannel:
        """A new channel for one child process whose records carry ``role``."""
        self._threads = [thread for thread in self._threads if thread.is_alive()]
        return LogChannel(self, role)

    def relay(self, role: str, message: bytes) -> None:
        """Write one message received on the channel of ``role``."""
        fields = decode_message(message)
        if fields is None:
            fields = _own_record(
                "log_message_refused", "a log channel message was not a record",
                bytes=len(message),
            )  # fmt: skip
        # Every line starts alike, whatever the message left out.
        head = {"ts": _timestamp(time.time()), "level": "info", "logger": "-", "action": "-"}
        self.handle(RelayedRecord({**head, **fields, "msg": fields.get("msg", "")}, role))

    def serve_channel(self, channel: LogChannel) -> None:
        """Receive ``channel``'s messages in a thread of their own until it closes."""
        thread = threading.Thread(target=channel.drain, name=f"log-{channel.role}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def join_channels(self, timeout: float = _CHANNELS_EXIT_S) -> None:
        """Wait (at most ``timeout`` s in all) for the channels of exited children."""
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        atexit.unregister(self.join_channels)
        super().close()


class LogChannel:
    """One child process's way into the node's log file (both ends, at first).

    The node opens it, hands the child end to the child (by ``pass_fds`` and
    :data:`LOG_CHANNEL_ENV`, or across ``fork``), closes its copy of that end, and
    reads until the child has closed it too, which it does by exiting.

    Parameters
    ----------
    log_file
        The node's file the messages are written to.
    role
        The role written on every record that comes through.
    """

    def __init__(self, log_file: NodeLogFile, role: str) -> None:
        if not _ROLE.fullmatch(role):
            raise ValueError(f"log role {role!r} is not lower-case letters, digits and '-'")
        self.role = role
        self._log_file = log_file
        self._node_end, self._child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # Room for a few whole messages (the kernel caps it at net.core.wmem_max).
        self._child_end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * MAX_MESSAGE_BYTES)

    @property
    def child_fd(self) -> int:
        """The child's end, as a file descriptor to pass on."""
        return self._child_end.fileno()

    def to_environment(self) -> str:
        """The value of :data:`LOG_CHANNEL_ENV` for the child."""
        return f"{self.child_fd}:{self.role}"

    def close_child_end(self) -> None:
        """Close the node's copy of the child's end, once the child holds it."""
        self._child_end.close()

    def serve(self) -> None:
        """Receive in a thread of the node until the child closes its end."""
        self._log_file.serve_channel(self)

    def drain(self) -> None:
        """Receive in this thread until the child closes its end (by exiting)."""
        with self._node_end:
            while True:
                try:
                    # One byte more than a child ever sends: a longer message is cut
                    # by the kernel and shows up here as too big.
                    message = self._node_end.recv(MAX_MESSAGE_BYTES + 1)
                except OSError:
                    return
                if not message:  # end of file: the child has closed its end
                    return
                self._log_file.relay(self.role, message)

    def attach(self) -> None:
        """In a forked child: send this process's records to the node from now on."""
        self._node_end.close()
        _send_to_node(self._child_end, self.role)

    def close(self) -> None:
        """Close both ends (the child could not be started)."""
        self._node_end.close()
        self._child_end.close()


class ChannelHandler(logging.Handler):
    """Send each record to the node's log file through this process's channel.

    Never raises and never blocks for more than :data:`SEND_TIMEOUT_S`; after such a
    wait ran out it does not wait at all for a few seconds. A record that cannot be
    sent is counted in :attr:`dropped` (stderr still has it); after the next record
    that is sent, or as the process ends, a ``log_records_dropped`` record says how
    many. Once the node is gone, nothing more is sent.

    Parameters
    ----------
    sock
        The child's end of its channel.
    formatter
        Gives the fields sent (:meth:`StructuredFormatter.fields`).
    """

    def __init__(self, sock: socket.socket, formatter: StructuredFormatter) -> None:
        super().__init__()
        self.setFormatter(formatter)
        self._fields = formatter.fields
        self._sock = sock
        #: Records not sent and not yet reported (``log_records_dropped``).
        self.dropped = 0
        self._node_gone = False
        self._no_wait_until = 0.0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = encode_message(self._fields(record))
        except Exception:  # a bug of ours: say so on stderr, as logging does
            self.handleError(record)
            return
        if not self._send(message):
            self.dropped += 1
        elif self.dropped and self._send(self._dropped_message()):
            self.dropped = 0

    def _dropped_message(self) -> bytes:
        return encode_message(_own_record(
            "log_records_dropped", "records before this one not written to the log file"
            " (stderr has them)", dropped=self.dropped,
        ))  # fmt: skip

    def _send(self, message: bytes) -> bool:
        if self._node_gone:
            return False
        # After a wait that ran out, wait no more for a while: a stalled node costs
        # this process one timeout per _STALL_S, not one per record.
        timeout = 0.0 if time.monotonic() < self._no_wait_until else SEND_TIMEOUT_S
        try:
            if self._sock.gettimeout() != timeout:
                self._sock.settimeout(timeout)
            self._sock.send(message)  # sequenced packets: all of it or nothing
        except (TimeoutError, BlockingIOError):  # no room: the node is behind
            if timeout:
                self._no_wait_until = time.monotonic() + _STALL_S
            return False
        except OSError as exc:
            if exc.errno != errno.EMSGSIZE:  # EPIPE, ECONNRESET...: the node is gone
                self._node_gone = True
            return False
        return True

    def close(self) -> None:
        if self.dropped:  # not reported yet: one last try, waiting as for any record
            self._no_wait_until = 0.0
            if self._send(self._dropped_message()):
                self.dropped = 0
        self._sock.close()
        super().close()


def open_channel(role: str) -> LogChannel | None:
    """A log channel into this process's :class:`NodeLogFile`, for a child of ``role``.

    ``None`` when this process writes no node log file (a standalone ``worker``, a
    test) or where Unix sequenced-packet sockets do not exist: the child then logs to
    stderr alone.
    """
    if not hasattr(socket, "SOCK_SEQPACKET") or not hasattr(socket, "AF_UNIX"):
        return None
    for handler in logging.getLogger().handlers:
        if isinstance(handler, NodeLogFile):
            return handler.open_channel(role)
    return None


def take_channel() -> tuple[socket.socket, str] | None:
    """The log channel and role the node gave this process, or ``None`` if none.

    Reads :data:`LOG_CHANNEL_ENV` and removes it, so nothing this process starts
    takes it for its own.
    """
    value = os.environ.pop(LOG_CHANNEL_ENV, None)
    if not value:
        return None
    fd, _, role = value.partition(":")
    try:
        if not _ROLE.fullmatch(role):
            raise ValueError(role)
        sock = socket.socket(fileno=int(fd))
    except (ValueError, OSError):
        raise SystemExit(f"dicomnode: bad {LOG_CHANNEL_ENV}={value!r}") from None
    sock.set_inheritable(False)
    return sock, role


def _add(root: logging.Logger, handler: logging.Handler, formatter: StructuredFormatter) -> None:
    handler.setFormatter(formatter)
    handler.addFilter(PhiGuard())
    root.addHandler(handler)


def _send_to_node(sock: socket.socket, role: str) -> None:
    """Turn a forked child's logging (the node's, inherited) into a child's."""
    root = logging.getLogger()
    style_name: Literal["text", "json"] = "text"
    for handler in list(root.handlers):
        formatter = handler.formatter
        if isinstance(formatter, StructuredFormatter):
            formatter.role = role
            style_name = formatter.style_name
        if isinstance(handler, NodeLogFile | ChannelHandler):
            root.removeHandler(handler)
            handler.close()
    formatter = StructuredFormatter(style_name, role)
    _add(root, ChannelHandler(sock, formatter), formatter)


def configure_logging(
    level: str = "INFO",
    log_dir: Path | None = None,
    style_name: Literal["text", "json"] = "text",
    role: str | None = None,
    channel: socket.socket | None = None,
) -> None:
    """Install the stderr handler, and the node's log file or a channel to it.

    Parameters
    ----------
    level
        The lowest level written.
    log_dir
        Where the node's rotating ``dicomnode.log`` is (the serving process and a
        process started on its own), or ``None``.
    style_name
        ``"text"`` (logfmt) or ``"json"``.
    role
        The role on every record (``main``, ``worker-1``...); ``None`` for none.
    channel
        This process's channel to its node's log file (:func:`take_channel`).
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        if isinstance(handler, NodeLogFile | ChannelHandler):
            handler.close()
    root.setLevel(level.upper())
    _add(root, logging.StreamHandler(sys.stderr), StructuredFormatter(style_name, role))
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        _add(root, NodeLogFile(log_dir / "dicomnode.log"), StructuredFormatter(style_name, role))
    if channel is not None:
        formatter = StructuredFormatter(style_name, role)
        _add(root, ChannelHandler(channel, formatter), formatter)
    # Library chatter that is not an action of ours: keep it to warnings.
    for name in ("alembic", "apscheduler"):
        logging.getLogger(name).setLevel(max(root.level, logging.WARNING))
    # pydicom warns through the warnings module too; route those into logging.
    logging.captureWarnings(True)

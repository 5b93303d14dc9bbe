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
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import re
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Literal

from dicomnode.errors import DicomnodeError

__all__ = [
    "PhiGuard",
    "StructuredFormatter",
    "configure_logging",
    "describe_error",
    "escape_control",
]

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
#: C0 controls (NUL, CR, LF, ESC...), DEL, C1 controls and the Unicode line and
#: paragraph separators: each can end, rewrite or split a line in some log viewer.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def escape_control(text: str) -> str:
    """``text`` with every control character written as ``\\xNN`` (``\\uNNNN``)."""
    return _CONTROL.sub(_escaped, text)


def _clean(value: Any) -> Any:
    """A record value with its text escaped; numbers, booleans and None as they are."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {escape_control(str(k)): _clean(v) for k, v in value.items()}
    return escape_control(str(value))


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


class StructuredFormatter(logging.Formatter):
    """Format records as logfmt or JSON with ``action`` and the extras."""

    def __init__(self, style_name: Literal["text", "json"] = "text") -> None:
        super().__init__()
        self.style_name = style_name

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
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
        fields = {escape_control(str(k)): _clean(v) for k, v in fields.items()}
        if self.style_name == "json":
            return json.dumps(fields, default=str)
        return " ".join(f"{k}={_quote(v)}" for k, v in fields.items())


def _quote(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' "='):
        return json.dumps(text)
    return text


class PhiGuard(logging.Filter):
    """Keep library records that may quote dataset values out of the log.

    pydicom's output (and the Python warnings it raises about invalid values) can
    quote element values, so only its errors pass; pynetdicom's DEBUG output can dump
    datasets, so only its warnings and errors pass.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith(("pydicom", "py.warnings")):
            return record.levelno >= logging.ERROR
        if record.name.startswith("pynetdicom"):
            return record.levelno >= logging.WARNING
        return True


def configure_logging(
    level: str = "INFO",
    log_dir: Path | None = None,
    style_name: Literal["text", "json"] = "text",
) -> None:
    """Install the stderr handler (and a rotating file under ``log_dir`` when given)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(level.upper())
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        handlers.append(
            logging.handlers.RotatingFileHandler(
                log_dir / "dicomnode.log", maxBytes=10 * 2**20, backupCount=5
            )
        )
    for handler in handlers:
        handler.setFormatter(StructuredFormatter(style_name))
        handler.addFilter(PhiGuard())
        root.addHandler(handler)
    # Library chatter that is not an action of ours: keep it to warnings.
    for name in ("alembic", "apscheduler"):
        logging.getLogger(name).setLevel(max(root.level, logging.WARNING))
    # pydicom warns through the warnings module too; route those into logging.
    logging.captureWarnings(True)

"""Structured logging: one action name per record, UIDs and AE titles, never PHI.

Modules log with ``logger.info("...", extra={"action": "instance_stored", ...})``.
Only :func:`configure_logging` (called by the CLI) installs handlers. Records are
written as one line of ``key=value`` pairs (logfmt) or as JSON.

No patient name, ID or birth date may appear in a record: the extras we pass carry
only UIDs, AE titles, counts and sizes, and :class:`PhiGuard` drops pydicom's and
pynetdicom's debug chatter, the only places a dataset value could reach a log.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
import time
from pathlib import Path
from typing import Any, Literal

__all__ = ["PhiGuard", "StructuredFormatter", "configure_logging"]

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


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
        if record.exc_info and record.exc_info[0] is not None:
            fields["error"] = f"{record.exc_info[0].__name__}: {record.exc_info[1]}"
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

"""Log records are one line each and carry no element values, whatever came in."""

from __future__ import annotations

import json
import logging
from typing import Literal

import pytest
from pydicom.valuerep import DSfloat

from dicomnode.errors import VolumeError
from dicomnode.log import StructuredFormatter, describe_error, escape_control
from dicomnode.worker.runner import job_error

CANARY = "CANARY^SECRET"
FORGED = "1.2.3\nts=2026-01-01T00:00:00.000Z level=info action=instance_stored\r\x00\x1b[2J\x7f"


def record(msg: str = "C-STORE refused", **extra: object) -> logging.LogRecord:
    rec = logging.makeLogRecord({"name": "dicomnode.test", "levelno": 30, "levelname": "WARNING"})
    rec.msg = msg
    for key, value in {"action": "store_refused", **extra}.items():
        setattr(rec, key, value)
    return rec


def pydicom_error() -> ValueError:
    """A real pydicom error whose text quotes the value it could not read."""
    try:
        DSfloat(CANARY)
    except ValueError as exc:
        return exc
    raise AssertionError("pydicom accepted the canary")


@pytest.mark.parametrize("style", ["text", "json"])
def test_control_characters_in_message_and_extras_are_escaped(
    style: Literal["text", "json"],
) -> None:
    rec = record(f"refused {FORGED}", sop_instance_uid=FORGED, reasons=[FORGED], detail={FORGED: 1})
    line = StructuredFormatter(style).format(rec)
    assert "\n" not in line and "\r" not in line and "\x00" not in line and "\x1b" not in line
    assert "\x7f" not in line
    if style == "json":
        fields = json.loads(line)
        assert fields["sop_instance_uid"] == escape_control(FORGED)
        assert fields["msg"] == "refused " + escape_control(FORGED)
        assert fields["reasons"] == [escape_control(FORGED)]
    else:
        assert "1.2.3\\\\x0ats=2026-01-01" in line  # quoted, so the backslash is doubled


def test_escape_control_writes_each_control_character_as_hex() -> None:
    assert escape_control("a\nb\x00c\x7fd\u2028e") == "a\\x0ab\\x00c\\x7fd\\u2028e"
    assert escape_control("Müller 1.2.3") == "Müller 1.2.3"


@pytest.mark.parametrize("style", ["text", "json"])
def test_logged_library_exception_never_carries_its_text(style: Literal["text", "json"]) -> None:
    exc = pydicom_error()
    rec = record("C-STORE failed unexpectedly", action="store_crashed")
    rec.exc_info = (type(exc), exc, exc.__traceback__)
    line = StructuredFormatter(style).format(rec)
    assert CANARY not in line
    assert "ValueError at " in line


def test_our_own_error_keeps_its_message_unless_it_wraps_another() -> None:
    ours = VolumeError("mixed orientation in series 1.2.3", "1.2.3")
    assert describe_error(ours) == "VolumeError: mixed orientation in series 1.2.3"
    try:
        try:
            raise pydicom_error()
        except ValueError as exc:
            raise VolumeError(f"cannot read the DICOM header of file 1: {exc}", "1.2.3") from exc
    except VolumeError as wrapped:
        text = describe_error(wrapped)
    assert CANARY not in text
    assert text.startswith("VolumeError (from ValueError) at ")


def test_job_error_names_stage_type_and_series_but_no_value() -> None:
    try:
        raise VolumeError(f"cannot decode: {CANARY}", "1.2.840.99") from pydicom_error()
    except VolumeError as exc:
        text = job_error(exc, "load")
    assert CANARY not in text
    assert text.startswith("load: VolumeError (from ValueError) at ")
    assert text.endswith("(series 1.2.840.99)")

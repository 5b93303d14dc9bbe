"""Channel messages: a record's fields as one bounded JSON object, rendered by the node.

These are the messages a process the node started sends into the node's log file
(dicomnode/log.py); here without sockets: encoding, the size bound, what the node
refuses, and how it renders what it receives (its role, escaping, the PHI guard).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from typing import Literal

import pytest

from dicomnode.log import (
    MAX_MESSAGE_BYTES,
    PhiGuard,
    RelayedRecord,
    StructuredFormatter,
    decode_message,
    encode_message,
    escape_control,
)
from tests.logfmt import parse_line

FORGED = "1.2.3\nts=2026-01-01T00:00:00.000Z level=info role=main action=instance_stored\r\x00"


def record(msg: str = "instance stored", **extra: object) -> logging.LogRecord:
    rec = logging.makeLogRecord({"name": "dicomnode.test", "levelno": 20, "levelname": "INFO"})
    rec.msg = msg
    for key, value in {"action": "instance_stored", **extra}.items():
        setattr(rec, key, value)
    return rec


def test_a_record_encodes_to_one_message_that_decodes_to_its_fields() -> None:
    fields = StructuredFormatter().fields(record(sop_instance_uid=FORGED, count=3))
    message = encode_message(fields)
    assert b"\n" not in message and message.isascii()
    assert decode_message(message) == fields


@pytest.mark.parametrize(
    "text",
    ["x" * (2 * MAX_MESSAGE_BYTES), "\U0001f600" * MAX_MESSAGE_BYTES, "\x00" * MAX_MESSAGE_BYTES],
    ids=["ascii", "astral", "control"],
)
def test_a_record_too_big_for_a_message_is_cut_with_a_marker(text: str) -> None:
    fields = StructuredFormatter().fields(record(text, action=text, detail=text))
    message = encode_message(fields)
    assert len(message) <= MAX_MESSAGE_BYTES
    decoded = decode_message(message)
    assert decoded is not None
    assert decoded["msg"].endswith(" [truncated]")
    assert decoded["truncated_bytes"] > MAX_MESSAGE_BYTES
    assert decoded["level"] == "info" and decoded["logger"] == "dicomnode.test"
    assert "detail" not in decoded


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b"not json",
        b"[1, 2]",
        b'"a string"',
        b"\xff\xfe\x00garbage",
        b"[" * 100_000,
        b'{"msg": "' + b"x" * MAX_MESSAGE_BYTES + b'"}',
    ],
    ids=["empty", "text", "array", "string", "bad-utf8", "deep", "too-big"],
)
def test_anything_but_one_bounded_json_object_is_not_a_record(message: bytes) -> None:
    assert decode_message(message) is None


def relayed(style: Literal["text", "json"], fields: Mapping[str, object], role: str) -> str:
    return StructuredFormatter(style, role="main").format(RelayedRecord(dict(fields), role))


@pytest.mark.parametrize("style", ["text", "json"])
def test_a_relayed_record_carries_its_channels_role_and_cannot_forge_a_line(
    style: Literal["text", "json"],
) -> None:
    fields = {
        "ts": "2026-12-06T00:00:00.000Z", "level": "info", "role": "main",
        "logger": "dicomnode.receive.ingest", "action": FORGED, "sop_instance_uid": FORGED,
        "x role=main y": FORGED, "nested": [[[[[[[[[[[FORGED]]]]]]]]]]], "msg": FORGED,
    }  # fmt: skip
    line = relayed(style, fields, "receiver-2")
    assert not re.search(r"[\x00-\x1f\x7f]", line)
    parsed = parse_line(line, style)  # one whole record, each field once
    assert parsed["role"] == "receiver-2"
    assert parsed["msg"] == escape_control(FORGED)
    assert parsed["x_role_main_y"] == escape_control(FORGED)  # a key opens no field


def test_the_node_renders_a_relayed_record_in_its_own_style() -> None:
    fields = {"ts": "t", "level": "warning", "logger": "dicomnode.x", "action": "a", "msg": "m"}
    assert relayed("text", fields, "worker-1") == (
        "ts=t level=warning role=worker-1 logger=dicomnode.x action=a msg=m"
    )
    assert json.loads(relayed("json", fields, "worker-1"))["role"] == "worker-1"


@pytest.mark.parametrize(
    ("logger", "level", "kept"),
    [
        ("pydicom.dataelem", "debug", False),
        ("pydicom.dataelem", "error", True),
        ("pynetdicom.dsutils", "info", False),
        ("py.warnings", "warning", False),
        ("dicomnode.receive", "info", True),
        ("pydicom", "no-such-level", False),
    ],
)
def test_the_phi_guard_applies_to_relayed_records(logger: str, level: str, kept: bool) -> None:
    rec = RelayedRecord({"logger": logger, "level": level, "msg": "CANARY"}, "receiver-2")
    assert PhiGuard().filter(rec) is kept


def test_the_role_follows_the_level_and_the_web_thread_has_its_own() -> None:
    formatter = StructuredFormatter("text", role="main")
    rec = record()
    assert " level=info role=main logger=dicomnode.test " in formatter.format(rec)
    rec.threadName = "web"
    assert " role=web " in formatter.format(rec)
    assert "role=" not in StructuredFormatter("text").format(record())

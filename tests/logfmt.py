"""Read back the node's log lines in tests: a line is one whole record or nothing."""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["parse_line"]

#: One ``key=value`` pair as :class:`dicomnode.log.StructuredFormatter` writes it: a
#: value is bare (no space, quote or ``=``) or a JSON string.
_PAIR = re.compile(r'([^\s="]+)=("(?:[^"\\]|\\.)*"|[^\s"=]*)(?: |$)')


def parse_line(line: str, style: str = "text") -> dict[str, Any]:
    """The record in one log line; AssertionError when it is not exactly one record.

    A record starts with ``ts``, ``level`` and ``role``, names each field once, and
    (logfmt) is nothing but ``key=value`` pairs from end to end.
    """
    if style == "json":
        fields = json.loads(line)
        assert isinstance(fields, dict), line
        keys = list(fields)
    else:
        keys, values, at = [], [], 0
        while at < len(line):
            pair = _PAIR.match(line, at)
            assert pair is not None, f"not logfmt at {at}: {line!r}"
            keys.append(pair.group(1))
            raw = pair.group(2)
            values.append(json.loads(raw) if raw.startswith('"') else raw)
            at = pair.end()
        assert len(set(keys)) == len(keys), f"a field twice: {line!r}"
        fields = dict(zip(keys, values, strict=True))
    assert keys[:3] == ["ts", "level", "role"], line
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", str(fields["ts"])), line
    return fields

"""The ``match`` rule language of ``[[pipelines]]`` and ``[[routes]]`` (SPEC §3).

``match = { Modality = "MG", SeriesDescription = "re:^AX", Rows = ">=512" }``

* Keys are DICOM keywords, or derived keys: ``CallingAETitle`` (the AE that sent the
  series) and ``ImagePlane`` (AXIAL, CORONAL, SAGITTAL or OBLIQUE, from
  ImageOrientationPatient).
* Every key must match (AND); a list value means any of its items (OR).
* A string matches case-insensitively, ignoring surrounding spaces; ``"re:..."`` is a
  regular expression searched case-insensitively.
* A number matches a numerically equal value; a string starting with a comparison
  (``">=512"``, ``">2"``, ``"<=1.5"``, ``"<0"``, ``"!=3"``, ``"==4"``) compares
  numerically.
* A multi-valued attribute (ImageType ``ORIGINAL\\PRIMARY``) matches when any of its
  values matches.
* A missing or empty attribute matches nothing, except the rule ``""``, which matches
  only a missing or empty attribute.

Rules are evaluated on the attributes the index recorded for each series at ingest
(:mod:`dicomnode.index.attributes`: the top-level attributes of the series'
representative instance), never on files. A key the index does not record (patient
identifiers, person names, sequences, binary data) is refused when the rule is
compiled, since it could never match.

Nothing here evaluates user text as code.
"""

from __future__ import annotations

import json
import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pydicom.datadict import keyword_dict

from dicomnode.index.attributes import image_plane, unrecorded_reason

__all__ = [
    "DERIVED_KEYS",
    "KeyCheck",
    "Match",
    "MatchResult",
    "compile_match",
    "rule_attributes",
]

#: Match keys that are not DICOM keywords but derived by the node.
DERIVED_KEYS = frozenset({"CallingAETitle", "ImagePlane"})

_COMPARE = re.compile(r"^\s*(>=|<=|==|!=|>|<)\s*([-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?)\s*$")
_OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, "<=": operator.le, "==": operator.eq,
    "!=": operator.ne, ">": operator.gt, "<": operator.lt,
}  # fmt: skip

Test = Callable[[str], bool]


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _compile_item(key: str, item: object) -> tuple[str, Test]:
    """One rule item -> (its text, a test of one attribute value as text)."""
    if isinstance(item, bool) or not isinstance(item, str | int | float):
        raise ValueError(f"match {key}: {item!r} is not a string, number or list")
    if not isinstance(item, str):
        wanted = float(item)
        return repr(item), lambda v: _number(v) == wanted
    if item.startswith("re:"):
        try:
            pattern = re.compile(item[3:], re.IGNORECASE)
        except re.error as exc:
            raise ValueError(f"match {key}: bad regular expression {item!r}: {exc}") from exc
        return repr(item), lambda v: pattern.search(v) is not None
    compare = _COMPARE.match(item)
    if compare:
        op, bound = _OPERATORS[compare.group(1)], float(compare.group(2))
        return repr(item), lambda v: (n := _number(v)) is not None and op(n, bound)
    if item.strip()[:1] in {">", "<", "=", "!"}:
        raise ValueError(f"match {key}: {item!r} is not a valid comparison")
    folded = item.strip().casefold()
    return repr(item), lambda v: v.strip().casefold() == folded


@dataclass(frozen=True, slots=True)
class KeyCheck:
    """How one key of a rule fared."""

    key: str
    wanted: str
    actual: str | None
    ok: bool


@dataclass(frozen=True, slots=True)
class MatchResult:
    """The outcome of a rule, key by key."""

    matched: bool
    checks: tuple[KeyCheck, ...]

    def explain(self) -> str:
        """One line per key: what was wanted, what was seen."""
        return "\n".join(
            f"{c.key}: wanted {c.wanted}, got {c.actual!r} -> {'yes' if c.ok else 'no'}"
            for c in self.checks
        )


def _values(value: object) -> list[str]:
    """An attribute value as a list of texts (empty when missing or empty)."""
    if value is None:
        return []
    items = list(value) if isinstance(value, list | tuple) else str(value).split("\\")
    texts = [str(v).strip() for v in items]
    return [t for t in texts if t]


@dataclass(frozen=True)
class _Key:
    key: str
    wanted: str
    tests: tuple[Test, ...]
    empty_only: bool

    def check(self, value: object) -> KeyCheck:
        texts = _values(value)
        actual = "\\".join(texts) if texts else None
        if self.empty_only:
            return KeyCheck(self.key, self.wanted, actual, not texts)
        ok = any(test(text) for text in texts for test in self.tests)
        return KeyCheck(self.key, self.wanted, actual, ok)


@dataclass(frozen=True)
class Match:
    """A compiled rule."""

    _keys: tuple[_Key, ...]

    @property
    def keys(self) -> tuple[str, ...]:
        """The attributes the rule reads."""
        return tuple(k.key for k in self._keys)

    def evaluate(self, attributes: Mapping[str, object]) -> MatchResult:
        """Check every key against ``attributes`` (an empty rule matches everything)."""
        checks = tuple(k.check(attributes.get(k.key)) for k in self._keys)
        return MatchResult(all(c.ok for c in checks), checks)


def compile_match(match: Mapping[str, object]) -> Match:
    """Validate and compile a ``match`` table.

    Raises
    ------
    ValueError
        Naming the key: unknown keyword, bad regular expression, bad comparison or
        an unsupported value type.
    """
    keys = []
    for key, value in match.items():
        if key not in keyword_dict and key not in DERIVED_KEYS:
            raise ValueError(f"match key {key!r} is not a DICOM keyword or a derived key")
        reason = None if key in DERIVED_KEYS else unrecorded_reason(key)
        if reason is not None:
            raise ValueError(
                f"match key {key!r} is {reason}, which the index does not record, "
                "so the rule could never match"
            )
        items = value if isinstance(value, list | tuple) else [value]
        if not items:
            raise ValueError(f"match {key}: an empty list matches nothing")
        compiled = [_compile_item(key, item) for item in items]
        empty_only = items == [""]
        wanted = " or ".join(text for text, _ in compiled)
        keys.append(_Key(key, wanted, tuple(test for _, test in compiled), empty_only))
    return Match(tuple(keys))


def rule_attributes(recorded: str | None, calling_ae: str | None = None) -> dict[str, object]:
    """The attributes a rule is evaluated on: the recorded ones plus the derived keys.

    Parameters
    ----------
    recorded
        A series' rule attributes as the index stores them (JSON text, see
        :mod:`dicomnode.index.attributes`); None: nothing recorded.
    calling_ae
        The AE title that sent the series (``CallingAETitle``).
    """
    attributes: dict[str, object] = json.loads(recorded) if recorded else {}
    attributes["CallingAETitle"] = calling_ae
    attributes["ImagePlane"] = image_plane(attributes.get("ImageOrientationPatient"))
    return attributes

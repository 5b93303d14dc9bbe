"""The rule language: which series a rule matches (docs/jobs.md, "Rules").

One language, read in three places:

* ``match`` tables of ``[[pipelines]]`` and ``[[routes]]`` in the settings
  (``match = { Modality = "MG", SeriesDescription = "re:^AX", Rows = ">=512" }``),
  evaluated by the scheduler on each series' recorded attributes
  (:mod:`dicomnode.schedule.rules`);
* a model's :class:`~dicomnode.models.api.SeriesRule`, compiled to the same
  conditions and evaluated by the worker on each view candidate
  (:mod:`dicomnode.worker.views`);
* the ``[[views]]`` of a model manifest, which are SeriesRule fields
  (:mod:`dicomnode.models.manifest`).

The language:

* Keys are DICOM keywords, or derived keys: ``CallingAETitle`` (the AE that sent the
  series) and ``ImagePlane`` (AXIAL, CORONAL, SAGITTAL or OBLIQUE, from
  ImageOrientationPatient).
* A rule is a set of conditions, one per key, and every condition must hold (AND); a
  list value means any of its items (OR).
* A string matches case-insensitively, ignoring surrounding spaces; ``"re:..."`` is a
  regular expression searched case-insensitively.
* A number matches a numerically equal value; a string starting with a comparison
  (``">=512"``, ``">2"``, ``"<=1.5"``, ``"<0"``, ``"!=3"``, ``"==4"``) compares
  numerically.
* A multi-valued attribute (ImageType ``ORIGINAL\\PRIMARY``) matches when any of its
  values matches.
* A missing or empty attribute matches nothing, except the item ``""``, which matches
  a missing or empty attribute (alone: only that).

Where a SeriesRule reads the language differently (a description is always a regular
expression, ``image_type`` needs every value, ``min_instances`` counts frames), its
docstring and ``docs/models.md`` say so side by side.

The vocabulary is what the index records (:mod:`dicomnode.index.attributes` takes
:func:`unrecorded_reason` from here): a key the index never records (patient
identifiers, person names, sequences, binary data) is refused when the rule is
compiled, since it could never match.

Nothing here evaluates user text as code.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

__all__ = [
    "DERIVED_KEYS",
    "UNRECORDED_VRS",
    "Condition",
    "KeyCheck",
    "Match",
    "MatchResult",
    "MatchValue",
    "compile_condition",
    "compile_match",
    "unrecorded_reason",
]

#: What a ``match`` table holds for one key: an item, or a list of items (any of).
MatchValue = str | int | float | list[str | int | float]

#: Match keys that are not DICOM keywords but derived by the node.
DERIVED_KEYS = frozenset({"CallingAETitle", "ImagePlane"})

#: Patient-module attributes that identify nobody; the rest of group 0010 is never
#: recorded, so no patient name, ID or birth date reaches the index (docs/receive.md, "Logs").
_PATIENT_KEPT = frozenset({"PatientSex", "PatientAge", "PatientSize", "PatientWeight"})
#: Value representations the index never records, with the reason a rule gets.
UNRECORDED_VRS: Mapping[str, str] = {
    "SQ": "a sequence",
    "PN": "a person name",
    **dict.fromkeys(("OB", "OW", "OF", "OD", "OL", "OV", "UN", "AT"), "binary data"),
}

_COMPARE = re.compile(r"^\s*(>=|<=|==|!=|>|<)\s*([-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?)\s*$")
_OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, "<=": operator.le, "==": operator.eq,
    "!=": operator.ne, ">": operator.gt, "<": operator.lt,
}  # fmt: skip


def unrecorded_reason(keyword: str, vr: str | None = None) -> str | None:
    """Why the index never records ``keyword``, so no rule may name it; None when it may.

    Parameters
    ----------
    keyword
        A DICOM keyword; an unknown one gives None.
    vr
        The value representation the value is read as; None: the dictionary's. An
        ambiguous VR (``"OB or OW"``) is refused only when every alternative is, and
        ``""`` (not known yet) only for patient data.

    Examples
    --------
    ``"patient data"`` for PatientName, ``"a sequence"`` for ReferencedImageSequence.
    """
    from pydicom.datadict import dictionary_VR, tag_for_keyword  # see _keywords

    tag = tag_for_keyword(keyword)
    if tag is None:
        return None
    if tag >> 16 == 0x0010 and keyword not in _PATIENT_KEPT:
        return "patient data"
    if vr is None:
        vr = str(dictionary_VR(tag))
    reasons = {UNRECORDED_VRS.get(alternative) for alternative in vr.split(" or ")}
    return reasons.pop() if len(reasons) == 1 else None


def _keywords() -> Mapping[str, int]:
    """pydicom's keyword dictionary, imported when a rule is first compiled.

    ``import pydicom`` loads numpy and its pixel plugins, which the serving process
    keeps out (``cli.process.hide_pixel_libraries``) but only after the settings,
    and so this module, are imported.
    """
    from pydicom.datadict import keyword_dict

    return keyword_dict


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


# One test per rule item, each a small picklable object (a compiled rule travels
# inside a model's views), taking one attribute value as text.


@dataclass(frozen=True, slots=True)
class _Equals:
    folded: str

    def __call__(self, value: str) -> bool:
        return value.strip().casefold() == self.folded


@dataclass(frozen=True, slots=True)
class _NumberEquals:
    number: float

    def __call__(self, value: str) -> bool:
        return _number(value) == self.number


@dataclass(frozen=True, slots=True)
class _Compare:
    op: Callable[[float, float], bool]
    bound: float

    def __call__(self, value: str) -> bool:
        number = _number(value)
        return number is not None and self.op(number, self.bound)


@dataclass(frozen=True, slots=True)
class _Search:
    pattern: re.Pattern[str]

    def __call__(self, value: str) -> bool:
        return self.pattern.search(value) is not None


_Test = _Equals | _NumberEquals | _Compare | _Search


def _compile_item(key: str, item: object) -> _Test | None:
    """One rule item -> a test of one attribute value; None for ``""`` (missing)."""
    if isinstance(item, bool) or not isinstance(item, str | int | float):
        raise ValueError(f"match {key}: {item!r} is not a string, number or list")
    if not isinstance(item, str):
        return _NumberEquals(float(item))
    if item.startswith("re:"):
        try:
            return _Search(re.compile(item[3:], re.IGNORECASE))
        except re.error as exc:
            raise ValueError(f"match {key}: bad regular expression {item!r}: {exc}") from exc
    compare = _COMPARE.match(item)
    if compare:
        return _Compare(_OPERATORS[compare.group(1)], float(compare.group(2)))
    if item.strip()[:1] in {">", "<", "=", "!"}:
        raise ValueError(f"match {key}: {item!r} is not a valid comparison")
    folded = item.strip().casefold()
    return _Equals(folded) if folded else None


@dataclass(frozen=True, slots=True)
class KeyCheck:
    """How one condition of a rule fared."""

    key: str
    wanted: str
    actual: str | None
    ok: bool


@dataclass(frozen=True, slots=True)
class MatchResult:
    """The outcome of a rule, condition by condition."""

    matched: bool
    checks: tuple[KeyCheck, ...]

    def explain(self) -> str:
        """One line per condition: what was wanted, what was seen."""
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


@dataclass(frozen=True, slots=True)
class Condition:
    """One compiled condition: a key, and the items any of which must match.

    Attributes
    ----------
    key
        The DICOM keyword or derived key read.
    wanted
        The items as written, for explanations (``'MG' or 'CR'``).
    tests
        One test per non-empty item, applied to each value of the attribute.
    missing
        Whether a missing or empty attribute matches (an item ``""``).
    """

    key: str
    wanted: str
    tests: tuple[_Test, ...]
    missing: bool

    def check(self, value: object) -> KeyCheck:
        """Check one attribute value (None when the attribute is missing)."""
        texts = _values(value)
        actual = "\\".join(texts) if texts else None
        if not texts:
            return KeyCheck(self.key, self.wanted, actual, self.missing)
        ok = any(test(text) for text in texts for test in self.tests)
        return KeyCheck(self.key, self.wanted, actual, ok)


def compile_condition(key: str, value: object) -> Condition:
    """Validate and compile one key of a rule and its value (an item or a list of items).

    Raises
    ------
    ValueError
        Naming the key: unknown or unrecorded keyword, bad regular expression, bad
        comparison, an empty list or an unsupported value type.
    """
    if key not in _keywords() and key not in DERIVED_KEYS:
        raise ValueError(f"match key {key!r} is not a DICOM keyword or a derived key")
    reason = None if key in DERIVED_KEYS else unrecorded_reason(key)
    if reason is not None:
        raise ValueError(
            f"match key {key!r} is {reason}, which the index does not record, "
            "so the rule could never match"
        )
    items = list(value) if isinstance(value, list | tuple) else [value]
    if not items:
        raise ValueError(f"match {key}: an empty list matches nothing")
    tests = [_compile_item(key, item) for item in items]
    return Condition(
        key=key,
        wanted=" or ".join(repr(item) for item in items),
        tests=tuple(test for test in tests if test is not None),
        missing=None in tests,
    )


@dataclass(frozen=True, slots=True)
class Match:
    """A compiled rule: every condition must hold (no condition: matches everything)."""

    conditions: tuple[Condition, ...] = ()

    @property
    def keys(self) -> tuple[str, ...]:
        """The attributes the rule reads, in order."""
        return tuple(dict.fromkeys(c.key for c in self.conditions))

    def evaluate(self, attributes: Mapping[str, object]) -> MatchResult:
        """Check every condition against ``attributes`` (keyword -> value)."""
        checks = tuple(c.check(attributes.get(c.key)) for c in self.conditions)
        return MatchResult(all(c.ok for c in checks), checks)


def compile_match(match: Mapping[str, object]) -> Match:
    """Validate and compile a ``match`` table: keyword -> item or list of items.

    Raises
    ------
    ValueError
        Naming the key: see :func:`compile_condition`.
    """
    return Match(tuple(compile_condition(key, value) for key, value in match.items()))

"""docs/configuration.md lists every settings key of dicomnode/config.py, with its default."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from dicomnode.config import Settings

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
_ROW = re.compile(r"^\| `([a-z_]+\.[a-z_]+)` \| `([^`]*)` \| (.+) \|$")


def _render(value: Any) -> str:
    """A default as the document writes it (TOML-like)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_render(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_render(v)}" for k, v in value.items()) + "}"
    return f'"{value}"'


def _section_models() -> dict[str, type[BaseModel]]:
    """Section name -> its model, for tables (``[node]``) and arrays of tables."""
    sections: dict[str, type[BaseModel]] = {}
    for name, field in Settings.model_fields.items():
        annotation = field.annotation
        args = getattr(annotation, "__args__", ())
        model = args[0] if args else annotation
        if isinstance(model, type) and issubclass(model, BaseModel):
            sections[name] = model
    return sections


def _code_keys() -> dict[str, str]:
    keys = {}
    for section, model in _section_models().items():
        for name, field in model.model_fields.items():
            if field.default is PydanticUndefined and field.default_factory is None:
                default = "(required)"
            elif field.default_factory is not None:
                default = _render(field.default_factory())  # type: ignore[call-arg]
            else:
                default = _render(field.default)
            keys[f"{section}.{name}"] = default
    return keys


def _documented_keys() -> dict[str, str]:
    rows = [_ROW.match(line) for line in DOC.read_text(encoding="utf-8").splitlines()]
    return {row.group(1): row.group(2) for row in rows if row}


def test_every_settings_key_is_documented_with_its_default() -> None:
    code, documented = _code_keys(), _documented_keys()
    assert set(code) - set(documented) == set(), "keys missing from docs/configuration.md"
    assert set(documented) - set(code) == set(), "docs/configuration.md lists unknown keys"
    wrong = {key: (documented[key], code[key]) for key in code if documented[key] != code[key]}
    assert wrong == {}, "documented default != code default"


def test_every_documented_key_says_what_it_means() -> None:
    for line in DOC.read_text(encoding="utf-8").splitlines():
        row = _ROW.match(line)
        if row:
            assert len(row.group(3).strip()) > 10, f"{row.group(1)} has no meaning written"

"""docs/conformance.md holds exactly the tables the generator makes from the code now."""

from __future__ import annotations

import difflib
import subprocess
import sys
from pathlib import Path

import pytest

from dicomnode.conformance import (
    DOCUMENT,
    TABLES,
    Table,
    generate_tables,
    stale_tables,
    update_document,
)

ROOT = Path(__file__).resolve().parents[2]
REGENERATE = f"python -m dicomnode.conformance --write {DOCUMENT}"


@pytest.fixture(scope="module")
def tables() -> list[Table]:
    return generate_tables()


def test_document_tables_equal_what_the_code_generates_now(tables: list[Table]) -> None:
    text = (ROOT / DOCUMENT).read_text(encoding="utf-8")

    fresh = update_document(text, tables)  # raises on a missing or unknown block

    if fresh != text:
        stale = stale_tables(text, tables)
        diff = "".join(
            difflib.unified_diff(
                text.splitlines(keepends=True),
                fresh.splitlines(keepends=True),
                fromfile=f"{DOCUMENT} (committed)",
                tofile=f"{DOCUMENT} (generated now)",
                n=1,
            )
        )
        pytest.fail(
            f"{DOCUMENT}: tables {stale} no longer match the code. Run `{REGENERATE}`"
            f" from the repository root and review the change in conformance:\n{diff[:4000]}",
            pytrace=False,
        )


def test_every_table_has_rows(tables: list[Table]) -> None:
    assert [table.name for table in tables] == list(TABLES)
    for table in tables:
        # A header, its rule and at least one row.
        assert table.text.count("\n") >= 2, table.name


def test_update_document_replaces_the_tables_and_keeps_the_prose() -> None:
    table = Table("demo", "| a |\n|---|\n| 1 |")
    text = (
        "Prose before.\n"
        "<!-- BEGIN GENERATED demo: old command -->\n| stale |\n<!-- END GENERATED demo -->\n"
        "Prose after.\n"
    )

    updated = update_document(text, [table])

    assert updated.startswith("Prose before.\n")
    assert updated.endswith("\nProse after.\n")
    assert table.block() in updated
    assert "stale" not in updated
    assert update_document(updated, [table]) == updated
    assert stale_tables(text, [table]) == ["demo"]
    assert stale_tables(updated, [table]) == []


def test_update_document_refuses_a_missing_or_an_unknown_block() -> None:
    table = Table("demo", "| a |\n|---|\n| 1 |")
    other = "<!-- BEGIN GENERATED other -->\n<!-- END GENERATED other -->\n"

    with pytest.raises(ValueError, match=r"without a block \['demo'\].*unknown blocks \['other'\]"):
        update_document(other, [table])
    with pytest.raises(ValueError, match="no end marker"):
        update_document("<!-- BEGIN GENERATED demo -->\n| a |\n", [table])


def test_check_command_passes_on_the_document_without_importing_torch() -> None:
    code = (
        "import sys; from dicomnode.conformance import main;"
        f" code = main(['--check', {str(ROOT / DOCUMENT)!r}]);"
        " print('torch' in sys.modules); sys.exit(code)"
    )

    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"

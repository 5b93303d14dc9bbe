"""Start-up work in a forked child: its errors reach the parent, its imports do not."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click
import pytest

from dicomnode.errors import ConfigError
from dicomnode.forked import ForkedError, run_forked


def _import_tabnanny(marker: str) -> None:
    import tabnanny  # noqa: F401  # a module this test process has not imported

    with open(marker, "w", encoding="utf-8") as out:
        out.write(str(os.getpid()))


def test_the_function_runs_in_another_process_and_its_imports_stay_there(
    tmp_path: Path,
) -> None:
    assert "tabnanny" not in sys.modules
    marker = tmp_path / "ran"
    run_forked(_import_tabnanny, str(marker))
    assert int(marker.read_text()) != os.getpid()
    assert "tabnanny" not in sys.modules


def _raise(exc: BaseException) -> None:
    raise exc


@pytest.mark.parametrize(
    ("exc", "message"),
    [
        (ConfigError("node.port: must be below 65536"), "node.port: must be below 65536"),
        (
            click.ClickException("bad configuration: unknown model"),
            "bad configuration: unknown model",
        ),
        (ValueError("boom"), "ValueError: boom"),
    ],
)
def test_the_childs_error_is_raised_in_the_parent_with_its_message(
    exc: BaseException, message: str
) -> None:
    with pytest.raises(ForkedError) as raised:
        run_forked(_raise, exc)
    assert str(raised.value) == message


def test_a_child_that_dies_is_reported() -> None:
    with pytest.raises(ForkedError, match="exit status 3"):
        run_forked(os._exit, 3)

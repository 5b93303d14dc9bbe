"""What `pip install .` gives: a wheel that carries the migrations (and upgrades a
database from them) and the built-in models' weights."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Runs with the wheel's copy of dicomnode, not this checkout's editable install.
PROBE = """
import sys
# Hide this checkout (an editable install puts it on sys.path) from the import system.
sys.path[:] = [p for p in sys.path if p.rstrip("/") != sys.argv[3]]
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
import dicomnode
assert dicomnode.__file__.startswith(sys.argv[1]), dicomnode.__file__
from dicomnode.index.db import upgrade_database
upgrade_database("sqlite:///" + sys.argv[2])
print("upgraded")
"""


@pytest.mark.slow
def test_wheel_ships_the_migrations_and_upgrades_from_them(tmp_path: Path) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist"), str(ROOT)],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    wheel = next((tmp_path / "dist").glob("dicomnode-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "dicomnode/_alembic/env.py" in names
    assert any(n.startswith("dicomnode/_alembic/versions/0001_") for n in names)
    # Every module of the checkout ships (a package left out of pyproject.toml would not).
    modules = {
        f"dicomnode/{p.relative_to(ROOT / 'dicomnode')}" for p in (ROOT / "dicomnode").rglob("*.py")
    }
    assert sorted(modules - set(names)) == []
    # The web page's templates and vendored assets ship: it works offline, installed.
    pages = {f"dicomnode/{p.relative_to(ROOT / 'dicomnode')}"
             for folder in ("templates", "static")
             for p in (ROOT / "dicomnode" / "web" / folder).iterdir()}  # fmt: skip
    assert "dicomnode/web/static/htmx.min.js" in pages
    assert sorted(pages - set(names)) == []
    assert "dicomnode/_docs/conformance.md" in names  # the page serves it
    # The built-in models' trained weights and model cards ship in the wheel.
    for model in ("ct-lesion-seg", "mg-4view", "cxr-2view"):
        assert f"dicomnode/models/weights/{model}.pt" in names, model
        assert f"dicomnode/models/weights/{model}.md" in names, model
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(site), str(tmp_path / "db.sqlite"), str(ROOT)],
        capture_output=True, text=True, check=False, timeout=120, cwd=tmp_path,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "upgraded" in done.stdout

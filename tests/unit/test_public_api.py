"""Every module states its public API in ``__all__``, and every name there exists."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import dicomnode

MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(dicomnode.__path__, "dicomnode.")
    if not info.name.startswith(("dicomnode._alembic", "dicomnode.__main__"))
)


@pytest.mark.parametrize("name", MODULES)
def test_module_declares_an_all_whose_names_exist(name: str) -> None:
    module = importlib.import_module(name)
    if not hasattr(module, "__path__"):  # packages may leave __all__ out
        assert isinstance(getattr(module, "__all__", None), list), f"{name} has no __all__"
    for exported in getattr(module, "__all__", []):
        assert hasattr(module, exported), f"{name}.__all__ names missing {exported!r}"


def test_the_receiving_side_never_imports_torch() -> None:
    # A fresh interpreter: this test process may have imported torch already.
    import subprocess
    import sys

    stages = [n for n in MODULES if not n.startswith(("dicomnode.models", "dicomnode.worker"))]
    code = "; ".join(f"import {n}" for n in stages)
    code += "; import sys; print('torch' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert done.stdout.strip() == "False"

"""The import rules of STYLE.md, read from the code: who may import whom.

Every module's imports are parsed with :mod:`ast`, those inside functions and under
``TYPE_CHECKING`` included, and each import of a ``dicomnode`` module is checked
against the matrix below. A *unit* is a package under ``dicomnode`` or a top-level
module, or a module the matrix gives a row of its own (``index.layout``); a unit may
always import its own modules.

================  ==============================================================
unit              may import
================  ==============================================================
``errors``        nothing of ours
``uids``          nothing of ours
``rules``         nothing of ours (the rule language: settings, schedule, models)
``kernel``        nothing of ours (the types models, outputs and synth share)
``metrics``       nothing of ours (every Prometheus metric; prometheus_client only)
``sockets``       nothing of ours (pynetdicom's socket close, fixed for both sides)
``log``           errors
``forked``        errors, log
``config``        errors, log, rules, index.layout (the data folder's paths: the
                  SQLite file and the models folder)
``index.layout``  nothing of ours (only the standard library)
``index``         the neutral helpers: the root package (``__version__``), errors,
                  log, uids, forked, kernel, rules, metrics, sockets
``models``        the neutral helpers (the only unit that imports torch)
``outputs``       the neutral helpers
``volumes``       the neutral helpers
``synth``         the neutral helpers, models, outputs, volumes
``receive``       the neutral helpers, config, index
``schedule``      the neutral helpers, config, index
``send``          the neutral helpers, config, index
``web``           the neutral helpers, config, index
``worker``        the neutral helpers, config, index, models, outputs, volumes
``cli``           anything (it wires the stages together); ``__main__`` too, and
                  ``conformance``, which reads the stages to write their tables
================  ==============================================================

So stages (receive, schedule, worker, send, web) talk only through ``index``, and
never import one another; the libraries (models, outputs, volumes, synth) have no
config and import no stage, so each runs and tests alone; ``index`` is the shared
store and takes no config (callers pass plain values). ``config`` reads only the
index's :class:`~dicomnode.index.layout.DataLayout`, which every path under
``data_dir`` comes from, never its SQL. The matrix is a layering:
:func:`test_the_matrix_is_a_layering` checks it has no cycle. A unit missing from it
fails :func:`test_every_unit_is_in_the_matrix` until it is given a row.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

import dicomnode

PACKAGE = Path(dicomnode.__file__).parent

NEUTRAL = frozenset(
    {"dicomnode", "errors", "log", "uids", "forked", "kernel", "rules", "metrics", "sockets"}
)
STAGE = NEUTRAL | {"config", "index"}
LIBRARIES = frozenset({"models", "outputs", "volumes"})
EVERYTHING = frozenset({"*"})

ALLOWED: dict[str, frozenset[str]] = {
    "dicomnode": frozenset(),
    "errors": frozenset(),
    "uids": frozenset(),
    "rules": frozenset(),
    "kernel": frozenset(),
    "metrics": frozenset(),
    "sockets": frozenset(),
    "log": frozenset({"errors"}),
    "forked": frozenset({"errors", "log"}),
    "config": frozenset({"errors", "log", "rules", "index.layout"}),
    "index.layout": frozenset(),
    "index": NEUTRAL,
    "models": NEUTRAL,
    "outputs": NEUTRAL,
    "volumes": NEUTRAL,
    "synth": NEUTRAL | LIBRARIES,
    "receive": STAGE,
    "schedule": STAGE,
    "send": STAGE,
    "web": STAGE,
    "worker": STAGE | LIBRARIES,
    "cli": EVERYTHING,
    "__main__": EVERYTHING,
    "conformance": EVERYTHING,
}

#: Machine-learning runtimes: a receive-only host needs none of them (STYLE.md).
ML_RUNTIMES = frozenset({"torch", "torchvision", "onnxruntime"})


@dataclass(frozen=True)
class Import:
    """One import statement's target, where it stands."""

    module: str  # the importing module, e.g. dicomnode.synth.truth
    target: str  # the imported module, e.g. dicomnode.worker.views
    line: int


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit_of(module: str) -> str:
    """dicomnode.worker.views -> worker; dicomnode -> dicomnode; a module with a row of
    its own is its own unit (dicomnode.index.layout -> index.layout)."""
    parts = module.split(".")
    if len(parts) > 2 and ".".join(parts[1:3]) in ALLOWED:
        return ".".join(parts[1:3])
    return parts[1] if len(parts) > 1 else parts[0]


def _package(unit: str) -> str:
    """The package a unit belongs to: index.layout -> index."""
    return unit.partition(".")[0]


def is_module(name: str) -> bool:
    relative = Path(*name.split(".")[1:]) if "." in name else Path()
    base = PACKAGE / relative
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imports_of(source: str, module: str, is_package: bool = False) -> Iterator[Import]:
    """Every import in ``source`` (module ``module``), functions included.

    ``from package import name`` names the submodule when there is one, else the
    package (``from dicomnode import __version__`` is the root package).
    """
    here = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.split(".")[: len(here.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                own = base.split(".")[0] == "dicomnode" and is_module(sub)
                yield Import(module, sub if own else base, node.lineno)


def all_imports() -> Iterator[Import]:
    for path in sorted(PACKAGE.rglob("*.py")):
        yield from imports_of(path.read_text(encoding="utf-8"), module_name(path),
                              path.name == "__init__.py")  # fmt: skip


def violations(found: list[Import]) -> list[str]:
    out = []
    for item in found:
        if item.target.split(".")[0] != "dicomnode":
            continue
        unit, target = unit_of(item.module), unit_of(item.target)
        allowed = ALLOWED.get(unit, frozenset())
        # A package's modules use its own module with a row (index -> index.layout);
        # whoever may import a package may import any of its modules.
        own = target == unit or (_package(target) == unit and "." in target)
        if own or "*" in allowed or target in allowed or _package(target) in allowed:
            continue
        may = ", ".join(sorted(allowed)) or "nothing of ours"
        out.append(
            f"{item.module} imports {item.target} (line {item.line}): {unit} may import {may}"
        )
    return list(dict.fromkeys(out))  # ``from x import a, b`` is one offence


def test_every_module_keeps_to_the_import_matrix() -> None:
    broken = violations(list(all_imports()))
    assert not broken, "imports that break the matrix:\n" + "\n".join(broken)


def test_only_models_import_the_ml_runtimes() -> None:
    broken = [
        f"{item.module} imports {item.target} (line {item.line})"
        for item in all_imports()
        if item.target.split(".")[0] in ML_RUNTIMES and unit_of(item.module) != "models"
    ]
    assert not broken, "only dicomnode/models/ may import torch:\n" + "\n".join(broken)


def test_every_unit_is_in_the_matrix() -> None:
    units = {unit_of(module_name(path)) for path in PACKAGE.rglob("*.py")}
    units -= {"_alembic"} if (PACKAGE / "_alembic").is_dir() else set()
    assert units <= set(ALLOWED), f"give these a row in ALLOWED: {sorted(units - set(ALLOWED))}"


def test_the_matrix_is_a_layering() -> None:
    graph = {
        unit: {u for u in ALLOWED if u != unit} if "*" in allowed else set(allowed)
        for unit, allowed in ALLOWED.items()
    }
    # Entry points may import everything; nothing imports them, so they close no cycle.
    entries = {unit for unit, allowed in ALLOWED.items() if "*" in allowed}
    for entry in entries:
        assert not any(entry in graph[unit] for unit in graph if unit not in entries)
        graph[entry] = set()
    # A module with a row of its own is part of its package (index.layout in index).
    for unit in [u for u in graph if "." in u]:
        graph[_package(unit)] |= {unit}
    try:
        tuple(TopologicalSorter(graph).static_order())
    except CycleError as exc:  # pragma: no cover - fails the test with the cycle
        pytest.fail(f"the matrix has a cycle: {exc.args[1]}")


@pytest.mark.parametrize(
    ("module", "source", "is_package", "offence"),
    [
        # A stage reaching past index, inside a function.
        ("dicomnode.send.scu", "def f():\n    from dicomnode.worker import runner\n", False,
         "dicomnode.send.scu imports dicomnode.worker.runner (line 2): send may import"),
        # A relative import out of a library into a stage.
        ("dicomnode.outputs.seg", "from ..worker.views import group_views\n", False,
         "dicomnode.outputs.seg imports dicomnode.worker.views (line 1)"),
        # From a package's __init__, one dot is the package itself.
        ("dicomnode.index", "from .. import config\n", True,
         "dicomnode.index imports dicomnode.config (line 1): index may import"),
        ("dicomnode.config", "import dicomnode.schedule.rules\n", False,
         "config may import errors, index.layout, log, rules"),
        # config may take the data folder's paths from the index, not its SQL.
        ("dicomnode.config", "from dicomnode.index.db import make_engine\n", False,
         "dicomnode.config imports dicomnode.index.db (line 1): config may import"),
        # The layout module config reads imports nothing of ours.
        ("dicomnode.index.layout", "from dicomnode.index.durable import fsync_dir\n", False,
         "dicomnode.index.layout imports dicomnode.index.durable (line 1)"),
    ],
)  # fmt: skip
def test_a_broken_rule_is_reported_naming_module_and_import(
    module: str, source: str, is_package: bool, offence: str
) -> None:
    found = violations(list(imports_of(source, module, is_package)))
    assert len(found) == 1 and offence in found[0]


def test_allowed_imports_are_not_reported() -> None:
    source = (
        "from dicomnode import __version__, uids\n"
        "from dicomnode.kernel import Volume\n"
        "from . import identity\n"
        "import numpy\n"
    )
    assert violations(list(imports_of(source, "dicomnode.outputs.seg"))) == []

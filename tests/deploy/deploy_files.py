"""Readers for the files in ``deploy/``: systemd units, the Dockerfile, compose, Kubernetes.

Each reader returns plain data for ``test_deploy_files.py`` to assert on; the tools that
check the files (systemd-analyze, hadolint, docker-compose, kubernetes-validate) are
run by the tests themselves. A tool that is missing skips its test with the reason, or
fails it when ``DICOMNODE_REQUIRE_TOOLS=1`` (as CI sets, after ``scripts/check`` has
installed them all).
"""

from __future__ import annotations

import fnmatch
import importlib
import os
import re
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

__all__ = [
    "DEPLOY",
    "REPO",
    "UNITS",
    "build_context_includes",
    "compose_file",
    "dockerfile_commands",
    "dockerfile_env",
    "final_stage",
    "interpolate",
    "k8s_documents",
    "require_module",
    "require_tool",
    "unit_values",
    "venv_tool",
]

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
#: The unit files, each with the name ``systemd-analyze`` checks it under (a template
#: is checked as one of its instances, so that ``%i`` is expanded).
UNITS = {
    "dicomnode.service": "dicomnode.service",
    "dicomnode-serve.service": "dicomnode-serve.service",
    "dicomnode-worker@.service": "dicomnode-worker@0.service",
}
REQUIRE_TOOLS_ENV = "DICOMNODE_REQUIRE_TOOLS"


def _missing(reason: str) -> None:
    if os.environ.get(REQUIRE_TOOLS_ENV) == "1":
        pytest.fail(f"{REQUIRE_TOOLS_ENV}=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def venv_tool(name: str) -> str | None:
    """A command installed beside this Python (the venv's ``bin/``), else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(name)


def require_tool(name: str, package: str) -> str:
    """The path of command ``name``; skip (or fail) naming ``package`` when missing."""
    path = venv_tool(name)
    if path is None:
        _missing(f"{name} not installed ({package})")
    assert path is not None
    return path


def require_module(name: str, package: str) -> ModuleType:
    """Import ``name``; skip (or fail) naming ``package`` when it is not installed."""
    try:
        return importlib.import_module(name)
    except ImportError:
        _missing(f"Python module {name} not installed (PyPI {package}, test extra)")
        raise  # not reached: _missing skips or fails


def unit_values(path: Path, key: str, section: str = "Service") -> list[str]:
    """Every value of ``key`` in ``[section]`` of a unit file, in order.

    systemd allows a key more than once (``Environment=``, ``SystemCallFilter=``), so
    configparser, which refuses that, is not used.
    """
    values = []
    current = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
        elif current == section and "=" in line:
            name, value = line.split("=", 1)
            if name.strip() == key:
                values.append(value.strip())
    return values


def dockerfile_commands() -> list[Any]:
    """``deploy/Dockerfile`` as parsed by BuildKit's own parser (PyPI ``dockerfile``)."""
    dockerfile = require_module("dockerfile", "dockerfile")
    return list(dockerfile.parse_file(str(DEPLOY / "Dockerfile")))


def final_stage(commands: list[Any]) -> list[Any]:
    """The instructions of the last stage (from its FROM on)."""
    starts = [i for i, command in enumerate(commands) if command.cmd == "FROM"]
    return commands[starts[-1] :]


def dockerfile_env(commands: list[Any]) -> dict[str, str]:
    """The ENV values set in ``commands`` (later ones win)."""
    env: dict[str, str] = {}
    for command in commands:
        if command.cmd == "ENV":
            pairs = command.value
            env.update(zip(pairs[::2], pairs[1::2], strict=True))
    return env


def build_context_includes(path: str) -> bool:
    """Whether ``.dockerignore`` lets ``path`` (relative to the repository) into the context.

    Docker's rules, as far as our ``.dockerignore`` uses them: patterns in order, the
    last match wins, ``!`` re-includes, a pattern matching a folder covers what is in
    it, and ``**`` matches any number of folders.
    """
    rules = []
    for raw in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            rules.append((line.startswith("!"), line.lstrip("!").rstrip("/")))
    parts = Path(path).parts
    included = True
    for negated, pattern in rules:
        prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
        if any(_pattern_matches(pattern, prefix) for prefix in prefixes):
            included = negated
    return included


def _pattern_matches(pattern: str, path: str) -> bool:
    if pattern.startswith("**/"):
        tail = pattern[3:]
        return any(
            fnmatch.fnmatchcase("/".join(path.split("/")[n:]), tail)
            for n in range(len(path.split("/")))
        )
    return fnmatch.fnmatchcase(path, pattern) and path.count("/") == pattern.count("/")


_VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def interpolate(text: str, values: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}`` with ``values``."""

    def replace(match: re.Match[str]) -> str:
        name, op = match["name"], match["op"]
        if values.get(name):
            return values[name]
        if op and op.endswith("-"):
            return str(match["arg"])
        raise KeyError(f"compose variable {name} has no value ({match['arg'] or 'unset'})")

    return _VARIABLE.sub(replace, text)


def compose_file(values: dict[str, str] | None = None) -> dict[str, Any]:
    """``deploy/compose.yaml`` loaded (anchors and merge keys resolved by PyYAML), with
    its ``${...}`` variables taken from ``values`` when given."""
    yaml = require_module("yaml", "PyYAML")
    text = (DEPLOY / "compose.yaml").read_text(encoding="utf-8")
    if values is not None:
        text = interpolate(text, values)
    loaded: dict[str, Any] = yaml.safe_load(text)
    return loaded


def k8s_documents(name: str) -> list[dict[str, Any]]:
    """The documents of ``deploy/k8s/NAME``."""
    yaml = require_module("yaml", "PyYAML")
    text = (DEPLOY / "k8s" / name).read_text(encoding="utf-8")
    return [doc for doc in yaml.safe_load_all(text) if doc]

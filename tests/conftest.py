"""Shared fixtures: a private PostgreSQL server per test session (per xdist worker).

Also the session's process check: every process the tests start carries
``PYTEST_DICOMNODE_SESSION=<this pytest process's id>`` in its environment, and when the
session ends none of them may still run (:func:`no_process_left_behind`).
"""

from __future__ import annotations

import gc
import itertools
import os
import re
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

from dicomnode.sockets import close_sockets_always
from tests.pg import PostgresServer, postgres_available

# The tests' own pynetdicom requestors (tests/nodeproc.wait_for_echo, tests/load.py) get
# the fix the node's both sides install: a refused or reset connect closes its socket
# instead of leaving it to a late finaliser (CI once failed a test for it).
close_sockets_always()

# Hypothesis profiles of tests/fuzz (docs/security.md, "Fuzzing"): "ci", the default, runs
# fixed examples within 60 s for all of tests/fuzz on 2 cores; HYPOTHESIS_PROFILE=long
# runs many fresh ones by hand. The tests hold each example to 1 s of CPU; the wall-clock
# deadline leaves room for a busy machine.
hypothesis_settings.register_profile(
    "ci", max_examples=150, deadline=2000, derandomize=True, database=None
)
hypothesis_settings.register_profile(
    "long", max_examples=5000, deadline=2000, database=None, print_blob=True
)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

#: Set to 1 (as CI does) to fail, not skip, PostgreSQL tests when no server can start.
REQUIRE_POSTGRES_ENV = "DICOMNODE_REQUIRE_POSTGRES"

_database_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A started PostgreSQL server on 127.0.0.1, stopped and deleted after the session."""
    reason = postgres_available()
    if reason is not None:
        if os.environ.get(REQUIRE_POSTGRES_ENV) == "1":
            pytest.fail(f"{REQUIRE_POSTGRES_ENV}=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    with PostgresServer() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer, request: pytest.FixtureRequest) -> str:
    """The SQLAlchemy URL of a fresh, empty database made for this test alone."""
    # Readable in the server log; the counter keeps it unique (63-byte identifier limit).
    label = re.sub(r"[^a-z0-9]+", "_", request.node.name.lower()).strip("_")[:40]
    return postgres_server.create_database(f"t{next(_database_numbers)}_{label}")


#: Set to 1 (as CI does) to stop the run when a real peer the tests use is missing.
REQUIRE_TOOLS_ENV = "DICOMNODE_REQUIRE_TOOLS"
_TOOLS = (
    "storescu", "echoscu", "storescp", "dciodvfy", "sqlite3", "openssl", "chromium", "chromedriver",
    "DicomSRValidator",
)  # fmt: skip


#: Set to a value unique to each pytest process (each xdist worker) at session start;
#: every process the tests start inherits it, so a leftover one can be told apart from
#: anything else on the machine. Not ``DICOMNODE_``: tests/nodeproc.py drops those.
SESSION_ENV = "PYTEST_DICOMNODE_SESSION"
#: How long a process the tests started may take to exit after the last test.
LEFTOVER_GRACE_S = 3.0


def processes_marked(session: str) -> dict[int, str]:
    """Running processes started with ``SESSION_ENV=session``: pid -> command line.

    ``/proc/PID/environ`` is the environment a process was started with, so this finds
    every process the session started and their children, wherever they are now (an
    orphan has init as its parent). A zombie's environ reads empty: it is not found.
    """
    marker = f"{SESSION_ENV}={session}".encode()
    found = {}
    for environ in Path("/proc").glob("[0-9]*/environ"):
        pid = int(environ.parent.name)
        try:
            if pid == os.getpid() or marker not in environ.read_bytes().split(b"\0"):
                continue
            cmdline = (environ.parent / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:  # gone while we looked, or not ours to read
            continue
        found[pid] = cmdline.decode(errors="replace").strip()
    return found


def pytest_sessionstart(session: pytest.Session) -> None:
    """Mark this session's processes; with DICOMNODE_REQUIRE_TOOLS=1 require the tools."""
    import shutil

    # One value per pytest process: under xdist each worker checks its own processes.
    os.environ[SESSION_ENV] = uuid.uuid4().hex
    if os.environ.get(REQUIRE_TOOLS_ENV) != "1":
        return
    missing = [tool for tool in _TOOLS if shutil.which(tool) is None]
    if missing:
        raise pytest.UsageError(f"{REQUIRE_TOOLS_ENV}=1 but not installed: {', '.join(missing)}")


@pytest.fixture(autouse=True)
def collect_garbage_after_each_test() -> Iterator[None]:
    """Collect garbage as each test ends, so a leak is blamed on the test that made it.

    A socket or file left in a reference cycle (an exception's traceback holds the
    frame that opened it) is only finalised by the cycle collector, at whatever moment
    it next runs: its ResourceWarning, an error under ``filterwarnings = error``, then
    fails an unrelated test (CI once failed ``test_retry_queues_a_dead_job_again`` for
    a socket a hostile-peer test had left).
    """
    yield
    gc.collect()


@pytest.fixture(scope="session", autouse=True)
def no_process_left_behind() -> Iterator[None]:
    """Fail the run when a process the tests started outlives them (then kill it).

    Set up before, so torn down after, every other session fixture (PostgreSQL,
    peers): whatever still carries this session's mark a few seconds later was left
    behind, such as a node's child that never noticed its node die.
    """
    yield
    session = os.environ[SESSION_ENV]
    deadline = time.monotonic() + LEFTOVER_GRACE_S
    while (left := processes_marked(session)) and time.monotonic() < deadline:
        time.sleep(0.1)
    if not left:
        return
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
    listing = "\n".join(f"  pid {pid}: {cmdline[:300]}" for pid, cmdline in left.items())
    pytest.fail(
        f"{len(left)} process(es) the tests started still ran {LEFTOVER_GRACE_S:g} s after "
        f"the last test (now killed):\n{listing}",
        pytrace=False,
    )

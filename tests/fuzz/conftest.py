"""The node the network fuzz tests attack: ``dicomnode run`` as a user starts it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fuzz.support import node_settings, wait_for_receivers
from tests.nodeproc import NodeProcess


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """One node per module: 2 receiving processes, 1 s network and request timeouts."""
    with NodeProcess(tmp_path_factory.mktemp("fuzz_node"), **node_settings()) as running:
        wait_for_receivers(running, 2)
        yield running

"""dicomnode.metrics: label values kept bounded, and imported only once shared."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from dicomnode import metrics


@pytest.fixture
def fresh_labels() -> Iterator[None]:
    # The set of labelled titles is this process's; leave it as it was found.
    saved = dict(metrics._calling_aes)
    metrics._calling_aes.clear()
    yield
    metrics._calling_aes.clear()
    metrics._calling_aes.update(saved)


def test_calling_ae_titles_beyond_the_cap_share_one_label(fresh_labels: None) -> None:
    titles = [f"AE{i}" for i in range(metrics.MAX_CALLING_AE_LABELS)]
    assert [metrics.calling_ae_label(t) for t in titles] == titles

    assert metrics.calling_ae_label("ONE_TOO_MANY") == metrics.OTHER_CALLING_AE
    assert metrics.calling_ae_label("AE7") == "AE7"  # one seen before keeps its label


def test_a_calling_ae_label_is_stripped_and_escapes_control_characters(
    fresh_labels: None,
) -> None:
    assert metrics.calling_ae_label("CT1   ") == "CT1"
    assert metrics.calling_ae_label("CT\x1b[2J\n") == "CT\\x1b[2J"


def test_the_command_line_leaves_prometheus_client_unimported() -> None:
    # The serving process must choose PROMETHEUS_MULTIPROC_DIR before prometheus_client
    # is imported (it reads the variable once): neither the command line nor what
    # ``python -m dicomnode`` imports first (the supervisor's lifeline) may import it.
    code = (
        "import sys, dicomnode.worker.supervisor, dicomnode.cli, dicomnode.cli.serving; "
        "print('prometheus_client' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert done.stdout.strip() == "False"

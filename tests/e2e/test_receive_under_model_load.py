"""Receiving never stalls while the CT model runs beside it (issue 10).

Once, eight CT studies sent back to back while ``ct-lesion-seg`` ran on the first
ones left the sixth association without a C-STORE response for 30 s, until the
sender's DIMSE timeout aborted it. This sends studies the same way (one association
each, a 30 s sender timeout) to ``dicomnode run`` as users start it, and checks that
the worker really ran inference while later studies were still arriving.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.load import CT_PIPELINE, make_studies, send_study, slow_stores
from tests.nodeproc import NodeProcess

STUDIES, SLICES, ROUNDS = 4, 60, 2

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _first(log: str, action: str) -> int:
    """Line number of the first record with ``action`` (-1 when there is none)."""
    for number, line in enumerate(log.splitlines()):
        if f"action={action}" in line:
            return number
    return -1


def _last(log: str, action: str) -> int:
    lines = log.splitlines()
    for number in range(len(lines) - 1, -1, -1):
        if f"action={action}" in lines[number]:
            return number
    return -1


def test_every_store_is_answered_while_the_ct_model_runs_beside_receiving(
    tmp_path: Path,
) -> None:
    studies = make_studies(STUDIES, SLICES)
    node = NodeProcess(tmp_path, study_quiet_seconds=1, extra_toml=CT_PIPELINE.format(workers=1))
    with node:
        sent = [
            send_study(node.port, study, round_number)
            for round_number in range(ROUNDS)
            for study in studies
        ]
        # One result is enough to show the pipeline worked; the rest may still run
        # (a stopping node releases them).
        deadline = time.monotonic() + 300
        while "action=job_done" not in node.log_text():
            assert time.monotonic() < deadline, "no job of the pipeline finished"
            time.sleep(0.5)
        log = node.log_text()
    assert [s for s in sent if s.refused or s.aborted or s.failures] == []
    assert sum(len(s.times) for s in sent) == STUDIES * SLICES * ROUNDS
    # The load was real: inference had started before the last instance arrived.
    assert 0 <= _first(log, "job_started") < _last(log, "instance_stored")
    # No store came near the sender's timeout: each over 1 s says why, and none
    # reached the 20 s after which the node answers 0xA700 instead.
    assert [line for seconds, line in slow_stores(log) if seconds >= 20] == []

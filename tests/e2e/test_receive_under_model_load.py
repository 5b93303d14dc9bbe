"""Receiving never stalls while the CT model runs beside it (issue 10).

Once, eight CT studies sent back to back while ``ct-lesion-seg`` ran on the first
ones left the sixth association without a C-STORE response for 30 s, until the
sender's DIMSE timeout aborted it (a pynetdicom requestor race, it turned out:
``dicomnode/send/_requestor.py``). This sends studies the same way (one association
each, a 30 s sender timeout, the guarded requestor) to ``dicomnode run`` as users start
it, keeps sending until the worker runs inference beside receiving, and checks every
C-STORE was answered with success.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.load import CT_PIPELINE, make_studies, send_study, slow_stores
from tests.nodeproc import NodeProcess

STUDIES, SLICES = 4, 60
#: Studies sent after inference has begun, and the most sent in all (a bound, so a
#: pipeline that never starts fails the test instead of sending forever).
AFTER_INFERENCE_BEGAN, MOST = 4, 24

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _wait_for(node: NodeProcess, record: str, count: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while node.log_text().count(record) < count:
        assert time.monotonic() < deadline, f"no {record} within {timeout} s"
        time.sleep(0.5)


def test_every_store_is_answered_while_the_ct_model_runs_beside_receiving(
    tmp_path: Path,
) -> None:
    studies = make_studies(STUDIES, SLICES)
    node = NodeProcess(tmp_path, study_quiet_seconds=1, extra_toml=CT_PIPELINE.format(workers=1))
    with node:
        # Warm up: the worker loads torch and the model at its first job.
        sent = [send_study(node.port, studies[0], 0)]
        _wait_for(node, "action=job_done", 1)
        # Then studies back to back, on until inference has run beside receiving for
        # a while: whatever the machine's speed, the two overlap.
        while len(sent) < MOST:
            sent.append(send_study(node.port, studies[len(sent) % STUDIES], len(sent)))
            if node.log_text().count("action=job_started") > 1:
                break
        for _ in range(AFTER_INFERENCE_BEGAN):
            sent.append(send_study(node.port, studies[len(sent) % STUDIES], len(sent)))
        log = node.log_text()
    assert [s for s in sent if s.refused or s.aborted or s.failures] == []
    assert sum(len(s.times) for s in sent) == len(sent) * SLICES
    assert len(sent) < MOST + AFTER_INFERENCE_BEGAN, "the pipeline never started a second job"
    # The load was real: a job of the burst ran while instances kept arriving.
    assert log.count("action=job_started") >= 2
    # No store came near the sender's timeout: each over 1 s says why, and none
    # reached the 20 s after which the node answers 0xA700 instead.
    assert [line for seconds, line in slow_stores(log) if seconds >= 20] == []

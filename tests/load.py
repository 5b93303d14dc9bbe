"""Receiving under model load: CT studies sent back to back while a model runs.

The scenario that once left an association without a C-STORE response for 30 s
(issue 10): CT studies, one association each, sent one after the other to
``dicomnode run`` with a ``ct-lesion-seg`` pipeline, so the scheduler marks studies
stable and the worker runs inference while later studies are still arriving. Shared
by the slow test ``tests/e2e/test_receive_under_model_load.py`` and the benchmark
``bench/stress_ingest.py``; each C-STORE is timed from request to response by a
pynetdicom SCU whose DIMSE timeout (30 s) is the one the stalled sender had.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from dicomnode.send._requestor import guard_responses
from dicomnode.synth.ct import build_ct_series
from dicomnode.uids import derive_uid

__all__ = [
    "CT_PIPELINE",
    "SENDER_TIMEOUT_S",
    "SentStudy",
    "make_studies",
    "send_study",
    "slow_stores",
]

#: The DIMSE, ACSE and network timeouts of the sender: pynetdicom's and DCMTK's usual 30 s.
SENDER_TIMEOUT_S = 30
#: Settings that run ``ct-lesion-seg`` on every CT study, with ``{workers}`` workers.
CT_PIPELINE = (
    "[worker]\ncount = {workers}\n"
    '[[pipelines]]\nname = "stress"\nmatch = {{ Modality = "CT" }}\nmodel = "ct-lesion-seg"\n'
)


@dataclass
class SentStudy:
    """How one association carrying one study went."""

    refused: bool = False
    aborted: bool = False
    #: C-STOREs answered with a status other than success (or not answered at all).
    failures: int = 0
    #: Seconds from each C-STORE request to its response.
    times: list[float] = field(default_factory=list)


def make_studies(count: int, slices: int, size: int = 256) -> list[list[Dataset]]:
    """``count`` synthetic CT studies of ``slices`` ``size``² slices (built once)."""
    studies = []
    for number in range(count):
        uid = derive_uid("stress-study", str(number))
        series = build_ct_series(
            slices=slices, rows=size, columns=size, seed=number,
            study_instance_uid=uid, patient_id=f"STRESS{number:04d}",
        )  # fmt: skip
        studies.append(list(series))
    return studies


def send_study(
    port: int, study: list[Dataset], round_number: int, guarded: bool = True
) -> SentStudy:
    """One association carrying ``study``, as a new study in each round.

    ``guarded``: with the requestor fix the node's own SCU uses
    (``dicomnode/send/_requestor.py``); without it, pynetdicom's requestor now and
    then loses a response under load and aborts after its 30 s DIMSE timeout.
    """
    ae = AE(ae_title="STRESSSCU")
    ae.add_requested_context(CTImageStorage)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = SENDER_TIMEOUT_S
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMNODE")
    if not assoc.is_established:
        return SentStudy(refused=True)
    if guarded:
        guard_responses(assoc)
    sent = SentStudy()
    for ds in study:
        ds = ds.copy()
        # Fresh UIDs per round: every round is new studies, each a job of its own
        # (the same positions again in one series would not make a volume).
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            setattr(ds, keyword, derive_uid("stress", str(round_number), ds[keyword].value))
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        started = time.monotonic()
        status = assoc.send_c_store(ds)
        sent.times.append(time.monotonic() - started)
        if not assoc.is_established:
            break
        if status is None or getattr(status, "Status", 0xFFFF) != 0:
            sent.failures += 1
    sent.aborted = not assoc.is_established
    if not sent.aborted:
        assoc.release()
    return sent


_SECONDS = re.compile(r"\bseconds=([0-9.]+)")


def slow_stores(log_text: str) -> list[tuple[float, str]]:
    """The node's ``store_slow`` records: (seconds, the whole record), slowest first."""
    found = []
    for line in log_text.splitlines():
        if "action=store_slow" in line and (match := _SECONDS.search(line)):
            found.append((float(match.group(1)), line))
    return sorted(found, reverse=True)

"""The node beside Orthanc as its PACS: settings and what to read back from Orthanc."""

from __future__ import annotations

import time

from tests.nodeproc import NodeProcess
from tests.orthanc import OrthancServer

__all__ = ["node_settings", "series_files", "wait_for_series"]


def node_settings(orthanc_port: int, model: str, accepts: str = '["seg", "sr"]') -> str:
    return (
        "[worker]\ncount = 1\n"
        "[send]\nretry_backoff_seconds = 0.3\nmax_backoff_seconds = 1.5\n"
        f'[[peers]]\nname = "pacs"\nae_title = "ORTHANC"\nhost = "127.0.0.1"\n'
        f"port = {orthanc_port}\naccepts = {accepts}\n"
        f'[[pipelines]]\nname = "results"\nmatch = {{ Modality = "CT" }}\nmodel = "{model}"\n'
        'send_to = ["pacs"]\n'
    )


def wait_for_series(orthanc: OrthancServer, study: str, count: int, node: NodeProcess) -> None:
    deadline = time.monotonic() + 90
    while len(orthanc.study_series(study)) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"results did not arrive:\n{node.log_text()[-4000:]}")
        time.sleep(0.3)


def series_files(orthanc: OrthancServer, study: str) -> dict[str, list[bytes]]:
    """Modality -> the files of that study's series in Orthanc."""
    out: dict[str, list[bytes]] = {}
    for series in orthanc.study_series(study):
        modality = series["MainDicomTags"]["Modality"]
        out.setdefault(modality, []).extend(orthanc.instance_file(i) for i in series["Instances"])
    return out

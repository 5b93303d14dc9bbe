"""A full data disk never kills a process through its shared metrics files.

prometheus-client writes values through memory maps of sparse files: a page first
touched on a full disk raises SIGBUS. ``dicomnode.metrics`` allocates its files' room
as the process starts, so counting goes on when the disk fills, as receiving does.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.tmpfs import mounted_tmpfs

#: Count 100 new label sets once the disk is full; print how the process fared.
COUNT_ON_A_FULL_DISK = """
import os, sys
folder = sys.argv[1]
os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
if sys.argv[2] == "dicomnode":
    from dicomnode.metrics import INSTANCES_RECEIVED
else:  # prometheus-client alone, as it maps its files
    from prometheus_client import Counter
    INSTANCES_RECEIVED = Counter("x", "a help text " * 8, ["calling_ae", "outcome"])
INSTANCES_RECEIVED.labels("FIRST", "stored").inc()
room = os.statvfs(folder)
with open(os.path.join(folder, "filler"), "wb") as filler:
    filler.write(bytes(room.f_bavail * room.f_frsize))
for i in range(100):
    INSTANCES_RECEIVED.labels(f"AE{i}", "refused").inc()
print("counted", os.environ.get("PROMETHEUS_MULTIPROC_DIR") == folder)
"""


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path / "disk", "2m") as mount:
        yield mount


def count(folder: Path, which: str) -> subprocess.CompletedProcess[str]:
    for path in folder.iterdir():
        path.unlink()
    return subprocess.run(
        [sys.executable, "-c", COUNT_ON_A_FULL_DISK, str(folder), which],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip


def test_counting_goes_on_when_the_disk_fills(full_disk: Path) -> None:
    # Without the reservation the process dies (the hazard is real here) ...
    assert count(full_disk, "prometheus_client").returncode == -7  # SIGBUS

    done = count(full_disk, "dicomnode")

    # ... with it, every count lands and the process still shares its metrics.
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "counted True"


def test_a_process_without_room_keeps_its_metrics_to_itself(full_disk: Path) -> None:
    (full_disk / "filler").write_bytes(bytes(shutil.disk_usage(full_disk).free))
    code = (
        "import os, sys; os.environ['PROMETHEUS_MULTIPROC_DIR'] = sys.argv[1]; "
        "import dicomnode.metrics as m; m.INSTANCES_RECEIVED.labels('A', 'stored').inc(); "
        "print(os.environ.get('PROMETHEUS_MULTIPROC_DIR'))"
    )

    done = subprocess.run(
        [sys.executable, "-c", code, str(full_disk)],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "None"  # counted in memory, not in the full folder

"""``dicomnode`` that dies (exit 137) after renaming an instance into place, before
its index row is committed: the crash the start-up reconcile pass repairs.

A fault-injection wrapper for tests only: the shipped code has no such hook. Run as
``python tests/crashing_node.py --config FILE serve``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dicomnode.receive import ingest


def _crash(*_: Any, **__: Any) -> None:
    # Called by the writer after the renames and before the commit.
    os._exit(137)


ingest.record_instances = _crash  # type: ignore[assignment]

from dicomnode.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.argv[0] = "dicomnode"
    main()

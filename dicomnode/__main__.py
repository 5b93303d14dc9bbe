"""``python -m dicomnode`` runs the command line."""

from __future__ import annotations

if __name__ == "__main__":
    # First, before the command line's imports: a process the node started dies with
    # the node, even when the node dies while this one is still starting.
    from dicomnode.worker.supervisor import arm_lifeline

    arm_lifeline()

    from dicomnode.cli import main

    main()

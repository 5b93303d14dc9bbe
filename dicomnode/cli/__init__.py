"""The ``dicomnode`` command line; the one place that wires the stages together.

Commands stay thin: each reads its options and the settings, then calls a stage. They
are grouped by area:

- :mod:`~dicomnode.cli.serving`: ``run``, ``serve``, ``worker``, ``db upgrade`` (and the
  hidden ``receive`` the node starts), the only commands that migrate the index;
- :mod:`~dicomnode.cli.network`: ``echo``, ``send``;
- :mod:`~dicomnode.cli.records`: ``studies``, ``jobs``, ``deliveries``;
- :mod:`~dicomnode.cli.models`: ``models``, ``train``, ``evaluate``, ``demo-data``;
- :mod:`~dicomnode.cli.rules`: ``rules test``.

:mod:`~dicomnode.cli.app` holds the root group and what commands share (settings,
logging, tables, the index); :mod:`~dicomnode.cli.process` the process control of
the long-running commands (signals, the node's lifeline, draining associations).
"""

from __future__ import annotations

from dicomnode.cli.app import cli
from dicomnode.cli.models import demo_data, evaluate, models, train
from dicomnode.cli.network import echo, send
from dicomnode.cli.records import deliveries, jobs, studies
from dicomnode.cli.rules import rules
from dicomnode.cli.serving import db, receive, run, serve, worker

__all__ = ["cli", "main"]

for _command in (
    run, serve, receive, worker, db, echo, send, studies, jobs, deliveries, models, train,
    evaluate, demo_data, rules,
):  # fmt: skip
    cli.add_command(_command)


def main() -> None:
    """Entry point of the ``dicomnode`` command."""
    cli(obj={})

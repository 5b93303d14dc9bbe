"""Keep child processes running beside the serving process: workers and receivers.

Each child is ``python -m dicomnode --config FILE <role> --supervised`` (role
``worker`` or ``receive``), so it shares nothing with the serving process but the
settings file, the environment, the database and the data folder, exactly as a worker
on another machine would. A child that exits is started again (after a short backoff
when it keeps dying); supervised children stop by themselves if the serving process
dies.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

__all__ = ["Supervisor"]

logger = logging.getLogger(__name__)


class Supervisor:
    """Start, watch and stop child processes, one per role in ``roles``."""

    def __init__(self, roles: list[str], config: Path | None, log_args: list[str]) -> None:
        self.roles = roles
        self.config = config
        self.log_args = log_args
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * len(roles)
        self.restarts = [0] * len(roles)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="supervisor", daemon=True)

    def _command(self, role: str) -> list[str]:
        command = [sys.executable, "-m", "dicomnode", *self.log_args]
        if self.config is not None:
            command += ["--config", str(self.config)]
        return [*command, role, "--supervised"]

    def _spawn(self, slot: int) -> None:
        role = self.roles[slot]
        proc = subprocess.Popen(self._command(role))
        self.procs[slot] = proc
        logger.info(
            f"{role} process started",
            extra={"action": f"{role}_spawned", "slot": slot, "pid": proc.pid},
        )

    def start(self) -> None:
        """Start every child and the watcher thread."""
        for slot in range(len(self.roles)):
            self._spawn(slot)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            for slot, proc in enumerate(self.procs):
                if proc is None or proc.poll() is None:
                    continue
                self.restarts[slot] += 1
                logger.warning(
                    f"{self.roles[slot]} process exited; restarting",
                    extra={"action": f"{self.roles[slot]}_restarted", "slot": slot, "pid": proc.pid,
                           "returncode": proc.returncode, "restarts": self.restarts[slot]},
                )  # fmt: skip
                # Back off when a worker keeps dying at start (bad model, no database).
                if self._stop.wait(min(30.0, 0.5 * self.restarts[slot])):
                    return
                self._spawn(slot)

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM every child (they finish or release their work) and wait."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            if proc is None:
                continue
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

"""Keep child processes running beside the serving process: workers and receivers.

Each child is ``python -m dicomnode --config FILE <role> --supervised`` (role
``worker`` or ``receive``), so it shares nothing with the serving process but the
settings file, the environment, the database and the data folder, exactly as a worker
on another machine would. A child that exits is started again (after a short backoff
when it keeps dying).

No child outlives its node. The node holds the only write end of a pipe, its
*lifeline*, and hands every child the read end (``pass_fds``) and its own pid in
:data:`LIFELINE_ENV`. The kernel closes the write end when the node dies, however it
dies, so the child's read end reaches end-of-file. A child calls :func:`arm_lifeline`
before anything else (``python -m dicomnode`` does it before importing the command
line): it asks the kernel for SIGTERM when its parent dies (``PR_SET_PDEATHSIG``) and
*then* checks that the node is still there, exiting at once if not, so a node killed
while the child was starting is never missed. Later a :class:`Lifeline` thread sees
the end-of-file and stops the child.

Workers run :data:`WORKER_NICENESS` steps nicer than the node, so loading or running a
model never takes the CPU from receiving and scheduling.

Every child also gets a log channel into the node's log file (:mod:`dicomnode.log`,
:data:`~dicomnode.log.LOG_CHANNEL_ENV`) and a role its records carry there:
``receiver-2`` ... ``receiver-N`` for the extra receiving processes (the node itself is
the first), ``worker-1`` ... for the workers. A restarted child keeps its slot's role.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "EXIT_NODE_GONE",
    "LIFELINE_ENV",
    "WORKER_NICENESS",
    "Lifeline",
    "Supervisor",
    "arm_lifeline",
    "die_with_node",
]

logger = logging.getLogger(__name__)

#: ``"<node pid>:<read end of the lifeline pipe>:<niceness or empty>"``, set by the node
#: for each child it starts.
LIFELINE_ENV = "DICOMNODE_LIFELINE"
#: How much nicer than the node (os.nice steps) a supervised worker runs.
WORKER_NICENESS = 10
#: The exit status of a child that found its node gone.
EXIT_NODE_GONE = 75
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_GONE = select.POLLHUP | select.POLLERR | select.POLLNVAL


def die_with_node(node_pid: int) -> None:
    """Have the kernel SIGTERM this process when its parent dies; exit now if it has.

    Linux only (``PR_SET_PDEATHSIG``); elsewhere only the check is made. The kernel
    means the parent *thread*: a child started by the supervisor's watcher thread is
    signalled when that thread ends, which it does only in :meth:`Supervisor.stop`,
    just before the children are sent SIGTERM anyway. A dying node's threads hand their
    children on to each other as they end, so the signal may come more than once.

    Parameters
    ----------
    node_pid
        The pid our parent had when it started us; any other parent means it died.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        except (OSError, AttributeError):  # pragma: no cover - a libc without prctl
            pass
    # Only now look: had the node died before the line above, we would never be told.
    if os.getppid() != node_pid:
        _exit_node_gone()


def _exit_node_gone() -> None:
    os.write(2, b"dicomnode: the node is gone; this process it started exits\n")
    os._exit(EXIT_NODE_GONE)


@dataclass(frozen=True)
class Lifeline:
    """A supervised child's link to its node.

    Parameters
    ----------
    node_pid
        The node's process id (our parent).
    fd
        The read end of the node's lifeline pipe; it reaches end-of-file when the
        node has died.
    niceness
        The nice value to run at, or ``None`` to keep the node's.
    """

    node_pid: int
    fd: int
    niceness: int | None = None

    @classmethod
    def from_environment(cls) -> Lifeline | None:
        """The lifeline the node put in :data:`LIFELINE_ENV`, or ``None`` if none."""
        value = os.environ.get(LIFELINE_ENV)
        if not value:
            return None
        try:
            pid, fd, niceness = value.split(":")
            return cls(int(pid), int(fd), int(niceness) if niceness else None)
        except ValueError:
            raise SystemExit(f"dicomnode: bad {LIFELINE_ENV}={value!r}") from None

    def to_environment(self) -> str:
        """The value of :data:`LIFELINE_ENV` that describes this lifeline."""
        niceness = "" if self.niceness is None else str(self.niceness)
        return f"{self.node_pid}:{self.fd}:{niceness}"

    def arm(self) -> None:
        """Die with the node from now on; exit at once if it is gone already.

        Call it first thing, before threads start: the order (arm, then look) leaves
        no moment in which the node can die unnoticed, and a nice value set here is
        inherited by every thread started later (Linux keeps one per thread).
        """
        die_with_node(self.node_pid)
        if self.niceness is not None and os.getpriority(os.PRIO_PROCESS, 0) < self.niceness:
            os.setpriority(os.PRIO_PROCESS, 0, self.niceness)
        if not self.node_alive():
            _exit_node_gone()

    def node_alive(self) -> bool:
        """Whether the node still runs: still our parent and the pipe not at end-of-file."""
        if os.getppid() != self.node_pid:
            return False
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        return not poller.poll(0)  # nobody writes: any event means the writer is gone

    def watch(self, on_gone: Callable[[], None], exit_after: float) -> None:
        """Call ``on_gone`` when the node dies; end the process ``exit_after`` s later.

        ``on_gone`` starts the child's orderly stop; the deadline makes sure the
        child ends even if that stop hangs.
        """
        os.environ.pop(LIFELINE_ENV, None)  # not for anything this process starts
        os.set_inheritable(self.fd, False)

        def _wait() -> None:
            poller = select.poll()
            poller.register(self.fd, select.POLLIN)
            while not any(events & _GONE for _, events in poller.poll()):
                os.read(self.fd, 4096)  # nobody writes; never mind if somebody did
            logger.warning(
                "node gone; stopping",
                extra={"action": "orphan_stopping", "node_pid": self.node_pid},
            )
            on_gone()
            time.sleep(exit_after)
            logger.error(
                "node gone and still not stopped; exiting",
                extra={"action": "orphan_exiting", "after_s": exit_after},
            )
            logging.shutdown()
            os._exit(EXIT_NODE_GONE)

        threading.Thread(target=_wait, name="lifeline", daemon=True).start()


def arm_lifeline() -> Lifeline | None:
    """In a supervised child: die with the node, exit now if it is gone; else no-op.

    Returns the lifeline, or ``None`` when this process was not started by a node.
    """
    lifeline = Lifeline.from_environment()
    if lifeline is not None:
        lifeline.arm()
    return lifeline


class Supervisor:
    """Start, watch and stop child processes, one per role in ``roles``.

    Parameters
    ----------
    roles
        ``"receive"`` or ``"worker"`` per child.
    config
        The settings file the children load (``None``: their default).
    log_args
        Logging options for the children's command lines.
    worker_niceness
        How much nicer than this process workers run (0 keeps them level).
    """

    def __init__(
        self,
        roles: list[str],
        config: Path | None,
        log_args: list[str],
        worker_niceness: int = WORKER_NICENESS,
    ) -> None:
        self.roles = roles
        self.config = config
        self.log_args = log_args
        self.worker_niceness = worker_niceness
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * len(roles)
        self.restarts = [0] * len(roles)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="supervisor", daemon=True)
        # Only this process holds the write end (both ends are close-on-exec; each
        # child is passed the read end alone). Nothing is ever written to it.
        self._lifeline_read, self._lifeline_write = os.pipe()

    def _command(self, role: str) -> list[str]:
        command = [sys.executable, "-m", "dicomnode", *self.log_args]
        if self.config is not None:
            command += ["--config", str(self.config)]
        return [*command, role, "--supervised"]

    def _lifeline(self, role: str) -> Lifeline:
        niceness = None
        if role == "worker" and self.worker_niceness:
            niceness = min(19, os.getpriority(os.PRIO_PROCESS, 0) + self.worker_niceness)
        return Lifeline(os.getpid(), self._lifeline_read, niceness)

    def log_role(self, slot: int) -> str:
        """The role the records of the child in ``slot`` carry in the node's log."""
        role = self.roles[slot]
        number = self.roles[:slot].count(role) + 1
        # The node is the first receiving process: its extra ones count from 2.
        return f"receiver-{number + 1}" if role == "receive" else f"{role}-{number}"

    def _spawn(self, slot: int) -> None:
        # Imported here: `python -m dicomnode` imports this module before it arms the
        # lifeline, and that must stay quick.
        from dicomnode.log import LOG_CHANNEL_ENV, open_channel

        role = self.roles[slot]
        lifeline = self._lifeline(role)
        env = {**os.environ, LIFELINE_ENV: lifeline.to_environment()}
        fds = [lifeline.fd]
        channel = open_channel(self.log_role(slot))
        if channel is not None:
            env[LOG_CHANNEL_ENV] = channel.to_environment()
            fds.append(channel.child_fd)
        try:
            proc = subprocess.Popen(self._command(role), env=env, pass_fds=fds)
        except BaseException:
            if channel is not None:
                channel.close()
            raise
        if channel is not None:  # the child holds its end now; its exit closes the channel
            channel.close_child_end()
            channel.serve()
        self.procs[slot] = proc
        logger.info(
            f"{role} process started",
            extra={"action": f"{role}_spawned", "slot": slot, "pid": proc.pid,
                   "niceness": lifeline.niceness, "log_role": self.log_role(slot)},
        )  # fmt: skip

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
                _forget(proc.pid)
                logger.warning(
                    f"{self.roles[slot]} process exited; restarting",
                    extra={"action": f"{self.roles[slot]}_restarted", "slot": slot, "pid": proc.pid,
                           "returncode": proc.returncode, "restarts": self.restarts[slot]},
                )  # fmt: skip
                # Back off when a worker keeps dying at start (bad model, no database).
                if self._stop.wait(min(30.0, 0.5 * self.restarts[slot])):
                    return
                self._spawn(slot)

    def running(self, role: str) -> tuple[int, int]:
        """How many children of ``role`` run now, and how many there should be."""
        slots = [slot for slot, each in enumerate(self.roles) if each == role]
        alive = 0
        for slot in slots:
            proc = self.procs[slot]
            alive += proc is not None and proc.poll() is None
        return alive, len(slots)

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
            _forget(proc.pid)
        if self._lifeline_write >= 0:  # closing it tells any child still there
            os.close(self._lifeline_read)
            os.close(self._lifeline_write)
            self._lifeline_read = self._lifeline_write = -1


def _forget(pid: int) -> None:
    """Tell the metrics that a child has exited (imported here, not at the top: the
    node imports this module before it has chosen where its metrics are shared)."""
    from dicomnode.metrics import forget_process

    forget_process(pid)

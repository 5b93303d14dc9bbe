"""Render previews in a child process, so the serving process never loads numpy.

The serving process (receivers, index writer, scheduler, this web server) stays
small by never importing numpy (``dicomnode.cli.process``): decoding pixels and
drawing PNGs (:mod:`dicomnode.web.previews`) happens in ``python -m
dicomnode.web.render``, a child started on the first preview that is not cached,
kept for the next ones, and stopped after :data:`IDLE_SECONDS` without work (its
~60 MB are then given back). A cached preview never reaches it.

The protocol, one request at a time over the child's stdin and stdout: a JSON line
``{"op": "seg", "seg": PATH, "sources": [PATH, ...]}`` or ``{"op": "regions",
"sr": PATH, "images": [PATH, ...]}``; the answer is a JSON line ``{"png": N}``
followed by N bytes of PNG, or ``{"error": TEXT}`` in our words
(:func:`~dicomnode.log.describe_error`). A child that dies, or takes longer than
:data:`RENDER_TIMEOUT_S`, is killed; that request fails, the next starts a new one.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from dicomnode.errors import DicomnodeError
from dicomnode.log import describe_error

__all__ = ["IDLE_SECONDS", "RENDER_TIMEOUT_S", "RenderError", "Renderer", "main"]

logger = logging.getLogger(__name__)

#: A child without work for this long exits.
IDLE_SECONDS = 300.0
#: The longest one preview may take.
RENDER_TIMEOUT_S = 60.0


class RenderError(DicomnodeError):
    """A preview could not be rendered (the message is in our words)."""


class Renderer:
    """The client side: one child, started on demand, one request at a time."""

    def __init__(self, idle_seconds: float = IDLE_SECONDS) -> None:
        self.idle_seconds = idle_seconds
        self._lock = threading.Lock()
        self._child: subprocess.Popen[bytes] | None = None
        self._last_used = 0.0
        self._reaper: threading.Thread | None = None

    def seg(self, seg: Path, sources: list[Path]) -> bytes:
        """The PNG thumbnail of a SEG over its source slices."""
        return self._call({"op": "seg", "seg": str(seg), "sources": [str(p) for p in sources]})

    def regions(self, sr: Path, images: list[Path]) -> bytes:
        """The PNG of projection images with an SR's regions drawn on them."""
        return self._call({"op": "regions", "sr": str(sr), "images": [str(p) for p in images]})

    def _call(self, request: dict[str, Any]) -> bytes:
        with self._lock:
            child = self._running()
            assert child.stdin is not None and child.stdout is not None
            timer = threading.Timer(RENDER_TIMEOUT_S, child.kill)
            timer.start()
            try:
                child.stdin.write(json.dumps(request).encode() + b"\n")
                child.stdin.flush()
                answer = json.loads(child.stdout.readline() or b"{}")
                if "png" in answer:
                    png = _read_exactly(child.stdout, int(answer["png"]))
                    self._last_used = time.monotonic()
                    return png
            except (OSError, ValueError) as exc:
                answer = {"error": describe_error(exc)}
            finally:
                timer.cancel()
            if "error" not in answer or child.poll() is not None:
                self._stop_child()
                raise RenderError("the preview renderer stopped (killed after "
                                  f"{RENDER_TIMEOUT_S:.0f} s, or it died)")  # fmt: skip
            self._last_used = time.monotonic()
            raise RenderError(str(answer["error"]))

    def _running(self) -> subprocess.Popen[bytes]:
        if self._child is not None and self._child.poll() is None:
            return self._child
        self._child = subprocess.Popen(
            [sys.executable, "-m", "dicomnode.web.render"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None,
        )  # fmt: skip
        logger.info("preview renderer started",
                    extra={"action": "renderer_started", "pid": self._child.pid})  # fmt: skip
        self._last_used = time.monotonic()
        if self._reaper is None or not self._reaper.is_alive():
            self._reaper = threading.Thread(target=self._reap, name="renderer-idle", daemon=True)
            self._reaper.start()
        return self._child

    def _reap(self) -> None:
        """Stop the child once idle; end when there is none."""
        while True:
            time.sleep(min(5.0, self.idle_seconds))
            with self._lock:
                if self._child is None:
                    return
                if time.monotonic() - self._last_used >= self.idle_seconds:
                    self._stop_child()
                    return

    def _stop_child(self) -> None:
        child, self._child = self._child, None
        if child is None:
            return
        for stream in (child.stdin, child.stdout):
            if stream is not None:
                stream.close()
        try:
            child.wait(5)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        logger.info("preview renderer stopped",
                    extra={"action": "renderer_stopped", "pid": child.pid})  # fmt: skip

    def close(self) -> None:
        """Stop the child now (the web server is stopping)."""
        with self._lock:
            self._stop_child()


def _read_exactly(stream: IO[bytes], count: int) -> bytes:
    data = stream.read(count)
    if len(data) != count:
        raise OSError("the renderer's answer was cut short")
    return data


def _render(request: dict[str, Any]) -> bytes:
    from dicomnode.web.previews import projection_preview, seg_thumbnail, sr_findings

    if request.get("op") == "seg":
        return seg_thumbnail(Path(request["seg"]), [Path(p) for p in request["sources"]])
    if request.get("op") == "regions":
        regions = [r for row in sr_findings(Path(request["sr"])) for r in row.regions]
        return projection_preview([Path(p) for p in request["images"]], regions)
    raise ValueError(f"unknown operation {request.get('op')!r}")


def main() -> None:
    """The child: answer requests from stdin until it is closed."""
    out = sys.stdout.buffer
    for line in sys.stdin.buffer:
        try:
            png = _render(json.loads(line))
        except Exception as exc:  # every failure is answered, never a dead child
            out.write(json.dumps({"error": describe_error(exc)}).encode() + b"\n")
        else:
            out.write(json.dumps({"png": len(png)}).encode() + b"\n" + png)
        out.flush()


if __name__ == "__main__":
    main()

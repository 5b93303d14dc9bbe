"""Serve the web application in a daemon thread of the serving process.

uvicorn runs its own event loop in the thread; receiving runs in other threads and
processes, so a slow page never delays a C-STORE. The listening socket is bound when
the :class:`WebServer` is made, in the caller's thread, so a port that is taken
stops the node's start with one line naming ``[web] port``, as any bad setting does.
"""

from __future__ import annotations

import logging
import socket
import threading

import uvicorn
from fastapi import FastAPI

from dicomnode.errors import ConfigError

__all__ = ["WebServer"]

logger = logging.getLogger(__name__)

#: How long a stopping server lets requests in progress finish.
GRACEFUL_SHUTDOWN_S = 5.0


def _listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port``; raises ConfigError naming the key."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ConfigError(f"[web] host: cannot listen on {host!r}: {exc.strerror or exc}") from exc
    try:
        # As uvicorn does: a restarted node may bind while old connections linger.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"[web] port: cannot listen on {host}:{port}: {exc.strerror or exc}"
        ) from exc
    return sock  # not inheritable (PEP 446): the node's children never hold the port


class WebServer:
    """An ASGI application served by uvicorn in a daemon thread.

    Parameters
    ----------
    app
        The application (:func:`~dicomnode.web.app.create_app`).
    host, port
        Where to listen (``[web] host`` and ``port``); bound now.

    Raises
    ------
    ConfigError
        When the address cannot be listened on (taken, or not an address of this host).
    """

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        self.app = app
        self.socket = _listen(host, port)
        config = uvicorn.Config(
            app,
            log_config=None,  # the node's logging (cli) is the only one configured
            access_log=False,
            lifespan="off",
            loop="asyncio",
            http="h11",
            ws="none",
            server_header=False,
            timeout_graceful_shutdown=int(GRACEFUL_SHUTDOWN_S),
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, name="web", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        """The host and port listened on."""
        host, port = self.socket.getsockname()[:2]
        return str(host), int(port)

    def _serve(self) -> None:
        try:
            self._server.run(sockets=[self.socket])
        except Exception:  # the node goes on receiving; /readyz cannot answer any more
            logger.exception("web server failed", extra={"action": "web_failed"})

    def start(self) -> None:
        """Start serving in the thread."""
        self._thread.start()
        logger.info(
            "web server listening",
            extra={"action": "web_listening", "host": self.address[0], "port": self.address[1]},
        )

    def stop(self, timeout: float = GRACEFUL_SHUTDOWN_S + 5.0) -> None:
        """Stop serving, let requests in progress finish (bounded), free the port."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)
        self.socket.close()
        results = getattr(self.app.state, "results", None)
        if results is not None:  # the preview renderer's child process
            results.renderer.close()
        logger.info("web server stopped", extra={"action": "web_stopped"})

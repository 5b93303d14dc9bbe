"""A syslog collector for tests: RFC 5424 messages over TCP (RFC 6587 octet counting),
plain or TLS (RFC 5425), received in threads on 127.0.0.1 and parsed as they come."""

from __future__ import annotations

import socket
import ssl
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["SyslogCollector", "SyslogMessage", "parse_frames", "parse_message"]

BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class SyslogMessage:
    """One RFC 5424 message: its header fields and its MSG."""

    pri: int
    version: str
    timestamp: str
    hostname: str
    app_name: str
    procid: str
    msgid: str
    structured_data: str
    msg: bytes

    @property
    def audit(self) -> ET.Element:
        """The MSG as XML (after its UTF-8 BOM): the DICOM audit message."""
        assert self.msg.startswith(BOM), "MSG does not start with the UTF-8 BOM"
        return ET.fromstring(self.msg[len(BOM) :])

    @property
    def event_id(self) -> str:
        """The csd-code of the audit message's EventID."""
        found = self.audit.find("EventIdentification/EventID")
        assert found is not None
        return found.attrib["csd-code"]


def parse_message(data: bytes) -> SyslogMessage:
    """Split an RFC 5424 message into its fields (no structured data but ``-``)."""
    fields = data.split(b" ", 7)
    assert len(fields) == 8, f"not an RFC 5424 message: {data[:80]!r}"
    head = fields[0].decode("ascii")
    assert head.startswith("<") and ">" in head, f"no PRI: {head!r}"
    pri, version = head[1:].split(">", 1)
    timestamp, hostname, app_name, procid, msgid, sd = (f.decode("ascii") for f in fields[1:7])
    return SyslogMessage(int(pri), version, timestamp, hostname, app_name, procid, msgid, sd,
                         fields[7])  # fmt: skip


def parse_frames(stream: bytes) -> tuple[list[bytes], bytes]:
    """Octet-counted frames (``LEN SP MSG``) of ``stream``, and what is left over."""
    frames = []
    while b" " in stream:
        length_text, rest = stream.split(b" ", 1)
        assert length_text.isdigit(), f"not an octet count: {length_text[:20]!r}"
        length = int(length_text)
        if len(rest) < length:
            break
        frames.append(rest[:length])
        stream = rest[length:]
    return frames, stream


class SyslogCollector:
    """A collector listening on 127.0.0.1:``port`` (0: a free one) until stopped."""

    def __init__(self, port: int = 0, tls: ssl.SSLContext | None = None) -> None:
        self.port = port
        self.tls = tls
        self.messages: list[SyslogMessage] = []
        self.connections = 0
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()

    def start(self) -> SyslogCollector:
        """Bind, listen and accept in a thread; returns once bound."""
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen()
        listener.settimeout(0.1)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._stopping.clear()
        self._spawn(self._accept)
        return self

    def stop(self) -> None:
        """Stop accepting, let open connections finish, and close everything."""
        self._stopping.set()
        for thread in self._threads:
            thread.join(10)
        self._threads.clear()
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def __enter__(self) -> SyslogCollector:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._spawn(self._serve, conn)

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            with self._lock:
                self.connections += 1
            stream = b""
            while chunk := conn.recv(65536):
                frames, stream = parse_frames(stream + chunk)
                parsed = [parse_message(frame) for frame in frames]
                with self._lock:
                    self.messages.extend(parsed)
            assert stream == b"", f"a frame was cut off: {stream[:80]!r}"
        except (OSError, ssl.SSLError):
            pass  # a client that failed its handshake, or went away
        finally:
            conn.close()

    def received(self) -> list[SyslogMessage]:
        """The messages parsed so far, in arrival order."""
        with self._lock:
            return list(self.messages)

    def wait_for(
        self, done: Callable[[list[SyslogMessage]], bool], timeout: float = 30
    ) -> list[SyslogMessage]:
        """Wait until ``done(messages)``; the messages then. Fails after ``timeout``."""
        deadline = time.monotonic() + timeout
        while not done(messages := self.received()):
            assert time.monotonic() < deadline, (
                f"collector got {[m.event_id for m in messages]} in {timeout} s"
            )
            time.sleep(0.05)
        return messages

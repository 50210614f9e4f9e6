"""A raw TCP peer for proxy tests: it accepts on 127.0.0.1 and lets a test-supplied function play each
connection (answer garbage, reset, never answer, ...), where a well-behaved server could not."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from collections.abc import Callable

#: the start of Envoy's (and the agent's) body for a reply to an upstream failure before response headers
RESET_PREFIX = b"upstream connect error or disconnect/reset before headers. reset reason: "
#: the end of a chunked message: the last chunk with its trailer lines (group 1)
CHUNKED_END = re.compile(rb"\r\n0\r\n((?:[^\r\n]+\r\n)*)\r\n$")


def recv_until(conn: socket.socket, done: Callable[[bytes], bool]) -> bytes:
    """Read from `conn` until `done(what was read)` or the peer closes."""
    data = b""
    while not done(data):
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


class RawPeer:
    """A TCP listener on 127.0.0.1 that handles each connection with `behave(sock)` in a thread."""

    def __init__(self, behave: Callable[[socket.socket], None]) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.behave = behave
        self.stopped = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError), conn:
            self.behave(conn)

    def close(self) -> None:
        self.stopped.set()
        self.sock.close()


class TrailerPeer(RawPeer):
    """Reads chunked requests (keep-alive), records each raw request, answers with a chunked body + trailer."""

    RESPONSE = (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-resp-trailer\r\n\r\n"
        b"5\r\nhello\r\n0\r\nx-resp-trailer: yes\r\n\r\n"
    )

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        super().__init__(self._serve_chunked)

    def _serve_chunked(self, conn: socket.socket) -> None:
        while True:
            raw = recv_until(conn, lambda d: CHUNKED_END.search(d) is not None)
            if not raw:
                return
            self.requests.append(raw)
            conn.sendall(self.RESPONSE)

"""A raw TCP peer for proxy tests: it accepts on 127.0.0.1 and lets a test-supplied function play each
connection (answer garbage, reset, never answer, ...), where a well-behaved server could not."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable

#: the start of Envoy's (and the agent's) body for a reply to an upstream failure before response headers
RESET_PREFIX = b"upstream connect error or disconnect/reset before headers. reset reason: "


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

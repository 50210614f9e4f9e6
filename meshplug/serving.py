"""A stdlib HTTP server on its own daemon thread (the operator's module server and metrics endpoint)."""

from __future__ import annotations

import http.server
import threading
from typing import Self


class ServerThread:
    """Runs `server` on a daemon thread named `name` between `start()` and `stop()` (or as a context manager)."""

    def __init__(self, server: http.server.HTTPServer, *, name: str, poll_interval: float) -> None:
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": poll_interval}, name=name, daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""Stdlib HTTP servers on their own daemon threads (the operator's module server, metrics and standby liveness).

`BoundedServer` and `BoundedHandler` bound what a client can hold, as the agent's control ports do
(`meshplug.agent.admin`): connections served at once (more are closed at accept), each request head's bytes
(`limits.MAX_CONTROL_HEAD_BYTES`: 431; the stdlib alone reads 100 header lines of 64 KiB each, ~6.5 MB a
connection) and the time to deliver it (`limits.CONTROL_REQUEST_TIMEOUT_S` from when the connection waits for it:
then it is closed, however slowly bytes trickle in; the stdlib's timeout is per read).
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import socket
import sys
import threading
from typing import Any, Self

from meshplug import limits


class _HeadReader:
    """The handler's ``rfile`` with each request head bounded in bytes; other reads pass through."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self._left = -1  # bytes the head may still take; -1: not in a head

    def start(self, max_bytes: int) -> None:
        self._left = max_bytes

    def stop(self) -> None:
        self._left = -1

    def readline(self, size: int = -1) -> bytes:
        if self._left < 0:
            return bytes(self._raw.readline(size))
        want = self._left + 1 if size < 0 else min(size, self._left + 1)
        line = bytes(self._raw.readline(want))
        self._left -= len(line)
        if self._left < 0:
            raise http.client.LineTooLong("request head")
        return line

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


class BoundedHandler(http.server.BaseHTTPRequestHandler):
    """A request handler whose request heads are bounded (see the module docstring)."""

    rfile: Any

    def setup(self) -> None:
        super().setup()
        self.rfile = _HeadReader(self.rfile)
        self._head_timer: threading.Timer | None = None

    def _head_late(self) -> None:
        """The head's time is up: end the connection (the reading thread sees its end and closes)."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def handle_one_request(self) -> None:
        self.rfile.start(limits.MAX_CONTROL_HEAD_BYTES)
        self._head_timer = threading.Timer(limits.CONTROL_REQUEST_TIMEOUT_S, self._head_late)
        self._head_timer.daemon = True
        self._head_timer.start()
        try:
            super().handle_one_request()
        except http.client.LineTooLong:  # the request line itself (a header line's is answered by parse_request)
            self.requestline, self.request_version, self.command = "", "", ""  # as the stdlib's 414 sets them
            self.close_connection = True
            self.send_error(431, "Request head too large")
        finally:
            self._head_done()

    def _head_done(self) -> None:
        self.rfile.stop()
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def parse_request(self) -> bool:
        ok = super().parse_request()
        self._head_done()  # the head is read: the body and the answer go at the per-read timeout
        return ok


class BoundedServer(http.server.ThreadingHTTPServer):
    """A threading HTTP server serving at most ``max_connections`` connections at once."""

    daemon_threads = True
    request_queue_size = 128  # the listen backlog (the stdlib's 5 drops a burst of fetching pods' SYNs)
    max_connections = limits.CONTROL_MAX_CONNECTIONS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._slots = threading.BoundedSemaphore(self.max_connections)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # over the cap: closed at accept, as the agent's control ports do
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            return  # a client that left or stalled: nothing to report (the stdlib prints a traceback to stderr)
        super().handle_error(request, client_address)


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

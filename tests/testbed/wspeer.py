"""A WebSocket echo server of the test bed (PyPI websockets) and the client calls the tests make.

Run as `python tests/testbed/wspeer.py PORT`; from tests, `start_server(log_dir=...)` starts it as its own
process. Every message is echoed back, prefixed with `echo: `; the handshake's request headers are answered
as the first message when the path is `/headers` (so a test sees what the proxy forwarded).
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect
from websockets.sync.server import ServerConnection, serve

if __package__ in (None, ""):  # run as a script: make `tests.testbed` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.testbed import procs


def _echo(ws: ServerConnection) -> None:
    if ws.request is not None and ws.request.path == "/headers":
        ws.send(json.dumps({k.lower(): v for k, v in ws.request.headers.raw_items()}))
    for message in ws:
        ws.send(("echo: " + message) if isinstance(message, str) else b"echo: " + message)


def serve_forever(port: int) -> None:
    with serve(_echo, "127.0.0.1", port) as server:
        print(f"websocket echo listening on 127.0.0.1:{port}", flush=True)
        server.serve_forever()


@dataclass
class WsOutcome:
    status: int  # 101 when the upgrade went through, else the HTTP status the proxy answered
    replies: list[str | bytes]
    headers: dict[str, str] = field(default_factory=dict)  # of the 101 (or of the refusal), lower-case names
    body: bytes = b""  # of a refusal


def exchange(port: int, messages: Sequence[str | bytes], path: str = "/", timeout: float = 10.0) -> WsOutcome:
    """Open ws://127.0.0.1:`port``path`, send each message, read one reply per message (one more for /headers)."""
    try:
        with connect(f"ws://127.0.0.1:{port}{path}", open_timeout=timeout, close_timeout=2) as ws:
            replies: list[str | bytes] = []
            if path == "/headers":
                replies.append(ws.recv(timeout=timeout))
            for m in messages:
                ws.send(m)
                replies.append(ws.recv(timeout=timeout))
            headers = {k.lower(): v for k, v in ws.response.headers.raw_items()} if ws.response else {}
            return WsOutcome(101, replies, headers)
    except InvalidStatus as exc:
        headers = {k.lower(): v for k, v in exc.response.headers.raw_items()}
        return WsOutcome(exc.response.status_code, [], headers, bytes(exc.response.body or b""))


def start_server(*, log_dir: Path, name: str = "websocket") -> procs.Peer:
    return procs.start_peer(Path(__file__).resolve(), name=name, log_dir=log_dir)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: wspeer.py PORT")
    with contextlib.suppress(KeyboardInterrupt):
        serve_forever(int(sys.argv[1]))

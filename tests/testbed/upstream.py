"""Upstream services of the test bed, each a separate process on 127.0.0.1: echo, auth, counter, tcp_echo.

Run as `python tests/testbed/upstream.py KIND PORT [HOST]` (HOST default 127.0.0.1); from tests,
`start_service(kind, log_dir=...)` starts one and waits until it answers. Used by the corpus runner
(tests/corpus/runner.py) for a spec's clusters, by the Envoy test-bed tests and as the app of the Istio test bed's
pods (tests/testbed/istio.py).

echo      HTTP/1.1. Records every request it sees (method, path, headers, body) and answers as told:
          - header `x-echo-respond: <urlsafe base64 of JSON {status, headers, body_chunks}>` picks the answer
            (more than one chunk is sent with chunked transfer encoding, each chunk flushed on its own);
          - without it the answer is 200 with the record as JSON.
          A request with header `x-echo-case: ID` is kept under ID: `GET /__seen/ID` (sent directly to the
          service) returns the record or 404 if no such request arrived. `GET /__health` -> 200.
          A path `/__slow/MS[/...]` is answered as any other, after MS milliseconds (waiting, not computing): a
          slow dependency.
auth      HTTP/1.1. `authorization: Bearer NAME` -> 200 with `x-auth-user: NAME`; NAME starting with `deny`
          -> 403; no/other authorization -> 401. Records the last request under `/__seen/_last`.
counter   HTTP/1.1. The n-th request is answered 200 with body `n` and header `x-counter: n`.
tcp_echo  TCP. Echoes every byte back; closes its side when the client half-closes.
grpc      gRPC over h2c: the test service of tests/testbed/grpcpeer.py (started from there).
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import socketserver
import sys
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `tests.testbed` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.testbed import procs

KINDS = ("echo", "auth", "counter", "tcp_echo", "grpc")
CASE_HEADER = "x-echo-case"
RESPOND_HEADER = "x-echo-respond"


def encode_response(status: int, headers: list[tuple[str, str]], body_chunks: list[bytes]) -> str:
    """The `x-echo-respond` header value that makes the echo service answer this way."""
    doc = {
        "status": status,
        "headers": headers,
        "body_chunks": [base64.b64encode(c).decode() for c in body_chunks],
    }
    return base64.urlsafe_b64encode(json.dumps(doc).encode()).decode()


def decode_record(raw: bytes) -> dict[str, Any]:
    """A record from `/__seen/ID` (body decoded back to bytes under `body`)."""
    rec: dict[str, Any] = json.loads(raw)
    rec["body"] = base64.b64decode(rec.pop("body_b64"))
    rec["headers"] = [(str(k), str(v)) for k, v in rec["headers"]]
    return rec


# --- server side ---------------------------------------------------------------------------------


class _State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: dict[str, bytes] = {}
        self.count = 0


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "meshplug-testbed"
    kind = "echo"
    state = _State()

    def log_message(self, format: str, *args: Any) -> None:
        sys.stdout.write(f"{self.kind}: {format % args}\n")
        sys.stdout.flush()

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, headers: list[tuple[str, str]], chunks: list[bytes]) -> None:
        self.send_response(status)
        names = {k.lower() for k, _ in headers}
        for k, v in headers:
            self.send_header(k, v)
        chunked = len(chunks) > 1
        if chunked:
            self.send_header("transfer-encoding", "chunked")
        elif "content-length" not in names:
            self.send_header("content-length", str(sum(len(c) for c in chunks)))
        self.end_headers()
        for chunk in chunks:
            if chunked:
                if chunk:
                    self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            else:
                self.wfile.write(chunk)
            self.wfile.flush()
        if chunked:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

    def _handle(self) -> None:
        if self.path == "/__health":
            self._read_body()
            self._send(200, [("content-type", "text/plain")], [b"ok"])
            return
        if self.path.startswith("/__seen/"):
            self._read_body()
            with self.state.lock:
                found = self.state.seen.get(self.path[len("/__seen/") :])
            if found is None:
                self._send(404, [("content-type", "text/plain")], [b"not seen"])
            else:
                self._send(200, [("content-type", "application/json")], [found])
            return
        body = self._read_body()
        if self.path.startswith("/__slow/"):
            delay_ms = int(self.path.split("/")[2].split("?")[0] or 0)
            threading.Event().wait(delay_ms / 1000)  # the dependency's own slowness, not a synchronisation
        record = json.dumps(
            {
                "method": self.command,
                "path": self.path,
                "headers": [[k.lower(), v] for k, v in self.headers.items()],
                "body_b64": base64.b64encode(body).decode(),
            }
        ).encode()
        with self.state.lock:
            self.state.count += 1
            count = self.state.count
            self.state.seen["_last"] = record
            case = self.headers.get(CASE_HEADER)
            if case:
                self.state.seen[case] = record
        if self.kind == "auth":
            self._auth()
        elif self.kind == "counter":
            self._send(200, [("content-type", "text/plain"), ("x-counter", str(count))], [str(count).encode()])
        else:
            self._echo(record)

    def _auth(self) -> None:
        value = self.headers.get("authorization", "")
        if not value.startswith("Bearer ") or not value[7:]:
            self._send(401, [("content-type", "text/plain")], [b"no credentials"])
        elif value[7:].startswith("deny"):
            self._send(403, [("content-type", "text/plain")], [b"denied"])
        else:
            self._send(200, [("content-type", "text/plain"), ("x-auth-user", value[7:])], [b"ok"])

    def _echo(self, record: bytes) -> None:
        told = self.headers.get(RESPOND_HEADER)
        if not told:
            self._send(200, [("content-type", "application/json")], [record])
            return
        doc = json.loads(base64.urlsafe_b64decode(told))
        chunks = [base64.b64decode(c) for c in doc.get("body_chunks", [])]
        self._send(int(doc.get("status", 200)), [(str(k), str(v)) for k, v in doc.get("headers", [])], chunks)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle


class _TcpEcho(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        while True:
            data = self.request.recv(65536)
            if not data:
                break
            self.request.sendall(data)
        self.request.shutdown(socket.SHUT_WR)


def serve(kind: str, port: int, host: str = "127.0.0.1") -> None:
    if kind == "tcp_echo":
        socketserver.ThreadingTCPServer.allow_reuse_address = True
        socketserver.ThreadingTCPServer.daemon_threads = True
        with socketserver.ThreadingTCPServer((host, port), _TcpEcho) as tcp:
            print(f"tcp_echo listening on {host}:{port}", flush=True)
            tcp.serve_forever()
        return
    handler = type(f"{kind}_handler", (_Handler,), {"kind": kind, "state": _State()})
    http = ThreadingHTTPServer((host, port), handler)
    http.daemon_threads = True
    print(f"{kind} listening on {host}:{port}", flush=True)
    http.serve_forever()


# --- client side (tests) -------------------------------------------------------------------------


@dataclass
class Service:
    """A running upstream service: its kind, port and process."""

    kind: str
    port: int
    proc: procs.Proc

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def stop(self) -> None:
        self.proc.stop()

    def seen(self, case_id: str) -> dict[str, Any] | None:
        """The request the service recorded under `case_id`, or None if none arrived."""
        status, body = http_get(self.port, f"/__seen/{case_id}")
        if status == 404:
            return None
        if status != 200:
            raise RuntimeError(f"{self.kind} service answered {status} to /__seen/{case_id}")
        return decode_record(body)


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def start_service(kind: str, *, log_dir: Path, name: str | None = None) -> Service:
    if kind not in KINDS:
        raise ValueError(f"unknown service kind {kind!r}; known: {KINDS}")
    if kind == "grpc":
        from tests.testbed import grpcpeer

        server = grpcpeer.start_server(log_dir=log_dir, name=name or "grpc")
        return Service(kind=kind, port=server.port, proc=server.proc)
    port = procs.free_port()

    def ready() -> bool:
        if kind == "tcp_echo":
            return procs.port_open(port)
        return http_get(port, "/__health", timeout=1.0)[0] == 200

    proc = procs.start(
        name or f"{kind}-{port}",
        [sys.executable, str(Path(__file__).resolve()), kind, str(port)],
        log_dir=log_dir,
        ready=ready,
        timeout=20.0,
        ports={"main": port},
    )
    return Service(kind=kind, port=port, proc=proc)


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4) or sys.argv[1] not in KINDS:
        sys.exit(f"usage: upstream.py {{{'|'.join(KINDS)}}} PORT [HOST]")
    with contextlib.suppress(KeyboardInterrupt):
        serve(sys.argv[1], int(sys.argv[2]), *sys.argv[3:])

"""A programmable HTTPS origin for module-supply tests: a separate process, and the client that drives it.

Run as a script (`python tests/testbed/origin.py --port P --cert C --key K [--host H]`), it serves TLS on 127.0.0.1
and answers each path as programmed through its control API (same port, `/_control/...`):

    POST /_control/program   {"path": "/m.wasm", "body_b64": ..., "status": 200, "headers": {...},
                              "fail_first": n, "fail_status": 500,   # n failures before the real answer
                              "delay_s": s,                          # wait before answering (slow server)
                              "truncate_to": n,                      # announce the full length, send n bytes, close
                              "stream_bytes": n,                     # chunked body of n bytes, no length
                              "redirect": url,                       # 302 to url
                              "token": {...}}                        # a registry token endpoint (see _issue_token)
    GET  /_control/count?path=/m.wasm   -> {"count": requests seen for that path}
    POST /_control/reset

`Origin` (used by tests/testbed/fixtures_origin.py) starts the process with `procs.start` and wraps the API.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import ssl
import sys
import tarfile
import threading
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

# --- the server process ------------------------------------------------------------------------------
_programs: dict[str, dict[str, Any]] = {}
_counts: dict[str, int] = {}
_lock = threading.Lock()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _issue_token(spec: dict[str, Any], query: dict[str, list[str]], auth: str) -> tuple[int, bytes]:
    """A distribution-style bearer token (RS256 JWS with an x5c chain) for a user with the right password."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    user, password = "", ""
    if auth.startswith("Basic "):
        user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
    if spec["users"].get(user) != password:
        return 401, b'{"errors": [{"code": "UNAUTHORIZED"}]}'
    access = []
    for scope in query.get("scope", []):
        kind, name, actions = scope.split(":", 2)
        access.append({"type": kind, "name": name, "actions": actions.split(",")})
    now = int(time.time())
    header = {"typ": "JWT", "alg": "RS256", "x5c": [spec["cert_der_b64"]]}
    claims = {
        "iss": spec["issuer"],
        "sub": user,
        "aud": query.get("service", [""])[0],
        "exp": now + 300,
        "nbf": now - 10,
        "iat": now,
        "jti": f"{now}-{user}",
        "access": access,
    }
    signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
    key = serialization.load_pem_private_key(spec["key_pem"].encode(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):  # RS256, as the registry's token auth is configured
        raise TypeError(f"the token key is {type(key).__name__}, not RSA")
    signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    token = f"{signing_input}.{_b64url(signature)}"
    return 200, json.dumps({"token": token, "access_token": token, "expires_in": 300}).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"origin: {self.command} {self.path} {args[1] if len(args) > 1 else ''}\n")

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        hdrs = {"Content-Length": str(len(body)), **(headers or {})}
        for name, value in hdrs.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _control(self, path: str, query: dict[str, list[str]]) -> None:
        if path == "/_control/health":
            self._send(200, b"ok")
        elif path == "/_control/program":
            spec = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with _lock:
                _programs[spec["path"]] = spec
                _counts[spec["path"]] = 0
            self._send(200, b"{}")
        elif path == "/_control/count":
            with _lock:
                count = _counts.get(query["path"][0], 0)
            self._send(200, json.dumps({"count": count}).encode())
        elif path == "/_control/reset":
            with _lock:
                _programs.clear()
                _counts.clear()
            self._send(200, b"{}")
        else:
            self._send(404, b"no such control")

    def do_POST(self) -> None:
        self.do_GET()

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        parts = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(parts.query)
        if parts.path.startswith("/_control/"):
            self._control(parts.path, query)
            return
        with _lock:
            spec = _programs.get(parts.path)
            _counts[parts.path] = seen = _counts.get(parts.path, 0) + 1
        if spec is None:
            self._send(404, b"not programmed")
            return
        if spec.get("delay_s"):
            time.sleep(float(spec["delay_s"]))
        if seen <= int(spec.get("fail_first", 0)):
            self._send(int(spec.get("fail_status", 500)), b"failing on purpose")
            return
        if spec.get("redirect"):
            self._send(302, b"", {"Location": spec["redirect"]})
            return
        if spec.get("token"):
            status, body = _issue_token(spec["token"], query, self.headers.get("Authorization", ""))
            self._send(status, body, {"Content-Type": "application/json"})
            return
        body = base64.b64decode(spec.get("body_b64", ""))
        headers = dict(spec.get("headers", {}))
        status = int(spec.get("status", 200))
        if spec.get("stream_bytes"):
            self._stream(status, int(spec["stream_bytes"]), headers)
        elif spec.get("truncate_to") is not None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: int(spec["truncate_to"])])
            self.wfile.flush()
            self.close_connection = True
        else:
            self._send(status, body, headers)

    def _stream(self, status: int, total: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Transfer-Encoding", "chunked")
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        chunk = b"\x00asm\x01\x00\x00\x00" + b"\x00" * (64 * 1024 - 8)
        sent = 0
        try:
            while sent < total:
                piece = chunk[: min(len(chunk), total - sent)]
                self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                sent += len(piece)
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


def serve(port: int, cert: str, key: str, host: str = "127.0.0.1") -> None:
    server = ThreadingHTTPServer((host, port), _Handler)
    server.daemon_threads = True
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.serve_forever()


# --- the client side ---------------------------------------------------------------------------------
@dataclass
class Origin:
    """A running origin process: its base URL, the CA file that verifies it, and its control API."""

    proc: Any  # tests.testbed.procs.Proc
    port: int
    ca_file: Path

    @property
    def base(self) -> str:
        return f"https://localhost:{self.port}"

    def url(self, path: str) -> str:
        return self.base + path

    def _control(self, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        import requests

        if payload is None:
            resp = requests.get(self.base + path, verify=str(self.ca_file), timeout=10)
        else:
            resp = requests.post(self.base + path, json=payload, verify=str(self.ca_file), timeout=10)
        resp.raise_for_status()
        result: dict[str, Any] = resp.json()
        return result

    def program(self, path: str, *, body: bytes = b"", **behaviour: Any) -> str:
        """Program ``path``; returns its URL. Behaviour keys as in the module docstring."""
        self._control("/_control/program", {"path": path, "body_b64": base64.b64encode(body).decode(), **behaviour})
        return self.url(path)

    def count(self, path: str) -> int:
        return int(self._control("/_control/count?" + urllib.parse.urlencode({"path": path}))["count"])

    def healthy(self) -> bool:
        import requests

        try:
            return requests.get(self.base + "/_control/health", verify=str(self.ca_file), timeout=1).ok
        except requests.RequestException:
            return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    args = parser.parse_args()
    serve(args.port, args.cert, args.key, args.host)


def wasm_module(n: int = 0) -> bytes:
    """A tiny valid wasm module, different for each ``n`` (exports a global holding ``n``)."""
    import wasmtime

    return bytes(wasmtime.wat2wasm(f'(module (global (export "n") i32 (i32.const {n})) (func (export "f")))'))


def tar_of(files: Mapping[str, bytes]) -> bytes:
    """An uncompressed tar of ``files`` (name -> bytes, mode 0644), as module archives are served."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


if __name__ == "__main__":
    main()

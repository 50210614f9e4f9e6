"""The module server: cached modules over HTTP by digest, for agents and Envoy's `code.remote`.

Started by the operator (and `meshplug serve-modules`) next to its `Fetcher`'s cache. One route::

    GET|HEAD /modules/sha256/<hex>     the module; ETag "sha256:<hex>", Digest/Repr-Digest headers,
                                       If-None-Match answered with 304

Authentication: ``Authorization: Bearer <token>`` (agents), or ``?sig=<hex hmac-sha256(token, hex)>``,
a per-module capability for clients that cannot send headers (Envoy's remote data source); build it
with `ModuleServer.url_for()`. Bytes are re-verified against the digest on every read. `/healthz`
answers 200 without auth. A stdlib ThreadingHTTPServer on its own thread; optional TLS.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import re
import ssl
import urllib.parse
from typing import Any

from meshplug.fetch.cache import Cache
from meshplug.serving import ServerThread

_ROUTE = re.compile(r"^/modules/sha256/([0-9a-f]{64})$")


def signature(token: str, sha256: str) -> str:
    return hmac.new(token.encode(), sha256.encode(), hashlib.sha256).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "meshplug-modules"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        return  # the operator logs through its own channels; stderr noise helps no one

    def _plain(self, status: int, text: str, headers: dict[str, str] | None = None) -> None:
        body = (text + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _authorized(self, sha256: str, query: str) -> bool:
        token = self.server.token
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Bearer ") and hmac.compare_digest(auth[7:].strip().encode(), token.encode()):
            return True
        sig = urllib.parse.parse_qs(query).get("sig", [""])[0]
        return bool(sig) and hmac.compare_digest(sig.encode(), signature(token, sha256).encode())

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        if path == "/healthz":
            self._plain(200, "ok")
            return
        match = _ROUTE.match(path)
        if match is None:
            self._plain(404, "no such route")
            return
        sha256 = match.group(1)
        if not self._authorized(sha256, query):
            self._plain(401, "unauthorized", {"WWW-Authenticate": 'Bearer realm="meshplug-modules"'})
            return
        etag = f'"sha256:{sha256}"'
        data = self.server.cache.get_blob(sha256)
        if data is None:
            self._plain(404, "module not in cache")
            return
        if etag in [t.strip() for t in self.headers.get("If-None-Match", "").split(",")]:
            self.send_response(304)
            self.send_header("ETag", etag)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        b64 = base64.b64encode(bytes.fromhex(sha256)).decode()
        self.send_response(200)
        self.send_header("Content-Type", "application/wasm")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("ETag", etag)
        self.send_header("Digest", f"sha-256={b64}")
        self.send_header("Repr-Digest", f"sha-256=:{b64}:")
        self.send_header("Docker-Content-Digest", f"sha256:{sha256}")
        self.send_header("Cache-Control", "private, max-age=31536000, immutable")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], cache: Cache, token: str) -> None:
        super().__init__(address, _Handler)
        self.cache = cache
        self.token = token


class ModuleServer(ServerThread):
    """Serves ``cache`` on ``host:port`` (port 0: any free port) until `stop()`."""

    def __init__(
        self,
        cache: Cache,
        *,
        token: str,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if len(token) < 16:
            raise ValueError("module server token must be at least 16 characters")
        server = _Server((host, port), cache, token)
        if ssl_context is not None:
            server.socket = ssl_context.wrap_socket(server.socket, server_side=True)
        super().__init__(server, name="meshplug-modules", poll_interval=0.05)
        self._token = token
        self._scheme = "https" if ssl_context is not None else "http"

    @property
    def base_url(self) -> str:
        host = str(self._server.server_address[0])
        return f"{self._scheme}://{host}:{self.port}"

    def url_for(self, sha256: str, *, signed: bool = False) -> str:
        """The module's URL; ``signed`` appends the capability signature (for Envoy ``code.remote``)."""
        url = f"{self.base_url}/modules/sha256/{sha256}"
        return f"{url}?sig={signature(self._token, sha256)}" if signed else url

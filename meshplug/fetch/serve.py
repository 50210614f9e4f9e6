"""The module server: cached modules over HTTP by digest, for agents and Envoy's `code.remote`.

Started by the operator next to its `Fetcher`'s cache, twice: over HTTPS for the agents, over plain HTTP for
Envoy sidecars (signed URLs only). Routes::

    GET|HEAD /modules/sha256/<hex>     the module; ETag "sha256:<hex>", Digest/Repr-Digest headers,
                                       If-None-Match answered with 304
    GET|HEAD /compiled/<key>           the module precompiled for the agents (meshplug.compiled's artifact file
                                       ``<module sha256>.<wasmtime version>.<fingerprint>.cwasm`` under
                                       ``compiled_root``, when the operator has one); Digest of the file bytes.
                                       The same access as its module (a signature is over the key)

Authentication, one of:
- ``?sig=<hex hmac-sha256(signing key, hex)>``: a per-module capability for clients that cannot send headers
  (Envoy's remote data source); build it with `ModuleServer.url_for()`;
- ``Authorization: Bearer <token>``, over TLS only: the caller's token and the digest go to `Access.check`
  (the operator's: a ServiceAccount token the API server confirms, of a pod that runs that module), which
  answers 401 or 403 by raising ProtocolError with reason ``unauthorized`` or ``forbidden``, and may put the
  module into the cache before it returns (another replica fetched and pushed it).
Bytes are re-verified against the digest on every read. `/healthz` answers 200 without auth. A stdlib
ThreadingHTTPServer on its own thread, bounded as `meshplug.serving` says (connections at once, request heads).
``on_request`` (when given) hears of every module GET as (client address, sha256, HTTP status; a 200 only once
the whole body is written): the operator learns from it which pod's istio-agent or Envoy downloaded which module,
and which download failed (`meshplug.controller.delivery.proxies.FetchLog`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import ssl
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from meshplug import errors, limits
from meshplug.fetch.cache import Cache
from meshplug.serving import BoundedHandler, BoundedServer, ServerThread

_ROUTE = re.compile(r"^/modules/sha256/([0-9a-f]{64})$")
_COMPILED_ROUTE = re.compile(r"^/compiled/(([0-9a-f]{64})\.[A-Za-z0-9.+-]{1,64}\.[0-9a-f]{16}\.cwasm)$")
#: (client address, sha256, HTTP status) of a module GET
OnRequest = Callable[[str, str, int], None]


#: signing keys shorter than this are refused
MIN_SIGNING_KEY = 16
#: a TLS client must finish its handshake within this
HANDSHAKE_TIMEOUT_S = 10.0


def signature(key: str, sha256: str) -> str:
    return hmac.new(key.encode(), sha256.encode(), hashlib.sha256).hexdigest()


class Access(Protocol):
    """Decides whether the bearer of ``token`` may fetch module ``sha256``."""

    def check(self, token: str, sha256: str) -> None:
        """Return when allowed; raise errors.ProtocolError (reason ``unauthorized`` or ``forbidden``)."""


class _Handler(BoundedHandler):
    server: _Server
    timeout = HANDSHAKE_TIMEOUT_S * 3  # each read and write on the connection
    protocol_version = "HTTP/1.1"
    server_version = "meshplug-modules"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        return  # the operator logs through its own channels; stderr noise helps no one

    def version_string(self) -> str:
        return self.server_version  # the stdlib appends sys_version after a space, even an empty one

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

    def _refusal(self, sha256: str, query: str, signed: str = "") -> tuple[int, str] | None:
        """None when the request may have the module (or its artifact: `signed` is what a signature covers,
        default the digest), else (status, why)."""
        sig = urllib.parse.parse_qs(query).get("sig", [""])[0]
        if sig:
            if hmac.compare_digest(sig.encode(), signature(self.server.signing_key, signed or sha256).encode()):
                return None
            return 401, "bad signature"
        scheme, _, token = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return 401, "unauthorized"
        if self.server.access is None or not self.server.tls:
            return 401, "bearer tokens are accepted over TLS only"
        try:
            self.server.access.check(token.strip(), sha256)
        except errors.ProtocolError as exc:
            return (403 if exc.reason == "forbidden" else 401), exc.message
        return None

    def _heard(self, sha256: str, status: int) -> None:
        if self.server.on_request is not None and self.command == "GET":
            self.server.on_request(str(self.client_address[0]), sha256, status)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        if path == "/healthz":
            self._plain(200, "ok")
            return
        compiled = _COMPILED_ROUTE.match(path)
        if compiled is not None:
            self._compiled(compiled.group(1), compiled.group(2), query)
            return
        match = _ROUTE.match(path)
        if match is None:
            self._plain(404, "no such route")
            return
        sha256 = match.group(1)
        refusal = self._refusal(sha256, query)
        if refusal is not None:
            self._heard(sha256, refusal[0])
        if self._refused(refusal):
            return
        etag = f'"sha256:{sha256}"'
        data = self.server.cache.get_blob(sha256)
        if data is None:
            self._heard(sha256, 404)
            self._plain(404, "module not in cache")
            return
        if etag in [t.strip() for t in self.headers.get("If-None-Match", "").split(",")]:
            self._heard(sha256, 200)  # the client holds these very bytes
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
            self._heard(sha256, 200)  # only once every byte went out (a transfer cut short is no download)

    def _refused(self, refusal: tuple[int, str] | None) -> bool:
        if refusal is None:
            return False
        status, why = refusal
        challenge = {"WWW-Authenticate": 'Bearer realm="meshplug-modules"'} if status == 401 else {}
        self._plain(status, why, challenge)
        return True

    def _compiled(self, key: str, sha256: str, query: str) -> None:
        if self._refused(self._refusal(sha256, query, signed=key)):
            return
        root = self.server.compiled_root
        try:
            data = b"" if root is None else (root / sha256[:2] / key).read_bytes()
        except OSError:
            data = b""
        if not data:
            self._plain(404, "no such precompiled module")
            return
        digest = hashlib.sha256(data).digest()
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Digest", f"sha-256={base64.b64encode(digest).decode()}")
        self.send_header("Cache-Control", "private, no-transform")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


class _Server(BoundedServer):
    max_connections = limits.MODULE_SERVER_MAX_CONNECTIONS

    def __init__(
        self,
        address: tuple[str, int],
        cache: Cache,
        signing_key: str,
        access: Access | None,
        ssl_context: ssl.SSLContext | None,
        *,
        compiled_root: Path | None = None,
        on_request: OnRequest | None = None,
    ) -> None:
        super().__init__(address, _Handler)
        self.cache = cache
        self.signing_key = signing_key
        self.access = access
        self.ssl_context = ssl_context
        self.compiled_root = compiled_root
        self.on_request = on_request

    @property
    def tls(self) -> bool:
        return self.ssl_context is not None

    def finish_request(self, request: Any, client_address: Any) -> None:
        """The TLS handshake happens here, on the connection's own thread (a client that never finishes it
        holds only that thread, for at most the handshake timeout)."""
        if self.ssl_context is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(HANDSHAKE_TIMEOUT_S)
        try:
            wrapped = self.ssl_context.wrap_socket(request, server_side=True)  # takes over the socket's descriptor
        except (OSError, ssl.SSLError):
            return
        try:
            super().finish_request(wrapped, client_address)
        finally:
            self.shutdown_request(wrapped)


class ModuleServer(ServerThread):
    """Serves ``cache`` on ``host:port`` (port 0: any free port) until `stop()`."""

    def __init__(
        self,
        cache: Cache,
        *,
        signing_key: str,
        access: Access | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
        compiled_root: Path | None = None,
        on_request: OnRequest | None = None,
    ) -> None:
        """``compiled_root``: the operator's precompiled artifacts (meshplug.compiled.ArtifactCache's root)."""
        if len(signing_key) < MIN_SIGNING_KEY:
            raise ValueError(f"module server signing key must be at least {MIN_SIGNING_KEY} characters")
        server = _Server(
            (host, port), cache, signing_key, access, ssl_context, compiled_root=compiled_root, on_request=on_request
        )
        super().__init__(server, name="meshplug-modules", poll_interval=0.05)
        self._signing_key = signing_key
        self._scheme = "https" if ssl_context is not None else "http"

    @property
    def base_url(self) -> str:
        host = str(self._server.server_address[0])
        return f"{self._scheme}://{host}:{self.port}"

    def url_for(self, sha256: str, *, signed: bool = False) -> str:
        """The module's URL; ``signed`` appends the capability signature (for Envoy ``code.remote``)."""
        url = f"{self.base_url}/modules/sha256/{sha256}"
        return f"{url}?sig={signature(self._signing_key, sha256)}" if signed else url

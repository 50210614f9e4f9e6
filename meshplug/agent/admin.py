"""The agent's control-plane HTTP: a small request/response server, the admin routes, and their rendering.

Called by `meshplug.agent.runtime`, which starts one `ControlServer` for admin (127.0.0.1 by default) and,
when configured, one for pushes (`meshplug.agent.push` supplies that handler). Requests are read whole
(bounded by `limits.MAX_CONTROL_REQUEST_BYTES`), handled by an async function, answered, and the
connection closed; none of this is on the data path. Every connection is bounded: its head (431 beyond
`limits.MAX_CONTROL_HEAD_BYTES`), its declared body (413 before reading it), the time to deliver the whole
request (408 after `limits.CONTROL_REQUEST_TIMEOUT_S`) and how many are open at once per endpoint
(`limits.CONTROL_MAX_CONNECTIONS`; more are closed at accept). A handler with an ``authorize(head)`` method
(the push endpoint's) judges the request from its head, before any body byte is read.

Admin routes:
    GET  /ready               200 "LIVE" once the listeners accept traffic and a plugin set is applied, else 503
    GET  /config_dump         JSON: version_info, nonce, per-plugin name/root_id/sha256/size/state, listeners,
                              clusters, last push outcome, the signature policy (meshplug.agent.trust) as it is now
    GET  /stats/prometheus    text exposition: proxy counters (meshplug_agent_*) + the plugins' own metrics
    GET  /plugin_logs         JSON: the plugins' proxy_log records;  GET /plugin_stats  JSON: their metrics
    POST /logging             current level;  POST /logging?level=debug|info|warning|error  sets it (GET: 405,
                              as Envoy's admin answers state-changing endpoints)
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

import httptools

from meshplug import limits

log = logging.getLogger("meshplug.agent.admin")


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"


Handler = Callable[[Request], Awaitable[Response]]


class TLS(Protocol):
    """A server TLS context that may change its files between connections (`meshplug.agent.tls`)."""

    context: ssl.SSLContext

    def refresh(self) -> None: ...

    def peer_allowed(self, peercert: Any) -> bool: ...


_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


#: decides, from a TLS connection's verified peer certificate, whether to serve it
PeerCheck = Callable[[Any], bool]


class _Conn(asyncio.Protocol):
    def __init__(
        self,
        handler: Handler,
        tasks: set[asyncio.Task[None]],
        conns: set[_Conn] | None = None,
        peer_check: PeerCheck | None = None,
    ) -> None:
        self.handler = handler
        self.tasks = tasks
        self.peer_check = peer_check
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.size = 0
        self.done = False
        #: the endpoint's open connections (capped), this one's head bytes so far, its request deadline
        self.conns: set[_Conn] = set() if conns is None else conns
        self.head_done = False
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop transports are not subclasses
        if self.peer_check is not None and not self.peer_check(transport.get_extra_info("peercert")):
            self.done = True
            self.transport.abort()
            return
        if len(self.conns) >= limits.CONTROL_MAX_CONNECTIONS:
            self.done = True
            self.transport.abort()
            return
        self.conns.add(self)
        self.timer = asyncio.get_running_loop().call_later(limits.CONTROL_REQUEST_TIMEOUT_S, self._timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self.conns.discard(self)
        if self.timer is not None:
            self.timer.cancel()

    def _timed_out(self) -> None:
        if not self.done:
            self._answer(Response(408, b"request timeout\n"))

    def data_received(self, data: bytes) -> None:
        if self.done:
            return
        self.size += len(data)
        if self.size > limits.MAX_CONTROL_REQUEST_BYTES:
            self._answer(Response(413, b"request too large\n"))
            return
        try:
            if self._in_head() and self.size > limits.MAX_CONTROL_HEAD_BYTES:
                # at most the head's limit before the head must be complete (nothing more is held)
                room = max(0, limits.MAX_CONTROL_HEAD_BYTES - (self.size - len(data)))
                self.parser.feed_data(data[:room])
                if self._in_head():
                    self._answer(Response(431, b"request head too large\n"))
                    return
                data = data[room:]
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._answer(Response(400, b"bad request\n"))  # (no-op when a callback answered already)

    def _in_head(self) -> bool:
        return not self.head_done

    def on_headers_complete(self) -> None:
        self.head_done = True
        length = self.headers.get("content-length", "0").strip()
        if not length.isdigit() or int(length) > limits.MAX_CONTROL_REQUEST_BYTES:
            self._answer(Response(413, b"request too large\n"))
            raise httptools.HttpParserError("refused")  # stop parsing: nothing of the body is read
        authorize: Callable[[Request], Response | None] | None = getattr(self.handler, "authorize", None)
        if authorize is not None:
            refusal = authorize(self._request(b""))
            if refusal is not None:
                self._answer(refusal)
                raise httptools.HttpParserError("refused")

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def _request(self, body: bytes) -> Request:
        url = urllib.parse.urlsplit(self.url.decode("latin-1"))
        return Request(
            method=self.parser.get_method().decode(),
            path=url.path,
            query=dict(urllib.parse.parse_qsl(url.query)),
            headers=self.headers,
            body=body,
        )

    def on_message_complete(self) -> None:
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
        request = self._request(b"".join(self.body))
        task = asyncio.get_running_loop().create_task(self._serve(request))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _serve(self, request: Request) -> None:
        try:
            response = await self.handler(request)
        except Exception:
            log.exception("control request %s %s failed", request.method, request.path)
            response = Response(500, b"internal error\n")
        self._answer(response)

    def _answer(self, response: Response) -> None:
        if self.transport is not None and self.transport.is_closing():
            return
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
        if self.transport is None or self.transport.is_closing():
            return
        head = (
            f"HTTP/1.1 {response.status} {_REASONS.get(response.status, 'Status')}\r\n"
            f"content-type: {response.content_type}\r\ncontent-length: {len(response.body)}\r\n"
            "connection: close\r\n\r\n"
        )
        self.transport.write(head.encode() + response.body)
        self.transport.close()


class ControlServer:
    """One control endpoint (admin or push) on its own port; with ``tls``, TLS whose peer passes its check (the
    handshake itself bounded by the request timeout)."""

    def __init__(self, handler: Handler, *, tls: TLS | None = None) -> None:
        self.handler = handler
        self.tls = tls
        self.server: asyncio.AbstractServer | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.conns: set[_Conn] = set()

    def _connection(self) -> _Conn:
        if self.tls is None:
            return _Conn(self.handler, self.tasks, self.conns)
        self.tls.refresh()  # before this connection's handshake: rotated files apply to it
        return _Conn(self.handler, self.tasks, self.conns, self.tls.peer_allowed)

    async def start(self, address: str, port: int) -> int:
        loop = asyncio.get_running_loop()
        if self.tls is None:
            self.server = await loop.create_server(self._connection, address, port)
        else:
            self.server = await loop.create_server(
                self._connection,
                address,
                port,
                ssl=self.tls.context,
                ssl_handshake_timeout=limits.CONTROL_REQUEST_TIMEOUT_S,
            )
        sockets: list[Any] = list(getattr(self.server, "sockets", None) or [])
        return int(sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)


# --- rendering -----------------------------------------------------------------------------------------


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


#: HELP texts of the proxy counters (Envoy's names, so Envoy dashboards read them)
_HELP = {
    "downstream_cx_active": "Downstream connections open now.",
    "downstream_cx_http2_total": "Downstream connections that spoke HTTP/2.",
    "downstream_cx_total": "Downstream connections accepted.",
    "downstream_cx_upgrades_total": "Downstream connections upgraded (e.g. WebSocket).",
    "downstream_rq_active": "Requests in flight.",
    "downstream_rq_header_timeout": "Requests whose head did not arrive within request_headers_timeout (408).",
    "downstream_rq_idle_timeout": "Requests ended by the stream idle timeout.",
    "downstream_rq_local_reply": "Requests answered by the proxy or a plugin instead of the upstream.",
    "downstream_rq_max_duration_reached": "Requests ended by max_stream_duration (408, 504, or reset once answering).",
    "downstream_rq_rx_reset": "Requests the client reset.",
    "downstream_rq_timeout": "Requests not received whole within request_timeout (408).",
    "downstream_rq_too_many_premature_resets": "Connections closed for too many premature stream resets.",
    "downstream_rq_total": "Requests received.",
    "http2_inbound_empty_frames_flood": "HTTP/2 connections closed for consecutive empty frames (Envoy's limit).",
    "http2_inbound_priority_frames_flood": "HTTP/2 connections closed for too many PRIORITY frames.",
    "http2_inbound_window_update_frames_flood": "HTTP/2 connections closed for too many WINDOW_UPDATE frames.",
    "upstream_cx_active": "Upstream connections open now.",
    "upstream_cx_connect_fail": "Upstream connections that could not be made.",
    "upstream_cx_total": "Upstream connections made.",
    "upstream_rq_reset": "Upstream requests reset.",
    "upstream_rq_retry_stale": "Requests retried once on a stale keep-alive connection.",
    "upstream_rq_timeout": "Upstream requests that timed out.",
    "upstream_rq_total": "Upstream requests sent.",
    "push_ack_total": "Config pushes ACKed.",
    "push_nack_total": "Config pushes NACKed (the last good set kept serving).",
}
_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
_BY_CLASS = frozenset(f"downstream_rq_{c}" for c in _CLASSES)


def prometheus(counters: dict[str, int], *, gauges: frozenset[str], labels: dict[str, str], extra: str) -> bytes:
    """Prometheus text exposition of the proxy counters, followed by `extra` (the plugins' own metrics).

    Every family has HELP and TYPE; counters are Envoy's names with ``_total`` (``upstream_cx_connect_fail`` ->
    ``meshplug_agent_upstream_cx_connect_fail_total``), and Envoy's per-class ``downstream_rq_2xx`` ... are one
    family with the class as a label: ``meshplug_agent_downstream_rq_xx_total{code_class="2xx"}``."""
    label = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
    lines: list[str] = []
    for name, value in counters.items():
        if name in _BY_CLASS:
            continue  # one family with the class as a label, below
        kind = "gauge" if name in gauges else "counter"
        metric = f"meshplug_agent_{name}" + ("_total" if kind == "counter" and not name.endswith("_total") else "")
        lines.append(f"# HELP {metric} {_HELP.get(name, name.replace('_', ' ') + '.')}")
        lines.append(f"# TYPE {metric} {kind}")
        lines.append(f"{metric}{{{label}}} {value}" if label else f"{metric} {value}")
    by_class = [(c, counters.get(f"downstream_rq_{c}", 0)) for c in _CLASSES]
    lines.append("# HELP meshplug_agent_downstream_rq_xx_total Responses sent downstream, by status class.")
    lines.append("# TYPE meshplug_agent_downstream_rq_xx_total counter")
    prefix = label + "," if label else ""
    lines += [f'meshplug_agent_downstream_rq_xx_total{{{prefix}code_class="{c}"}} {v}' for c, v in by_class]
    text = "\n".join(lines) + "\n"
    if extra:
        text += extra if extra.endswith("\n") else extra + "\n"
    return text.encode()


LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def logging_route(request: Request) -> Response:
    if request.method != "POST":  # as Envoy's admin: a state-changing endpoint takes POST only
        return Response(405, b"Method GET not allowed, POST required.\n")
    root = logging.getLogger("meshplug")
    if request.query.get("level") is not None:
        level = request.query.get("level", "").lower()
        if level not in LEVELS:
            return Response(400, f"level must be one of {', '.join(LEVELS)}\n".encode())
        root.setLevel(LEVELS[level])
        log.warning("log level set to %s", level)
    name = logging.getLevelName(root.getEffectiveLevel()).lower()
    return Response(200, f"level: {name}\n".encode())

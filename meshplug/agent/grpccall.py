"""Plugins' gRPC calls and streams, performed against a cluster: `GrpcClientCall`.

Created by the host driver (`meshplug.agent.filters.Driver`) for each `host.GrpcCallout` a plugin opened with
proxy_grpc_call / proxy_grpc_stream; its outcome goes back through `Events` (the driver hands it to the
host's `grpc_*` methods, which call the plugin's root context). The request is what Envoy's async gRPC
client sends for an `envoy_grpc` service: POST /<service>/<method>, :authority the cluster name (or the
GrpcService's authority), content-type application/grpc, te trailers, grpc-timeout for a call's timeout,
the plugin's metadata, then length-prefixed messages; the cluster should speak HTTP/2 (`http2: true`).
A unary call ends with its response message (success) or a close with the status (failure: non-200, a
grpc-status other than 0, a reset -- UNAVAILABLE -- or its deadline -- DEADLINE_EXCEEDED); a stream reports
initial metadata, each message, trailing metadata and its close.

The message of a close is what Envoy's async gRPC client reports (`close_message`): the grpc-message with the
HTTP stream's response-code details appended in braces -- "{via_upstream}" once the cluster answered, Envoy's
reset details when it could not be reached -- or the details alone when there was no message.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from meshplug.agent import grpcwire, relay, wire
from meshplug.agent.h2up import H2Pool
from meshplug.agent.upstream import Pool

Header = tuple[bytes, bytes]

#: the response-code details of a call the cluster answered (Envoy's ResponseCodeDetails ViaUpstream)
VIA_UPSTREAM = b"via_upstream"


def close_message(message: bytes, details: bytes) -> bytes:
    """A close's message as Envoy's async gRPC client reports it: `message{details}`, either alone if the
    other is empty."""
    if not message:
        return details
    if not details:
        return message
    return b"%b{%b}" % (message, details)


class Events(Protocol):
    """Where a call's outcome goes (one id per call)."""

    def initial_metadata(self, call_id: int, headers: list[Header]) -> None: ...

    def message(self, call_id: int, message: bytes) -> None: ...

    def trailing_metadata(self, call_id: int, trailers: list[Header]) -> None: ...

    def close(self, call_id: int, status: int, message: bytes) -> None: ...


class GrpcClientCall:
    """One gRPC call or stream to a cluster; the sink of its request."""

    __slots__ = (
        "deframer",
        "done",
        "events",
        "id",
        "reply",
        "req",
        "stream",
        "timer",
    )

    def __init__(self, call_id: int, events: Events, *, stream: bool) -> None:
        self.id = call_id
        self.events = events
        self.stream = stream
        self.req: relay.UpRequest | None = None
        self.deframer = grpcwire.Deframer()
        self.reply: bytes | None = None
        self.done = False
        self.timer: asyncio.TimerHandle | None = None

    def start(  # noqa: PLR0917 -- the call's parts
        self,
        pool: Pool,
        h2pool: H2Pool | None,
        authority: str,
        path: bytes,
        metadata: tuple[Header, ...],
        message: bytes | None,
        timeout_ms: int,
    ) -> None:
        headers: list[Header] = [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", path),
            (b":authority", authority.encode()),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
        ]
        if timeout_ms > 0:
            headers.append((b"grpc-timeout", b"%dm" % timeout_ms))
        headers += [h for h in metadata if h[0][:1] != b":" and h[0] not in wire.HOP_BY_HOP]
        req = self.req = relay.open_request(pool, h2pool, self)
        req.send_headers(headers, False)
        if message is not None:
            req.send_data(grpcwire.frame(message), True)
        if timeout_ms > 0:
            loop = asyncio.get_running_loop()
            self.timer = loop.call_later(timeout_ms / 1000.0, self._timed_out)

    def send(self, message: bytes, end_stream: bool) -> None:
        if self.req is not None and not self.done:
            self.req.send_data(grpcwire.frame(message), end_stream)

    def half_close(self) -> None:
        if self.req is not None and not self.done:
            self.req.send_data(b"", True)

    def cancel(self) -> None:
        """The plugin cancelled: reset, and nothing more is reported."""
        self.done = True
        self._stop()

    def _stop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        req, self.req = self.req, None
        if req is not None:
            req.cancel()

    def _timed_out(self) -> None:
        self.timer = None
        self._close(grpcwire.DEADLINE_EXCEEDED, b"", b"")

    def _close(self, status: int, message: bytes, details: bytes = VIA_UPSTREAM) -> None:
        """The call ended with `status` and the grpc-message `message`; `details`: how the HTTP stream ended
        (Envoy's response-code details: the cluster answered unless said otherwise)."""
        if self.done:
            return
        self.done = True
        self._stop()
        if not self.stream and status == grpcwire.OK and self.reply is not None:
            self.events.message(self.id, self.reply)  # a unary call's success is its response alone
        elif not self.stream and status == grpcwire.OK:
            self.events.close(self.id, grpcwire.INTERNAL, b"")  # an OK without a message (as Envoy: no text)
        else:
            self.events.close(self.id, status, close_message(message, details))

    # --- Sink ---
    def up_headers(self, status: int, reason: bytes, headers: wire.Headers, parser: Any) -> None:
        if self.done or status < 200:
            return
        if status != 200:
            self._close(grpcwire.http_to_grpc(status), b"")
            return
        if parser is wire.END_STREAM:  # trailers-only
            got = grpcwire.status_of(headers)
            if self.stream:
                self.events.trailing_metadata(self.id, list(headers))
            self._close(*(got or (grpcwire.UNKNOWN, b"")))
            return
        if self.stream:
            self.events.initial_metadata(self.id, list(headers))

    def up_body(self, data: bytes) -> None:
        if self.done:
            return
        messages = self.deframer.feed(data)
        for m in messages:
            if self.stream:
                self.events.message(self.id, m)
            elif self.reply is None:
                self.reply = m
        if self.deframer.error:  # (Envoy's decoder error has no message of its own)
            self._close(grpcwire.INTERNAL, b"")

    def up_trailers(self, trailers: wire.Headers) -> None:
        if self.done:
            return
        if self.stream:
            self.events.trailing_metadata(self.id, list(trailers))
        got = grpcwire.status_of(trailers)
        self._close(*(got or (grpcwire.UNKNOWN, b"")))

    def up_complete(self) -> None:
        if not self.done:  # ended without trailers
            self._close(grpcwire.INTERNAL if self.deframer.partial else grpcwire.UNKNOWN, b"")

    def up_failed(self, reset_reason: str) -> None:
        self.req = None
        self._close(grpcwire.UNAVAILABLE, wire.reset_body(reset_reason), wire.reset_details(reset_reason).encode())

    def up_pause(self) -> None:
        return None

    def up_resume(self) -> None:
        return None

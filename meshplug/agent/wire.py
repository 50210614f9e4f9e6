"""What the agent's HTTP/1.1 data path modules share: header and reply constants, Envoy's reset wording, the
Date and x-request-id generators, chunked-framing helpers, flow-control reasons and the debug switch.

Imported by every module of the data path (`downstream`, `exchange`, `filtered`, `upstream`, `tcp`, `server`);
imports nothing of theirs. Values that are per request are built once here (status bytes, the Date of the
current second) so the per-request modules only look them up.
"""

from __future__ import annotations

import asyncio
import binascii
import email.utils
import errno
import http
import itertools
import logging
import os
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Final

log = logging.getLogger("meshplug.agent")

Headers = list[tuple[bytes, bytes]]

#: request/response headers that describe one hop only (RFC 9110 7.6.1) and are never forwarded
HOP_BY_HOP: Final = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade"}
)
#: the hop-by-hop headers a request's upstream head leaves out: all but Trailer, which Envoy 1.40 forwards (its
#: request header map keeps it; found by the HTTP/2 fuzzer, true of HTTP/1.1 too)
REQUEST_HOP_BY_HOP: Final = HOP_BY_HOP - {b"trailer"}
#: the methods whose bodiless request Envoy 1.40's HTTP/1.1 encoder writes without a length; any other bodiless
#: request (POST, PUT, OPTIONS, PATCH, ...) goes upstream with content-length: 0 (probed through Envoy: found.yaml and
#: found_h2.yaml h2fuzz-*-content-length-zero)
BODILESS_METHODS: Final = frozenset({b"GET", b"HEAD", b"DELETE"})
#: request headers never forwarded: hop-by-hop ones, and a client's X-Forwarded-Client-Cert (Envoy's default
#: forward_client_cert_details SANITIZE: only the proxy may vouch for a client certificate)
REQUEST_DROPPED: Final = HOP_BY_HOP | {b"x-forwarded-client-cert"}
#: response headers an HTTP/1.1 response does not pass on: the hop-by-hop ones but TE and Trailer, which Envoy 1.40
#: relays from an HTTP/1.1 upstream (and writes when a plugin adds them)
RESPONSE_DROPPED: Final = HOP_BY_HOP - {b"te", b"trailer"}
#: the reason phrase Envoy 1.40 writes for a status (its code table, probed through Envoy for 200-599: the IANA names,
#: not Python's older ones; no name for 418 and 451; "Unknown" for any code without one), whatever the upstream sent
REASONS: Final = {
    **{s.value: s.phrase.encode() for s in http.HTTPStatus if s.value not in (418, 451)},
    413: b"Payload Too Large",
    414: b"URI Too Long",
    416: b"Range Not Satisfiable",
    599: b"Last Unassigned Server Error Code",
}

#: Envoy 1.40's reset reasons (Http::Utility::resetReasonToString) as its router words them; a connect failure's
#: carries the transport failure reason after "|" (`connect_failure`), which only the details show
RESET_CONNECT_FAILURE: Final = "remote connection failure"
RESET_CONNECT_TIMEOUT: Final = "connection timeout"
RESET_TERMINATION: Final = "connection termination"
RESET_PROTOCOL: Final = "protocol error"
RESET_REMOTE: Final = "remote reset"
RESET_REFUSED: Final = "remote refused stream reset"
RESET_OVERFLOW: Final = "overflow"
BODY_TIMEOUT: Final = b"upstream request timeout"
#: connect(2) errors a non-blocking connect returns at once (Envoy: "immediate connect error"); others come later
_IMMEDIATE_CONNECT_ERRORS: Final = frozenset(
    {errno.ENETUNREACH, errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT, errno.EACCES, errno.EPERM}
)


def connect_failure(exc: BaseException) -> str:
    """The reset reason of a connect that failed with `exc`, as Envoy's connection pool gives it: a timeout is
    "connection timeout"; a refusal (any socket error) "remote connection failure" with the transport failure
    reason ("delayed connect error: Connection refused", the errno's text)."""
    if isinstance(exc, TimeoutError):
        return RESET_CONNECT_TIMEOUT
    code = getattr(exc, "errno", None)
    if not isinstance(code, int):
        return RESET_CONNECT_FAILURE
    when = "immediate" if code in _IMMEDIATE_CONNECT_ERRORS else "delayed"
    return f"{RESET_CONNECT_FAILURE}|{when} connect error: {os.strerror(code)}"


def is_connect_failure(reason: str) -> bool:
    """Whether the reset reason `reason` is a connect's failure (no request went out)."""
    return reason == RESET_CONNECT_TIMEOUT or reason.startswith(RESET_CONNECT_FAILURE)


def reset_body(reason: str) -> bytes:
    """The router's local reply body for a reset before the response (the transport failure reason left out)."""
    reason = reason.partition("|")[0]
    return f"upstream connect error or disconnect/reset before headers. reset reason: {reason}".encode()


#: how proxy-generated replies are described to plugins (response.code_details / response.flags), as Envoy's router
DETAILS_TIMEOUT: Final = "response_timeout"
#: the client's connection ended before its answer (response flag DC)
DETAILS_DOWNSTREAM_DISCONNECT: Final = "downstream_remote_disconnect"
#: the client reset its HTTP/2 stream (response flag DR)
DETAILS_H2_REMOTE_RESET: Final = "http2.remote_reset"


def reset_details(reason: str, *, started: bool = False) -> str:
    """response.code_details for an upstream reset before (or, `started`, after) the response began: the reason
    (with its transport failure reason), spaces as underscores."""
    when = "after" if started else "before"
    return f"upstream_reset_{when}_response_started{{{reason.replace(' ', '_')}}}"


class DateCache:
    """RFC 9110 Date header value, formatted at most once per second."""

    __slots__ = ("_second", "_value")

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def get(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = email.utils.formatdate(now, usegmt=True).encode()
        return self._value


DATE: Final = DateCache()


_hexlify: Final = binascii.hexlify


class RequestIds:
    """x-request-id values shaped like a UUID4: a random per-process prefix, then a counter in the last
    48 bits. Unique per process by construction, across processes by the ~62 random bits of the prefix;
    costs one %-format per request instead of uuid4()'s urandom + UUID object + str()."""

    __slots__ = ("_next", "_prefix")

    def __init__(self) -> None:
        u = uuid.uuid4().hex
        self._prefix = f"{u[:8]}-{u[8:12]}-4{u[13:16]}-{'89ab'[int(u[16], 16) & 3]}{u[17:20]}-".encode()
        self._next = itertools.count(int(u[20:32], 16)).__next__

    def new(self) -> bytes:
        # (12 hex digits as the hex of 6 bytes: %012x is generic formatting, ~1.5k instructions compiled)
        return self._prefix + _hexlify((self._next() & 0xFFFFFFFFFFFF).to_bytes(6, "big"))


REQUEST_IDS: Final = RequestIds()


class ConnTimer:
    """A connection's one lazy timer (HTTP/1.1 `Downstream` and HTTP/2 `H2Downstream`): it fires by the
    earliest deadline it was asked for (`wake_at`) and calls `fire`, which checks every deadline of the
    connection and asks again for what is still pending. Deadlines move without touching the timer, so a
    request costs no timer handle; `idle_at` is the connection's idle deadline (0: busy)."""

    __slots__ = ("at", "fire", "handle", "idle_at", "loop", "stopped")

    def __init__(self, loop: asyncio.AbstractEventLoop, fire: Callable[[], None]) -> None:
        self.loop = loop
        self.fire = fire
        self.handle: asyncio.TimerHandle | None = None
        self.at = 0.0
        self.idle_at = 0.0
        self.stopped = False

    def wake_at(self, when: float) -> None:
        """Fire by loop time `when` at the latest."""
        handle = self.handle
        if handle is None or when < self.at:
            if handle is not None:
                handle.cancel()
            if self.stopped:
                self.handle = None
                return
            self.at = when
            self.handle = self.loop.call_at(when, self._fired)

    def arm_idle(self, timeout_s: float) -> None:
        """The connection is idle from now: it is closed `timeout_s` later unless busy again (idle_at = 0)."""
        self.idle_at = at = self.loop.time() + timeout_s
        self.wake_at(at)

    def stop(self) -> None:
        """The connection is gone (or handed over): no more firing; its callback is let go (the connection ->
        timer -> bound method -> connection cycle ends here: the connection is freed by its reference count)."""
        self.stopped = True
        self.fire = _never
        self.idle_at = 0.0
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None

    def _fired(self) -> None:
        self.handle = None
        if not self.stopped:
            self.fire()


def _never() -> None:
    """A stopped timer's callback (never called: `ConnTimer._fired` checks `stopped`)."""


#: ":status" values by code, encoded once
STATUS_BYTES: Final = {code: str(code).encode() for code in range(100, 600)}
SCHEME_HTTP: Final = (b":scheme", b"http")

#: downstream connection ids (HTTP and TCP listeners share the sequence, as Envoy's connection ids)
CONNECTION_IDS: Final = itertools.count(1)
#: whether the data path logs per-exchange details (read once per start/level change, not per call)
DEBUG: Final = [False]


def refresh_debug() -> None:
    """Re-read whether debug logging of the data path is on (called at start and when the level changes)."""
    DEBUG[0] = log.isEnabledFor(logging.DEBUG)


def close_delimited(method: bytes, status: int, headers: Headers) -> bool:
    """A response whose body runs until the upstream closes (no length, not chunked; RFC 9112 6.3)."""
    if method == b"HEAD" or status in (204, 304) or status < 200:
        return False
    for name, value in headers:
        if name == b"content-length" or (name == b"transfer-encoding" and b"chunked" in value.lower()):
            return False
    return True


#: why a downstream connection stopped reading (bits of Downstream's pause mask)
PAUSE_UPSTREAM_FULL: Final = 1  # upstream write buffer full
PAUSE_BUFFER: Final = 2  # body buffered while waiting for an upstream connection
PAUSE_PIPELINE: Final = 4  # a complete request is waiting for its response

#: `Sink.up_headers`' last argument when the response ended with its head (HTTP/2 HEADERS with END_STREAM)
END_STREAM: Final = object()


#: data up to this size is copied into one piece with what frames it (one small write); larger data is written
#: as is beside its framing (a vectored write: a large body is not copied on its way out)
JOIN_MAX: Final = 16 * 1024


def chunk_parts(data: bytes) -> list[bytes]:
    """`data` (not empty) as one chunk of a chunked HTTP/1.1 body (RFC 9112 7.1): one piece when small, else
    its size line, the data itself and the CRLF."""
    if len(data) <= JOIN_MAX:
        return [b"%x\r\n%b\r\n" % (len(data), data)]
    return [b"%x\r\n" % len(data), data, b"\r\n"]


def send_parts(transport: asyncio.WriteTransport, parts: list[bytes]) -> None:
    """Write `parts` (at least one): small ones joined into one write, large ones vectored without a copy."""
    if len(parts) == 1:
        transport.write(parts[0])
        return
    total = 0
    for part in parts:
        total += len(part)
    if total <= JOIN_MAX:
        transport.write(b"".join(parts))
    else:
        transport.writelines(parts)


#: header fields never forwarded as trailers (framing, routing; RFC 9110 6.5.1)
NOT_TRAILERS: Final = HOP_BY_HOP | {b"content-length", b"host"}
LAST_CHUNK: Final = b"0\r\n\r\n"


def last_chunk(trailers: Sequence[tuple[bytes, bytes]], enabled: bool) -> bytes:
    """The end of a chunked body carrying `trailers` (RFC 9112 7.1.2) when the connection's HTTP/1.1 codec has
    trailers `enabled` (Envoy's http_protocol_options.enable_trailers; without it Envoy drops them)."""
    if not enabled:
        return LAST_CHUNK
    lines = [b"%b: %b\r\n" % (n, v) for n, v in trailers if n[:1] != b":" and n not in NOT_TRAILERS]
    return b"0\r\n%b\r\n" % b"".join(lines) if lines else LAST_CHUNK

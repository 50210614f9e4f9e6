"""The work the wasm host hands to the agent's I/O shell and what comes back: plugins' HTTP calls, gRPC calls
and streams (`meshplug.agent.host.Host.take_http_calls` / `take_grpc_work`), and their log lines.

Records only (frozen dataclasses); made by meshplug.agent.host, read by meshplug.agent.filters. Those made per
request (an HTTP call and its result, a log line) write out their ``__init__`` so that mypyc compiles it (see
meshplug.agent.streamapi.LocalReply).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from meshplug.agent.streamapi import Header


@dataclass(frozen=True, init=False)
class HttpCallout:
    """An HTTP call a plugin dispatched (proxy_http_call); the shell performs it against `upstream`."""

    id: int
    upstream: str
    headers: tuple[Header, ...]
    body: bytes
    trailers: tuple[Header, ...]
    timeout_ms: int

    def __init__(  # noqa: PLR0917 - the record's fields, positional as its generated __init__ took them
        self,
        id: int,
        upstream: str,
        headers: tuple[Header, ...],
        body: bytes,
        trailers: tuple[Header, ...],
        timeout_ms: int,
    ) -> None:
        object.__setattr__(self, "id", id)
        object.__setattr__(self, "upstream", upstream)
        object.__setattr__(self, "headers", headers)
        object.__setattr__(self, "body", body)
        object.__setattr__(self, "trailers", trailers)
        object.__setattr__(self, "timeout_ms", timeout_ms)


@dataclass(frozen=True, init=False)
class HttpCalloutResult:
    headers: tuple[Header, ...]
    body: bytes
    trailers: tuple[Header, ...]

    def __init__(self, headers: tuple[Header, ...], body: bytes = b"", trailers: tuple[Header, ...] = ()) -> None:
        object.__setattr__(self, "headers", headers)
        object.__setattr__(self, "body", body)
        object.__setattr__(self, "trailers", trailers)


@dataclass(frozen=True)
class GrpcCallout:
    """A gRPC call (`message` set) or stream (`message` None) a plugin opened (proxy_grpc_call /
    proxy_grpc_stream); the shell performs it against `cluster` and reports back through `Host.grpc_*`."""

    id: int
    cluster: str
    authority: str
    service: bytes
    method: bytes
    metadata: tuple[Header, ...]
    message: bytes | None
    timeout_ms: int


@dataclass(frozen=True)
class GrpcSend:
    """A message on an open gRPC stream (proxy_grpc_send); `end_stream` half-closes it."""

    id: int
    message: bytes
    end_stream: bool


@dataclass(frozen=True)
class GrpcEnd:
    """proxy_grpc_cancel (`cancel`: reset, nothing more is delivered) or proxy_grpc_close on a stream
    (half-close: the server's messages and close still arrive)."""

    id: int
    cancel: bool


GrpcWork = GrpcCallout | GrpcSend | GrpcEnd


@dataclass(frozen=True, init=False)
class LogRecord:
    plugin: str
    level: int
    message: str
    #: when it was logged (CLOCK_MONOTONIC, one clock for every process: the workers' records merge in time order)
    at: int

    def __init__(self, plugin: str, level: int, message: str, at: int | None = None) -> None:
        object.__setattr__(self, "plugin", plugin)
        object.__setattr__(self, "level", level)
        object.__setattr__(self, "message", message)
        object.__setattr__(self, "at", time.monotonic_ns() if at is None else at)

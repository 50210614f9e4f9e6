"""A real gRPC server of the test bed (grpcio, h2c) and the client calls the tests make with grpcio.

Run as `python tests/testbed/grpcpeer.py PORT`; from tests, `start_server(log_dir=...)` starts it as its own
process. Messages are raw bytes (no protobuf schema: grpcio's generic handlers), service `meshplug.test.Echo`:

Unary         returns the request; initial metadata `x-initial: i`, trailing metadata `x-trailer: t`.
              `fail:<code>:<message>` aborts with that status code and message; `sleep:<seconds>` answers
              `slept` after sleeping (deadline tests); `metadata` answers the invocation metadata as JSON,
              `md:<name>` the value of that metadata entry (`<absent>` without one).
ServerStream  `<n>` -> n messages `msg-0` .. `msg-<n-1>`, then `x-trailer: t`.
ClientStream  the messages joined with `,`.
Bidi          each message upper-cased as it arrives; `fail:<code>:<message>` aborts.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

if __package__ in (None, ""):  # run as a script: make `tests.testbed` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.testbed import procs

SERVICE = "meshplug.test.Echo"
METHODS = ("Unary", "ServerStream", "ClientStream", "Bidi")


def _abort_if_failure(message: bytes, context: grpc.ServicerContext) -> None:
    if message.startswith(b"fail:"):
        _, code, text = message.decode().split(":", 2)
        status = next(s for s in grpc.StatusCode if s.value[0] == int(code))
        context.abort(status, text)


def _unary(request: bytes, context: grpc.ServicerContext) -> bytes:
    _abort_if_failure(request, context)
    if request.startswith(b"sleep:"):
        time.sleep(float(request[6:]))
        return b"slept"
    if request.startswith(b"md:"):
        wanted = request[3:].decode()
        values = [v for k, v in context.invocation_metadata() if k == wanted]
        return str(values[0]).encode() if values else b"<absent>"
    if request == b"metadata":
        return json.dumps(
            sorted([k, v if isinstance(v, str) else v.hex()] for k, v in context.invocation_metadata())
        ).encode()
    context.send_initial_metadata((("x-initial", "i"),))
    context.set_trailing_metadata((("x-trailer", "t"),))
    return request


def _server_stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    _abort_if_failure(request, context)
    context.set_trailing_metadata((("x-trailer", "t"),))
    for i in range(int(request)):
        yield b"msg-%d" % i


def _client_stream(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
    return b",".join(requests)


def _bidi(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
    context.set_trailing_metadata((("x-trailer", "t"),))
    for message in requests:
        _abort_if_failure(message, context)
        yield message.upper()


def serve(port: int) -> None:
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(_unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(_server_stream),
            "ClientStream": grpc.stream_unary_rpc_method_handler(_client_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(_bidi),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print(f"grpc {SERVICE} listening on 127.0.0.1:{port}", flush=True)
    server.wait_for_termination()


# --- client side (tests) -------------------------------------------------------------------------


@dataclass
class Outcome:
    """What a client saw of one call: status, details, metadata both ways, messages."""

    code: grpc.StatusCode
    details: str
    initial: list[tuple[str, str]] = field(default_factory=list)
    trailing: list[tuple[str, str]] = field(default_factory=list)
    messages: list[bytes] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """The parts two data planes must agree on (x-* metadata; Envoy's own x-envoy-* headers aside)."""

        def ours(md: list[tuple[str, str]]) -> list[tuple[str, str]]:
            return sorted(m for m in md if m[0].startswith("x-") and not m[0].startswith("x-envoy-"))

        return {
            "code": self.code.name,
            "details": self.details,
            "initial": ours(self.initial),
            "trailing": ours(self.trailing),
            "messages": self.messages,
        }


def _pairs(md: Any) -> list[tuple[str, str]]:
    return [(k, v if isinstance(v, str) else v.hex()) for k, v in (md or ())]


def call(
    port: int,
    method: str,
    messages: Sequence[bytes],
    *,
    metadata: Sequence[tuple[str, str]] = (),
    timeout: float | None = 10.0,
) -> Outcome:
    """One call of `method` through 127.0.0.1:`port` with grpcio; never raises for a gRPC status."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        path = f"/{SERVICE}/{method}"
        md = tuple(metadata)
        try:
            if method == "Unary":
                fn = channel.unary_unary(path)
                reply, rpc = fn.with_call(messages[0], metadata=md, timeout=timeout)
                return Outcome(rpc.code(), rpc.details() or "", _pairs(rpc.initial_metadata()),
                               _pairs(rpc.trailing_metadata()), [reply])  # fmt: skip
            if method == "ClientStream":
                fn_cs = channel.stream_unary(path)
                reply, rpc = fn_cs.with_call(iter(messages), metadata=md, timeout=timeout)
                return Outcome(rpc.code(), rpc.details() or "", _pairs(rpc.initial_metadata()),
                               _pairs(rpc.trailing_metadata()), [reply])  # fmt: skip
            if method == "ServerStream":
                stream = channel.unary_stream(path)(messages[0], metadata=md, timeout=timeout)
            else:
                stream = channel.stream_stream(path)(iter(messages), metadata=md, timeout=timeout)
            got: list[bytes] = []
            with contextlib.suppress(grpc.RpcError):
                got.extend(stream)
            return Outcome(stream.code(), stream.details() or "", _pairs(stream.initial_metadata()),
                           _pairs(stream.trailing_metadata()), got)  # fmt: skip
        except grpc.RpcError as exc:
            rpc_exc: Any = exc
            return Outcome(rpc_exc.code(), rpc_exc.details() or "", _pairs(rpc_exc.initial_metadata()),
                           _pairs(rpc_exc.trailing_metadata()), [])  # fmt: skip


def start_server(*, log_dir: Path, name: str = "grpc") -> procs.Peer:
    return procs.start_peer(Path(__file__).resolve(), name=name, log_dir=log_dir)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: grpcpeer.py PORT")
    with contextlib.suppress(KeyboardInterrupt):
        serve(int(sys.argv[1]))

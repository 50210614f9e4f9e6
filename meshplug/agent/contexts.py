"""The proxy-wasm host's stream contexts: `HttpContext` (one plugin on one HTTP stream, the chain's filter
stream) and `TcpStream` (one network plugin on one TCP connection), and the stream of a failed FAIL_CLOSE
plugin.

Made by meshplug.agent.plugin.Plugin; the chain (meshplug.agent.stream) calls an HttpContext's callbacks, which
call the guest through their VM (meshplug.agent.wasmvm). The callbacks a module does not export cost nothing
(resolved once per VM); a context is created in the guest lazily, at its first callback.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from meshplug.agent import hostapi, streamapi
from meshplug.agent.hostapi import (
    KIND_HTTP,
    KIND_TCP,
    Context,
    RootContext,
)
from meshplug.agent.streamapi import Action, Direction, LocalReply
from meshplug.agent.wasmvm import WasmVm

if TYPE_CHECKING:
    from meshplug.agent.plugin import Plugin

Headers = streamapi.Headers

#: proxy-wasm body results 0-2 (3 and above: StopIterationNoBuffer)
_BODY_ACTIONS: Final = (Action.CONTINUE, Action.BUFFER, Action.WATERMARK)
_CONTINUE: Final = Action.CONTINUE
_REQUEST: Final = Direction.REQUEST
_RESPONSE: Final = Direction.RESPONSE


def _body_direction(buffer_type: int) -> Direction | None:
    """The body an HTTP context's buffer of `buffer_type` is (None: not a body)."""
    if buffer_type == hostapi.BUF_HTTP_REQUEST_BODY:
        return _REQUEST
    if buffer_type == hostapi.BUF_HTTP_RESPONSE_BODY:
        return _RESPONSE
    return None


class HttpContext(Context):
    """One plugin's context for one HTTP stream; implements streamapi.FilterStream."""

    def __init__(self, vm_: WasmVm, root: RootContext, control: streamapi.StreamControl, plugin: Plugin) -> None:
        super().__init__(vm_, 0, root, KIND_HTTP)
        self.wvm = vm_
        self.control = control
        #: the stream's header lists (the chain keeps each list's identity for the stream's life), by direction
        self.maps = (control.headers(_REQUEST), control.headers(_RESPONSE))
        self.created = False
        self.plugin_ref = plugin
        self.generation = plugin.generation
        self.eos_body: Direction | None = None  # inside the end-of-stream body callback of this direction
        # request_headers_attached (hostapi.Context): Envoy attaches the request headers to the context only
        # from on_request_headers until it continues (and again in the access-log phase): header-derived
        # request.* properties follow. response_headers_attached: the same for the response headers, from
        # on_response_headers until it continues, and in on_log (response.headers.* NotFound in
        # on_response_body; checked against Envoy 1.40)

    # map/buffer access for shims
    def header_map(self, map_type: int) -> Headers | None:
        if map_type == hostapi.MAP_REQUEST_HEADERS:
            return self.maps[0]
        if map_type == hostapi.MAP_REQUEST_TRAILERS:
            return self._trailers(Direction.REQUEST)
        if map_type == hostapi.MAP_RESPONSE_HEADERS:
            return self.maps[1]
        if map_type == hostapi.MAP_RESPONSE_TRAILERS:
            return self._trailers(Direction.RESPONSE)
        return self.root.maps.get(map_type)

    def _trailers(self, direction: Direction) -> Headers | None:
        """The trailers once they exist; a plugin may create them only in its end-of-stream body callback
        (Envoy's getMap: addDecodedTrailers / addEncodedTrailers), elsewhere there is no map."""
        trailers = self.control.trailers(direction)
        return trailers if trailers or self.eos_body == direction else None

    def buffer(self, buffer_type: int) -> bytes | bytearray | None:
        return self.writable_buffer(buffer_type) or self.root.buffer(buffer_type)

    def writable_buffer(self, buffer_type: int) -> bytearray | None:
        direction = _body_direction(buffer_type)
        return None if direction is None else self.control.body(direction)

    def buffer_parts(self, buffer_type: int) -> tuple[int, list[bytes | bytearray]] | None:
        # as `buffer`: a body while it is not empty, else the root's buffer of that type
        direction = _body_direction(buffer_type)
        if direction is not None and (size := self.control.body_size(direction)):
            return size, self.control.body_parts(direction)
        return self.root.buffer_parts(buffer_type)

    def writable_size(self, buffer_type: int) -> int | None:
        direction = _body_direction(buffer_type)
        return None if direction is None else self.control.body_size(direction)

    def replaces_whole(self, buffer_type: int) -> bool:
        return buffer_type in (hostapi.BUF_HTTP_REQUEST_BODY, hostapi.BUF_HTTP_RESPONSE_BODY)

    def replace_buffer(self, buffer_type: int, data: bytes) -> None:
        direction = Direction.REQUEST if buffer_type == hostapi.BUF_HTTP_REQUEST_BODY else Direction.RESPONSE
        self.control.replace_body(direction, data)

    def stream_info(self) -> streamapi.StreamInfo:
        return self.control.info

    def stream_control(self) -> streamapi.StreamControl:
        return self.control

    def clear_route_cache(self) -> None:
        self.control.clear_route_cache()

    # stream actions for the imports (run after the guest call returns)
    def continue_stream(self, stream_type: int) -> int:
        if stream_type > hostapi.STREAM_RESPONSE:
            return hostapi.BAD_ARGUMENT
        control = self.control
        direction = Direction.REQUEST if stream_type == hostapi.STREAM_REQUEST else Direction.RESPONSE
        self.wvm.defer(lambda: control.resume(direction))
        return hostapi.OK

    def close_stream(self, stream_type: int) -> int:
        if stream_type > hostapi.STREAM_RESPONSE:
            return hostapi.BAD_ARGUMENT
        self.wvm.defer(self.control.close)
        return hostapi.OK

    def send_local_response(self, reply: LocalReply) -> int:
        # cpp-host's stopNextIteration is VM-wide and cleared when the VM call returns: it forces the stream
        # callback in flight to stop, whichever context the reply is for; a reply sent from a root callback
        # (proxy_on_http_call_response with the effective context set) forces nothing -- the stream's next
        # callback, the reply's own on_response_headers, keeps its own result
        current = self.wvm.current
        if current is not None and current.kind == KIND_HTTP:
            current.local_reply_sent = True
        control = self.control
        self.wvm.defer(lambda: control.send_local_reply(reply))
        return hostapi.OK

    # streamapi.FilterStream
    def _alive(self) -> bool:
        return self.wvm.failed is None and not self.deleted and self.generation == self.plugin_ref.generation

    def _ensure(self) -> bool:
        wvm = self.wvm
        if (
            wvm.failed is not None
            or self.deleted
            or self.generation != self.plugin_ref.generation
            or not wvm.http_capable
        ):
            # a root-only module installed as an HTTP filter: Envoy answers 503 (fail strategy applies)
            return False
        if not self.created:
            self.created = True
            self.id = wvm.next_id()
            cid: object = self.id
            self.cid = cid  # boxed once: every guest call of the stream passes this object
            wvm.contexts[self.id] = self
            fn = wvm.cb.context_create
            if fn is not None and wvm.call_n(self, fn, 2, cid, self.root.cid) < 0:
                return False
        return True

    def _ready(self) -> bool:
        """`_ensure()`, with the common case (created, alive) in one test."""
        if self.created and self.wvm.failed is None and not self.deleted:
            return self.generation == self.plugin_ref.generation
        return self._ensure()

    def on_headers(self, direction: Direction, end_stream: bool) -> Action:
        if not self._ready():
            return Action.FAIL
        wvm = self.wvm
        cb = wvm.cb
        request = direction is _REQUEST  # an identity test: no enum indexing per callback
        fn = cb.headers[0] if request else cb.headers[1]
        if fn is None:  # not exported: nothing to call (Envoy calls only exported callbacks)
            return Action.CONTINUE
        n = len(self.maps[0] if request else self.maps[1])
        if request:
            self.request_headers_attached = True
        else:
            self.response_headers_attached = True
        if cb.headers_eos[0] if request else cb.headers_eos[1]:
            r = wvm.call_n(self, fn, 3, self.cid, n, 1 if end_stream else 0)
        else:
            r = wvm.call_n(self, fn, 2, self.cid, n)
        if (r == 0 or r == 2) and not self.local_reply_sent:  # noqa: PLR1714 -- ints: == is the cheap test
            # continue (2, ContinueAndEndStream, ends up as continue in Envoy): detach the headers again
            if request:
                self.request_headers_attached = False
            else:
                self.response_headers_attached = False
            return _CONTINUE
        action = self._action(r, body=False)
        if action is _CONTINUE:
            if request:
                self.request_headers_attached = False
            else:
                self.response_headers_attached = False
        return action

    def on_body(self, direction: Direction, size: int, end_stream: bool) -> Action:
        if not self._ready():
            return Action.FAIL
        wvm = self.wvm
        fn = wvm.cb.body[0] if direction is _REQUEST else wvm.cb.body[1]
        if fn is None:
            return _CONTINUE
        if not end_stream:
            return self._action(wvm.call_n(self, fn, 3, self.cid, size, 0), body=True)
        self.eos_body = direction
        try:
            r = wvm.call_n(self, fn, 3, self.cid, size, 1)
        finally:
            self.eos_body = None
        if r == 0 and not self.local_reply_sent:
            return _CONTINUE
        return self._action(r, body=True)

    def on_trailers(self, direction: Direction) -> Action:
        if not self._ready():
            return Action.FAIL
        fn = self.wvm.cb.trailers[0] if direction is _REQUEST else self.wvm.cb.trailers[1]
        if fn is None:
            return Action.CONTINUE
        return self._action(self.wvm.call_n(self, fn, 2, self.cid, len(self.control.trailers(direction))), body=False)

    def _action(self, r: int, *, body: bool) -> Action:
        """Map a callback's result (-1: the VM failed) to the chain's Action (ABI ref. 1.7)."""
        sent, self.local_reply_sent = self.local_reply_sent, False
        if r < 0:
            return Action.FAIL
        if sent:  # a local reply sent in this callback forces "stop" (cpp-host)
            return Action.STOP
        if body:  # as Envoy's Context::onRequestBody / onResponseBody map them
            return _BODY_ACTIONS[r] if r < 3 else Action.NO_BUFFER
        # headers: 2 (ContinueAndEndStream) ends up as continue in Envoy; every other non-zero stops all
        return Action.CONTINUE if r in (0, 2) else Action.STOP

    def on_vm_failed(self) -> None:
        if self.created and not self.deleted:
            self.control.fail()

    def on_complete(self) -> None:
        if self.deleted:
            return
        self.completed_ns = self.control.completed_ns  # request.duration (Envoy: requestComplete, known at on_log)
        # Envoy's access-log phase sees the request and response headers again
        self.request_headers_attached = self.response_headers_attached = True
        if not self.created and not self._ensure():
            # Envoy's access-log hook creates the context of a filter the request never reached
            # (a local reply or reset before it) so that on_log / on_done / on_delete stay balanced
            return
        wvm = self.wvm
        # Envoy HTTP order: access log, then done, then delete (the exported ones: cb.end), while the context is
        # alive: a failure in one skips the rest
        if wvm.cb.end and self._alive():
            wvm.call_each(self, wvm.cb.end, self.cid)
        self.deleted = True
        # one lookup: compiled, `pop(id, None)` is a method call by name (~0.2k instructions more), and
        # contextlib.suppress a context manager's calls
        try:  # noqa: SIM105
            del wvm.contexts[self.id]
        except KeyError:  # not there (defensive: a created context is entered until here)
            pass
        if wvm.recycle:  # the VM waits for its streams to end: maybe this was the last
            wvm.owner._wake()


@dataclass(frozen=True)
class ConnectionInfo:
    """What a network (L4) plugin may read as properties."""

    stream: streamapi.StreamInfo = field(default_factory=streamapi.StreamInfo)


class TcpStream(Context):
    """One plugin's context for one TCP connection (network filter callbacks, sans-IO).

    `on_downstream_data(data, end_stream)` / `on_upstream_data(...)` return (Action, bytes to forward):
    CONTINUE forwards the (possibly modified) buffered bytes, STOP keeps them buffered for the next call.
    """

    def __init__(self, vm_: WasmVm, root: RootContext, info: streamapi.StreamInfo) -> None:
        super().__init__(vm_, vm_.next_id(), root, KIND_TCP)
        self.wvm = vm_
        self.info = info
        self.downstream = bytearray()
        self.upstream = bytearray()
        self.closed = False
        self.resumed: set[int] = set()
        vm_.contexts[self.id] = self

    def writable_buffer(self, buffer_type: int) -> bytearray | None:
        if buffer_type == hostapi.BUF_DOWNSTREAM_DATA:
            return self.downstream
        if buffer_type == hostapi.BUF_UPSTREAM_DATA:
            return self.upstream
        return None

    def buffer(self, buffer_type: int) -> bytes | bytearray | None:
        return self.writable_buffer(buffer_type) or self.root.buffer(buffer_type)

    def stream_info(self) -> streamapi.StreamInfo:
        return self.info

    def set_upstream_fields(self, fields: dict[str, object]) -> None:
        self.info = streamapi.replace_info(self.info, fields)

    def continue_stream(self, stream_type: int) -> int:
        if stream_type > hostapi.STREAM_UPSTREAM:
            return hostapi.BAD_ARGUMENT
        if stream_type == hostapi.STREAM_UPSTREAM:
            return hostapi.UNIMPLEMENTED
        self.resumed.add(stream_type)
        return hostapi.OK

    def close_stream(self, stream_type: int) -> int:
        if stream_type > hostapi.STREAM_UPSTREAM:
            return hostapi.BAD_ARGUMENT
        self.closed = True
        return hostapi.OK

    def start(self) -> Action:
        if not self.wvm.invoke(self, "proxy_on_context_create", self.id, self.root.id):
            return Action.FAIL
        # Envoy's tcp_proxy picks its cluster in its own on_new_connection, after the plugins': none yet
        info = self.info
        self.info = streamapi.replace_info(info, {"cluster_name": ""})
        ok, r = self.wvm.call(self, "proxy_on_new_connection", self.id)
        self.info = info
        return Action.FAIL if not ok else (Action.CONTINUE if not r else Action.STOP)

    def _data(self, buf: bytearray, name: str, data: bytes, end_stream: bool) -> tuple[Action, bytes]:
        buf += data
        ok, r = self.wvm.call(self, name, self.id, len(buf), int(end_stream))
        if not ok:
            return Action.FAIL, b""
        if r:
            return Action.STOP, b""
        out = bytes(buf)
        buf.clear()
        return Action.CONTINUE, out

    def on_downstream_data(self, data: bytes, end_stream: bool) -> tuple[Action, bytes]:
        return self._data(self.downstream, "proxy_on_downstream_data", data, end_stream)

    def on_upstream_data(self, data: bytes, end_stream: bool) -> tuple[Action, bytes]:
        return self._data(self.upstream, "proxy_on_upstream_data", data, end_stream)

    def on_close(self, peer: str, peer_type: int = 2) -> None:
        name = "proxy_on_downstream_connection_close" if peer == "downstream" else "proxy_on_upstream_connection_close"
        self.wvm.invoke(self, name, self.id, peer_type)

    def finish(self) -> None:
        if not self.deleted:
            # cpp-host network order: done, log, delete
            self.wvm.invoke(self, "proxy_on_done", self.id)
            self.wvm.invoke(self, "proxy_on_log", self.id)
            self.wvm.invoke(self, "proxy_on_delete", self.id)
            self.deleted = True
            self.wvm.contexts.pop(self.id, None)


class FailedStream(streamapi.NativeFilterStream):
    """A stream on a failed FAIL_CLOSE plugin: every callback reports the failure (chain answers 503)."""

    def on_headers(self, direction: Direction, end_stream: bool) -> Action:
        return Action.FAIL

    def on_body(self, direction: Direction, size: int, end_stream: bool) -> Action:
        return Action.FAIL

    def on_trailers(self, direction: Direction) -> Action:
        return Action.FAIL

    def on_complete(self) -> None:
        return None

"""The proxy-wasm host: VMs, plugin lifecycle, contexts, and the process-wide state plugins share.

Called by the agent's I/O shell (meshplug.agent.server and its chain builder). Usage::

    host = Host(upstreams={"auth", "cache"}, node={"NAME": "pod-1", "NAMESPACE": "ns"})
    plugin = host.load(PluginConfig(name="ns.add-header", root_id="add_header", configuration=b"{...}",
                                    fail_strategy=FailStrategy.FAIL_OPEN, phase=Phase.AUTHN), module_bytes)
    chain = meshplug.agent.chain.Chain([plugin, ...])     # Plugin implements chain.Filter
    ... per request: chain.new_stream(...) (see chain.py) ...
    # async work the shell performs and feeds back (host.on_wakeup() is called when there is new work):
    for call in host.take_http_calls():  # HttpCallout(id, upstream, headers, body, trailers, timeout_ms)
        ... later: host.complete_http_call(call.id, HttpCalloutResult(headers, body, trailers) or None)
    host.next_timer() -> monotonic deadline | None ;  host.run_timers(now)
    host.run_deferred()                  # shared-queue notifications (never delivered inline)
    conn = plugin.new_connection(info)   # network (L4) plugins: TcpStream.on_downstream_data(...) etc.
    host.close()

Lifecycle as Envoy drives it (docs/proxy-wasm-abi.md §4): per VM instantiate, `_initialize` (+`main(0,0)` or
`__main_void`) else `_start` (proc_exit(0) there is success); per plugin `proxy_on_context_create(root, 0)`,
`proxy_on_vm_start`, `proxy_on_configure`; stream contexts created lazily at the first callback; request/
response callbacks with the arity of the module's own exports; end of stream `on_log`, `on_done`,
`on_delete`. Side effects a plugin asks for inside a callback (resume, local reply, close) run after the VM
call returns; http-call responses are delivered on the root id; plugins naming the same non-empty vm_id
with the same module and VM configuration share one VM (and its shared data / queues namespace).

Sandbox: every guest call has a CPU budget (epoch deadline) and each VM a memory cap (meshplug.agent.vm).
A trap, a budget overrun, a memory bomb or `proc_exit` fails that VM only: the callback in flight returns
`Action.FAIL` (the chain applies the FailStrategy), streams paused on it are failed through their
`StreamControl`, later streams see the strategy: FAIL_OPEN bypasses the plugin, FAIL_CLOSE answers 503,
FAIL_RELOAD starts a fresh VM for the next stream (the failing stream still gets 503, as in Envoy), then
backs off between reloads while the reloaded VMs keep failing (Envoy's ReloadConfig; 503 meanwhile).

The imports (meshplug.agent.abi, one table of thin shims) work over the interface in meshplug.agent.hostapi
(contexts, the VM, the host as the ABI sees them), which this module implements: nothing below it imports it.

Per request the host does no work for callbacks a module does not export (resolved once per VM, `cb`);
a plugin the request never reached (a local reply before it) still gets context_create + on_log +
on_done + on_delete at the end, as Envoy's access-log hook does.
"""

from __future__ import annotations

import collections
import concurrent.futures
import gc
import itertools
import logging
import time
import zlib
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import wasmtime

from meshplug import abi_table, errors, limits
from meshplug.agent import abi, chain, config, hostapi, metadata, vm
from meshplug.agent.chain import Action, Direction, FailStrategy, LocalReply, Phase

if TYPE_CHECKING:
    from meshplug.agent import sharing
from meshplug.agent.hostapi import (
    CRITICAL,
    DEBUG,
    ERROR,
    INFO,
    KIND_HTTP,
    KIND_TCP,
    TRACE,
    WARN,
    Context,
    Metrics,
    PluginConfig,
    RootContext,
    SharedData,
)

__all__ = [
    "CRITICAL",
    "DEBUG",
    "ERROR",
    "INFO",
    "TRACE",
    "WARN",
    "ConnectionInfo",
    "Context",
    "Headers",
    "Host",
    "HttpCallout",
    "HttpCalloutResult",
    "HttpContext",
    "LogRecord",
    "Metrics",
    "Plugin",
    "PluginConfig",
    "RootContext",
    "Shared",
    "SharedData",
    "TcpStream",
    "WasmVm",
]

log = logging.getLogger("meshplug.agent.host")

_HTTP_CALLBACKS: Final = (
    "proxy_on_request_headers",
    "proxy_on_request_body",
    "proxy_on_request_trailers",
    "proxy_on_response_headers",
    "proxy_on_response_body",
    "proxy_on_response_trailers",
)
plugin_log = logging.getLogger("meshplug.agent.plugin")

Headers = chain.Headers

_PY_LEVEL: Final = {
    TRACE: logging.DEBUG,
    DEBUG: logging.DEBUG,
    INFO: logging.INFO,
    WARN: logging.WARNING,
    ERROR: logging.ERROR,
    CRITICAL: logging.CRITICAL,
}


@dataclass(frozen=True)
class HttpCallout:
    """An HTTP call a plugin dispatched (proxy_http_call); the shell performs it against `upstream`."""

    id: int
    upstream: str
    headers: tuple[chain.Header, ...]
    body: bytes
    trailers: tuple[chain.Header, ...]
    timeout_ms: int


@dataclass(frozen=True)
class HttpCalloutResult:
    headers: tuple[chain.Header, ...]
    body: bytes = b""
    trailers: tuple[chain.Header, ...] = ()


@dataclass(frozen=True)
class GrpcCallout:
    """A gRPC call (`message` set) or stream (`message` None) a plugin opened (proxy_grpc_call /
    proxy_grpc_stream); the shell performs it against `cluster` and reports back through `Host.grpc_*`."""

    id: int
    cluster: str
    authority: str
    service: bytes
    method: bytes
    metadata: tuple[chain.Header, ...]
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


@dataclass(frozen=True)
class LogRecord:
    plugin: str
    level: int
    message: str


# --- process-wide shared state ----------------------------------------------------------------------
@dataclass
class _Queue:
    id: int
    vm_id: str
    name: bytes
    items: collections.deque[bytes] = field(default_factory=collections.deque)
    owner: tuple[WasmVm, int] | None = None  # (vm, root context id) receiving on_queue_ready


class Shared:
    """What every VM of the process shares (Envoy's process-wide stores, proxy-wasm-cpp-host's
    global_shared_data): shared data and queues keyed by vm_id, plugin-defined metrics, the plugins' log.
    Each `Host` (one per applied plugin set, one for the singletons) uses the process's `Shared`, so a
    queue a singleton registered is resolved and fed by HTTP-filter VMs of any later set, and metrics and
    shared data survive a push, as in Envoy."""

    def __init__(self) -> None:
        self.shared_data = SharedData()
        self.metrics = Metrics()
        self.logs: collections.deque[LogRecord] = collections.deque(maxlen=10_000)
        self.queues: dict[int, _Queue] = {}
        self.queue_names: dict[tuple[str, bytes], int] = {}
        self._queue_ids = itertools.count(1)

    def register_queue(self, wvm: WasmVm, root: RootContext, name: bytes) -> int:
        """cpp-host's registerQueue: one queue per (vm_id, name); registering again moves delivery to the
        caller's root context (items already queued are kept)."""
        key = (wvm.vm_id, name)
        qid = self.queue_names.get(key)
        if qid is None:
            qid = next(self._queue_ids)
            self.queue_names[key] = qid
            self.queues[qid] = _Queue(qid, wvm.vm_id, name)
        self.queues[qid].owner = (wvm, root.id)
        return qid

    def enqueue(self, qid: int, value: bytes) -> bool:
        q = self.queues.get(qid)
        if q is None:
            return False
        q.items.append(value)
        if q.owner is not None:  # on_queue_ready on the registrant's root, posted to its host
            q.owner[0].owner.post_queue_ready(qid)
        return True

    def dequeue(self, qid: int) -> bytes | bool | None:
        """The next item, None when empty, False for an unknown queue."""
        q = self.queues.get(qid)
        if q is None:
            return False
        return q.items.popleft() if q.items else None


# --- contexts ---------------------------------------------------------------------------------------
#: proxy-wasm body results 0-2 (3 and above: StopIterationNoBuffer)
_BODY_ACTIONS: Final = (Action.CONTINUE, Action.BUFFER, Action.WATERMARK)
_CONTINUE: Final = Action.CONTINUE
_REQUEST: Final = Direction.REQUEST


class HttpContext(Context):
    """One plugin's context for one HTTP stream; implements chain.FilterStream."""

    def __init__(self, vm_: WasmVm, root: RootContext, control: chain.StreamControl, plugin: Plugin) -> None:
        super().__init__(vm_, 0, root, KIND_HTTP)
        self.wvm = vm_
        self.control = control
        #: the stream's header lists (the chain keeps each list's identity for the stream's life), by direction
        self.maps = (control.headers(Direction.REQUEST), control.headers(Direction.RESPONSE))
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
        if buffer_type == hostapi.BUF_HTTP_REQUEST_BODY:
            return self.control.body(Direction.REQUEST)
        if buffer_type == hostapi.BUF_HTTP_RESPONSE_BODY:
            return self.control.body(Direction.RESPONSE)
        return None

    def stream_info(self) -> chain.StreamInfo:
        return self.control.info

    def stream_control(self) -> chain.StreamControl:
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

    # chain.FilterStream
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
            self.id = next(wvm._ids)
            wvm.contexts[self.id] = self
            fn = wvm.cb.context_create
            if fn is not None and wvm.call_n(self, fn, 2, self.id, self.root.id) < 0:
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
        fn = cb.headers[direction]
        if fn is None:  # not exported: nothing to call (Envoy calls only exported callbacks)
            return Action.CONTINUE
        n = len(self.maps[direction])
        request = direction == _REQUEST
        if request:
            self.request_headers_attached = True
        else:
            self.response_headers_attached = True
        if cb.headers_eos[direction]:
            r = wvm.call_n(self, fn, 3, self.id, n, 1 if end_stream else 0)
        else:
            r = wvm.call_n(self, fn, 2, self.id, n)
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
        fn = wvm.cb.body[direction]
        if fn is None:
            return _CONTINUE
        if not end_stream:
            return self._action(wvm.call_n(self, fn, 3, self.id, size, 0), body=True)
        self.eos_body = direction
        try:
            r = wvm.call_n(self, fn, 3, self.id, size, 1)
        finally:
            self.eos_body = None
        if r == 0 and not self.local_reply_sent:
            return _CONTINUE
        return self._action(r, body=True)

    def on_trailers(self, direction: Direction) -> Action:
        if not self._ready():
            return Action.FAIL
        fn = self.wvm.cb.trailers[direction]
        if fn is None:
            return Action.CONTINUE
        return self._action(self.wvm.call_n(self, fn, 2, self.id, len(self.control.trailers(direction))), body=False)

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

    def on_complete(self) -> None:
        if self.deleted:
            return
        self.completed_ns = time.time_ns()  # request.duration (Envoy: requestComplete, known at on_log)
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
            wvm.call_each(self, wvm.cb.end, self.id)
        self.deleted = True
        wvm.contexts.pop(self.id, None)
        if wvm.recycle:  # the VM waits for its streams to end: maybe this was the last
            wvm.owner._wake()


@dataclass(frozen=True)
class ConnectionInfo:
    """What a network (L4) plugin may read as properties."""

    stream: chain.StreamInfo = field(default_factory=chain.StreamInfo)


class TcpStream(Context):
    """One plugin's context for one TCP connection (network filter callbacks, sans-IO).

    `on_downstream_data(data, end_stream)` / `on_upstream_data(...)` return (Action, bytes to forward):
    CONTINUE forwards the (possibly modified) buffered bytes, STOP keeps them buffered for the next call.
    """

    def __init__(self, vm_: WasmVm, root: RootContext, info: chain.StreamInfo) -> None:
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

    def stream_info(self) -> chain.StreamInfo:
        return self.info

    def set_upstream_fields(self, fields: dict[str, object]) -> None:
        self.info = chain.replace_info(self.info, fields)

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
        self.info = chain.replace_info(info, {"cluster_name": ""})
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


class _FailedStream(chain.NativeFilterStream):
    """A stream on a failed FAIL_CLOSE plugin: every callback reports the failure (chain answers 503)."""

    def on_headers(self, direction: Direction, end_stream: bool) -> Action:
        return Action.FAIL

    def on_body(self, direction: Direction, size: int, end_stream: bool) -> Action:
        return Action.FAIL

    def on_trailers(self, direction: Direction) -> Action:
        return Action.FAIL

    def on_complete(self) -> None:
        return None


# --- one VM -----------------------------------------------------------------------------------------
class _Callbacks:
    """A VM's stream callbacks, looked up once after start (None: not exported); per direction where
    there is one (index = Direction)."""

    __slots__ = ("body", "context_create", "delete", "done", "end", "headers", "headers_eos", "log", "trailers")

    def __init__(self) -> None:
        none: tuple[vm.GuestFunc | None, vm.GuestFunc | None] = (None, None)
        self.context_create: vm.GuestFunc | None = None
        self.headers = self.body = self.trailers = none
        self.headers_eos = (True, True)  # False: the 0.1.0 two-argument headers callbacks
        self.log: vm.GuestFunc | None = None
        self.done: vm.GuestFunc | None = None
        self.delete: vm.GuestFunc | None = None
        self.end: tuple[vm.GuestFunc, ...] = ()  # the exported ones of log, done, delete, in that order

    @classmethod
    def resolve(cls, wvm: WasmVm) -> _Callbacks:
        cb = cls()
        f = wvm.func
        cb.context_create = f("proxy_on_context_create")
        cb.headers = (f("proxy_on_request_headers"), f("proxy_on_response_headers"))
        cb.headers_eos = (
            wvm.arity("proxy_on_request_headers") != 2,
            wvm.arity("proxy_on_response_headers") != 2,
        )
        cb.body = (f("proxy_on_request_body"), f("proxy_on_response_body"))
        cb.trailers = (f("proxy_on_request_trailers"), f("proxy_on_response_trailers"))
        cb.log, cb.done, cb.delete = f("proxy_on_log"), f("proxy_on_done"), f("proxy_on_delete")
        cb.end = tuple(fn for fn in (cb.log, cb.done, cb.delete) if fn is not None)
        return cb


class WasmVm(hostapi.Vm):
    """One wasm instance and the contexts living in it."""

    def __init__(self, host: Host, module: wasmtime.Module, *, vm_id: str, key: tuple[Any, ...], label: str) -> None:
        self.host = host
        self.owner = host  # the same, as this module's own type
        self.vm_id = vm_id
        self.key = key
        self.label = label
        self.contexts: dict[int, Context] = {}
        self.roots: list[RootContext] = []
        self.current: Context | None = None
        self.effective: Context | None = None
        self.failed: errors.PluginRuntimeError | None = None
        self.after: list[Callable[[], None]] = []
        self.env: tuple[tuple[str, str], ...] = ()
        self._ids = itertools.count(1)
        self._tokens = itertools.count(1)
        self.calls = abi.HostCalls(self)
        decls = host.runtime.imports(module)
        self.guest = host.runtime.new_guest(module, self.calls.bind(decls), backend=host.backend)
        self.calls.guest = self.guest
        self._funcs: dict[str, vm.GuestFunc | None] = {}
        self._names: dict[vm.GuestFunc, str] = {}
        self._alloc: vm.GuestFunc | None = None
        self.http_capable = True
        self.cb = _Callbacks()
        #: the host replaces this VM once no stream uses it (its memory grew past the host's recycle_bytes)
        self.recycle = False

    def memory_size(self) -> int:
        """Bytes of linear memory (0 before instantiation)."""
        return self.guest.memory_size() if self.guest.instance is not None else 0

    def next_id(self) -> int:
        return next(self._ids)

    def next_token(self) -> int:
        return next(self._tokens) << 2  # cpp-host: low 2 bits = callout kind (0 = HTTP); first token 4

    def arity(self, name: str) -> int:
        sig = self.guest.exports.get(name)
        return len(sig.params) if sig is not None else 0

    def func(self, name: str) -> vm.GuestFunc | None:
        if name not in self._funcs:
            fn = self._funcs[name] = self.guest.func(name)
            if fn is not None:
                self._names[fn] = name
        return self._funcs[name]

    # -- start -------------------------------------------------------------------------------------
    def start(self, *, parallel: bool = False) -> None:
        """Instantiate and run the module's entry point; `parallel`: on a worker thread beside other VMs
        starting (their guest code runs at the same time; the host functions it calls take the GIL)."""
        guest = self.guest
        exports = guest.exports
        if not any(name in exports for name in abi_table.MARKERS):
            raise errors.PluginStartError(f"{self.label}: Missing or unknown Proxy-Wasm ABI version", reason="no_abi")
        if "memory" not in {e.name for e in self.guest.module.exports}:
            raise errors.PluginStartError(f"{self.label}: module exports no memory", reason="no_memory")
        if not any(exports.get(n) == vm.Signature(("i32",), ("i32",)) for n in ("proxy_on_memory_allocate", "malloc")):
            raise errors.PluginStartError(f"{self.label}: module exports no allocator", reason="no_allocator")
        self.http_capable = any(name in exports for name in _HTTP_CALLBACKS)
        guest.set_deadline_ms(self.owner.start_deadline_ms)
        guest.set_parallel(parallel)
        try:
            guest.instantiate()
            if "_initialize" in guest.exports:
                self._entry("_initialize")
                if "main" in guest.exports and guest.exports["main"].params == ("i32", "i32"):
                    self._entry("main", 0, 0)
                elif "__main_void" in guest.exports:
                    self._entry("__main_void")
            elif "_start" in guest.exports:
                self._entry("_start")
        except vm.GuestExit as exc:
            raise errors.PluginStartError(
                f"{self.label}: proc_exit({exc.code}) during start", reason="start_failed"
            ) from None
        except errors.PluginRuntimeError as exc:
            raise errors.PluginStartError(f"{self.label}: {exc.message}", reason=exc.reason) from exc
        finally:
            guest.set_parallel(False)
        for name in ("proxy_on_memory_allocate", "malloc"):  # spec order, not cpp-host's (see ABI ref. 1.2)
            fn = self.func(name)
            if fn is not None and guest.exports[name] == vm.Signature(("i32",), ("i32",)):
                self._alloc = fn
                break
        self.cb = _Callbacks.resolve(self)

    def _entry(self, name: str, *args: int) -> None:
        fn = self.func(name)
        if fn is None:
            return
        try:
            fn(*args)
        except vm.GuestExit as exc:
            if exc.code != 0 or name != "_start":
                raise

    def begin_plugin_start(self) -> None:
        self.guest.set_deadline_ms(self.owner.start_deadline_ms)

    def end_plugin_start(self) -> None:
        self.guest.set_deadline_ms(self.owner.deadline_ms)

    # -- memory ------------------------------------------------------------------------------------
    def allocate(self, size: int) -> int:
        """Allocate `size` (> 0) bytes in the guest; runs with no current context (cpp-host: context 0)."""
        if self._alloc is None:
            if self.guest.instance is None:
                return 0
            raise errors.PluginRuntimeError(f"{self.label}: module exports no allocator", reason="no_allocator")
        saved = (self.current, self.effective)
        self.current = self.effective = None
        try:
            return self._alloc(size)
        finally:
            self.current, self.effective = saved

    # -- calls -------------------------------------------------------------------------------------
    def call(self, ctx: Context, name: str, *args: int) -> tuple[bool, int | None]:
        """Call callback `name` for `ctx`. (False, None) if the VM failed; (True, None) if not exported."""
        if self.failed is not None:
            return False, None
        fn = self.func(name)
        if fn is None:
            return True, None
        r = self.call_n(ctx, fn, len(args), *args)
        return (False, None) if r < 0 else (True, r)

    def call_n(  # noqa: PLR0917 -- positional ints on the per-request path: no argument tuple
        self, ctx: Context, fn: vm.GuestFunc, n: int, a: int = 0, b: int = 0, c: int = 0, d: int = 0, e: int = 0
    ) -> int:
        """`fn` (an export of this VM) called with the first `n` (0-5) of a..e for `ctx`: its unsigned result,
        or -1 if the VM failed (now or before). Side effects deferred during the call run after the outermost
        call returns. The arguments are not packed into a tuple: a stream's callbacks are most of the host's
        guest calls."""
        if self.failed is not None:
            return -1
        saved_current, saved_effective = self.current, self.effective
        self.current = self.effective = ctx
        try:
            if n == 1:
                result = fn(a)
            elif n == 2:
                result = fn(a, b)
            elif n == 3:
                result = fn(a, b, c)
            else:
                result = fn(*(a, b, c, d, e)[:n])
        except Exception as exc:
            return self._failed(exc, ctx, fn)
        finally:
            self.current, self.effective = saved_current, saved_effective
        # the guest's call depth is back to what it was before the call: 0 for an outermost call
        if self.after and self.guest.depth == 0:
            self.run_after()
        return result

    def call_each(self, ctx: Context, fns: tuple[vm.GuestFunc, ...], a: int) -> int:
        """`call_n(ctx, fn, 1, a)` for each of `fns` in order, as one call (the end of a stream's callbacks:
        log, done, delete): the first failure fails the VM and skips the rest; deferred side effects run once,
        after the last. The number of calls that returned, -1 if the VM failed."""
        if self.failed is not None:
            return -1
        saved_current, saved_effective = self.current, self.effective
        self.current = self.effective = ctx
        done = 0
        try:
            for fn in fns:
                fn(a)
                done += 1
        except Exception as exc:
            return self._failed(exc, ctx, fns[done])
        finally:
            self.current, self.effective = saved_current, saved_effective
        if self.after and self.guest.depth == 0:
            self.run_after()
        return done

    def _failed(self, exc: Exception, ctx: Context, fn: vm.GuestFunc) -> int:
        """A guest call raised: fail the VM with the matching reason; -1 (the callers' "VM failed")."""
        if isinstance(exc, errors.PluginRuntimeError):
            self.fail(exc, ctx)
        elif isinstance(exc, vm.GuestExit):
            self.fail(errors.PluginRuntimeError(f"proc_exit({exc.code})", reason="proc_exit"), ctx)
        else:
            name = self._names.get(fn, "?")
            log.error("%s: host error in %s", self.label, name, exc_info=exc)
            self.fail(errors.PluginRuntimeError(f"host error in {name}: {exc}", reason="host_error"), ctx)
        return -1

    def invoke(self, ctx: Context, name: str, *args: int) -> bool:
        ok, _ = self.call(ctx, name, *args)
        return ok

    def run_after(self) -> None:
        while self.after:
            pending, self.after = self.after, []
            for action in pending:
                action()

    def defer(self, action: Callable[[], None]) -> None:
        self.after.append(action)

    def fail(self, exc: errors.PluginRuntimeError, ctx: Context | None) -> None:
        if self.failed is not None:
            return
        self.failed = exc
        self.after.clear()
        log.error("%s: VM failed (%s): %s", self.label, exc.reason, exc.message)
        self.owner.vm_failed(self)
        # streams paused on this VM learn it through their control; the one in flight gets Action.FAIL
        for other in list(self.contexts.values()):
            if isinstance(other, HttpContext) and other is not ctx and other.created and not other.deleted:
                other.control.fail()

    def log(self, level: int, message: str) -> None:
        plugin = self.effective.plugin.config.name if self.effective is not None else self.label
        self.owner.record_log(plugin, level, message)


# --- plugin -----------------------------------------------------------------------------------------
class Plugin(hostapi.PluginRef):
    """A configured plugin (root context) on a VM; implements chain.Filter."""

    def __init__(self, host: Host, config: PluginConfig, module: wasmtime.Module, digest: str) -> None:
        self.host = host
        self.config = config
        self.module = module
        self.digest = digest
        self.generation = 0
        self.reloads = 0
        self.recycles = 0  # VMs replaced because their memory grew past the host's recycle_bytes
        self._reload_at = 0.0  # host.clock() of the last reload
        self._reload_gap = 0.0  # least time until the next one (0: none yet)
        self.vm: WasmVm
        self.root: RootContext

    # chain.Filter
    @property
    def name(self) -> str:
        return self.config.name

    @property
    def phase(self) -> Phase:
        return self.config.phase

    @property
    def priority(self) -> int | None:
        return self.config.priority

    @property
    def fail_strategy(self) -> FailStrategy:
        return self.config.fail_strategy

    @property
    def failed(self) -> errors.PluginRuntimeError | None:
        return self.vm.failed

    def start(self, shared: WasmVm | None) -> None:
        if shared is None:
            shared = self.host.new_vm(self.module, self.config, self.digest)
        wvm = shared
        self.vm = wvm
        root = RootContext(wvm, wvm.next_id(), self)
        self.root = root
        wvm.contexts[root.id] = root
        wvm.roots.append(root)
        wvm.begin_plugin_start()
        try:
            if not wvm.invoke(root, "proxy_on_context_create", root.id, 0):
                raise self._start_error("proxy_on_context_create")
            root.in_callback = "vm_start"
            ok, r = wvm.call(root, "proxy_on_vm_start", root.id, len(self.config.vm_configuration))
            if not ok or (r == 0 and r is not None):
                raise self._start_error("proxy_on_vm_start")
            root.in_callback = "configure"
            root.buffers[hostapi.BUF_PLUGIN_CONFIGURATION] = self.config.configuration
            ok, r = wvm.call(root, "proxy_on_configure", root.id, len(self.config.configuration))
            if not ok or (r == 0 and r is not None):
                raise self._start_error("proxy_on_configure")
        finally:
            root.in_callback = ""
            root.buffers.pop(hostapi.BUF_PLUGIN_CONFIGURATION, None)
            wvm.end_plugin_start()

    def _start_error(self, step: str) -> errors.PluginStartError:
        failed = self.vm.failed
        detail = f"trapped: {failed.message}" if failed is not None else "returned false"
        reason = "configure_failed" if step == "proxy_on_configure" else "start_failed"
        return errors.PluginStartError(f"plugin {self.config.name}: {step} {detail}", reason=reason)

    def new_stream(self, control: chain.StreamControl) -> chain.FilterStream | None:
        if self.vm.failed is not None:
            if self.config.fail_strategy == FailStrategy.FAIL_OPEN:
                return None
            if self.config.fail_strategy == FailStrategy.FAIL_RELOAD and not self.reload():
                return _FailedStream()
            if self.config.fail_strategy == FailStrategy.FAIL_CLOSE:
                return _FailedStream()
        return HttpContext(self.vm, self.root, control, self)

    def new_connection(self, info: chain.StreamInfo | None = None) -> TcpStream | None:
        if self.vm.failed is not None and not (self.config.fail_strategy == FailStrategy.FAIL_RELOAD and self.reload()):
            return None
        return TcpStream(self.vm, self.root, info or chain.StreamInfo())

    def reload(self) -> bool:
        """A fresh VM for this plugin after a runtime failure (FAIL_RELOAD); False while backing off.

        The first reload is immediate; each further one waits the current gap since the previous reload,
        the gap doubling from `host.reload_backoff_ms` up to 10x and starting over once a reloaded VM
        outlived the largest gap (Envoy's ReloadConfig backoff). A plugin that shares its VM by vm_id
        rejoins the VM another plugin of the same key already reloaded.
        """
        now = self.host.clock()
        base = self.host.reload_backoff_ms / 1000.0
        if self._reload_gap and now - self._reload_at < self._reload_gap:
            return False
        if not self._reload_gap or now - self._reload_at >= 10 * base:
            self._reload_gap = base  # the first reload, or the previous VM lasted: not a crash loop
        else:
            self._reload_gap = min(self._reload_gap * 2, 10 * base)
        self._reload_at = now
        self.generation += 1
        self.reloads += 1
        config = self.config
        shared = self.host.vms.get((config.vm_id, self.digest, config.vm_configuration, config.env))
        try:
            self.start(shared if config.vm_id and shared is not None and shared.failed is None else None)
        except errors.PluginStartError as exc:
            log.error("plugin %s: reload failed: %s", self.config.name, exc.message)
            return False
        log.warning("plugin %s: reloaded its VM (reload #%d)", self.config.name, self.reloads)
        return True

    def recycle(self) -> bool:
        """Move to a fresh VM (same module, configuration and vm_id; plugins sharing the old VM join the fresh
        one the first of them started), then let the old root context go as at a shutdown: proxy_on_done,
        proxy_on_delete. Not a failure (no backoff, no 503): the old VM served every stream it had. False, and
        nothing changed, when the fresh VM does not start."""
        old_vm, old_root, generation = self.vm, self.root, self.generation
        config = self.config
        shared = self.host.vms.get((config.vm_id, self.digest, config.vm_configuration, config.env))
        if not config.vm_id or shared is old_vm or (shared is not None and shared.failed is not None):
            shared = None
        self.generation += 1
        try:
            self.start(shared)
        except errors.PluginStartError as exc:
            self.vm, self.root, self.generation = old_vm, old_root, generation
            old_vm.recycle = False  # try again at a later check
            log.error("plugin %s: recycling its VM failed, keeping the old one: %s", config.name, exc.message)
            return False
        self.recycles += 1
        if old_vm.failed is None and not old_root.deleted:
            old_vm.invoke(old_root, "proxy_on_done", old_root.id)
            old_vm.invoke(old_root, "proxy_on_delete", old_root.id)
            old_root.deleted = True
        old_vm.contexts.pop(old_root.id, None)
        if not old_vm.contexts:
            old_vm.roots.clear()
        log.warning("plugin %s: recycled its VM (recycle #%d)", config.name, self.recycles)
        return True

    def stop(self) -> None:
        """Shut down: proxy_on_done(root), then on_delete unless the plugin defers with proxy_done()."""
        root, wvm = self.root, self.vm
        if wvm.failed is not None or root.deleted:
            return
        ok, r = wvm.call(root, "proxy_on_done", root.id)
        if ok and r == 0 and wvm.func("proxy_on_done") is not None:
            root.done_pending = True
            return
        self.delete_root()

    def delete_root(self) -> None:
        root = self.root
        if not root.deleted:
            self.vm.invoke(root, "proxy_on_delete", root.id)
            root.deleted = True
            self.vm.contexts.pop(root.id, None)


# --- the host ---------------------------------------------------------------------------------------
class Host(hostapi.Host):
    """Everything plugins share in one process: runtime, VMs, shared data/queues, metrics, callouts, timers."""

    def __init__(
        self,
        *,
        runtime: vm.Runtime | None = None,
        backend: str = "fast",
        upstreams: Collection[str] | None = None,
        node: Mapping[str, metadata.Value] | None = None,
        node_id: str = "",
        cluster: str = "",
        log_level: int = INFO,
        deadline_ms: int = limits.CALLBACK_DEADLINE_MS,
        start_deadline_ms: int = limits.START_DEADLINE_MS,
        on_wakeup: Callable[[], None] | None = None,
        reload_backoff_ms: int = limits.VM_RELOAD_BACKOFF_MS,
        clock: Callable[[], float] = time.monotonic,
        share: sharing.Share | None = None,
        shared: Shared | None = None,
        clusters: Mapping[str, config.Cluster] | None = None,
        recycle_bytes: int = limits.VM_RECYCLE_MEMORY_BYTES,
    ) -> None:
        """`share`: the store the workers of a multi-worker agent share (meshplug.agent.sharing): shared data
        and queues there instead of in this host. `recycle_bytes`: a VM whose linear memory grew past it is
        replaced by a fresh one once no stream uses it (`check_memory`; 0: never)."""
        self.runtime = runtime or vm.default_runtime()
        self.backend = backend
        self.upstreams = None if upstreams is None else frozenset(upstreams)
        self.node = dict(node or {})
        self.node_id = node_id
        self.cluster = cluster
        self.log_level = log_level
        self.deadline_ms = deadline_ms
        self.start_deadline_ms = start_deadline_ms
        self.on_wakeup = on_wakeup
        self.reload_backoff_ms = reload_backoff_ms
        self.clock = clock  # FAIL_RELOAD backoff
        self.clusters = dict(clusters or {})
        self.share = share
        self.shared = shared if shared is not None else Shared()
        # the workers' store when there are workers (one namespace across processes), else the process's
        self.shared_data = SharedData(share.store) if share is not None else self.shared.shared_data
        self.metrics = self.shared.metrics
        self.logs = self.shared.logs
        self.recycle_bytes = recycle_bytes
        self._recycling = False  # some VM waits to be recycled until its streams are over
        self.plugins: list[Plugin] = []
        self.vms: dict[tuple[Any, ...], WasmVm] = {}
        #: VMs `prestart` started for plugins `load` has not started yet, by VM key, in load order
        self._prestarted: dict[tuple[Any, ...], collections.deque[WasmVm | errors.PluginStartError]] = {}
        self._modules: dict[str, wasmtime.Module] = {}
        self._notify: collections.deque[int] = collections.deque()
        #: with a share: the queues a root context of this host registered (token -> VM, root id)
        self._owned: dict[int, tuple[WasmVm, int]] = {}
        if share is not None:
            share.attach(self)
        self._callouts: dict[int, tuple[WasmVm, RootContext, int]] = {}
        self._outbox: list[HttpCallout] = []
        self._callout_ids = itertools.count(1)
        #: open gRPC calls and streams: id -> (vm, root, token, is a stream); token -> id per VM
        self._grpc: dict[int, tuple[WasmVm, RootContext, int, bool]] = {}
        self._grpc_ids: dict[tuple[WasmVm, int], int] = {}
        self._grpc_outbox: list[GrpcWork] = []
        self.foreign: dict[bytes, Callable[[bytes], bytes | None]] = {
            b"compress": zlib.compress,
            b"uncompress": zlib.decompress,
        }

    # -- loading -----------------------------------------------------------------------------------
    def module(self, data: bytes, digest: str) -> wasmtime.Module:
        if digest not in self._modules:
            self._modules[digest] = self.runtime.load(data)
        return self._modules[digest]

    def load(self, config: PluginConfig, data: bytes, *, digest: str | None = None) -> Plugin:
        """Start `config` on a VM (shared when vm_id, module and VM config match). Raises PluginStartError."""
        import hashlib  # noqa: PLC0415 -- only on the (rare) load path

        digest = digest or hashlib.sha256(data).hexdigest()
        module = self.module(data, digest)
        plugin = Plugin(self, config, module, digest)
        shared = None
        if config.vm_id:
            key = (config.vm_id, digest, config.vm_configuration, config.env)
            cand = self.vms.get(key)
            if cand is not None and cand.failed is None:
                shared = cand
        plugin.start(shared)
        self.plugins.append(plugin)
        return plugin

    def prestart(self, plugins: Sequence[tuple[PluginConfig, bytes, str]]) -> None:
        """Start the VMs `load` will need for `plugins` (config, module bytes, sha256; in load order) at once,
        on up to `limits.AGENT_PREPARE_THREADS` threads: instantiation and the module's entry point (the Go,
        C and AssemblyScript runtimes' initialisation) touch no state VMs share. Each plugin's own start
        (context create, vm_start, configure: shared data, queues, metrics) stays in `load`, in chain order.
        A VM that fails to start fails its plugin's `load` with that error, as if it had started there."""
        wanted: list[tuple[tuple[Any, ...], PluginConfig, wasmtime.Module]] = []
        shared: set[tuple[Any, ...]] = set()
        for plugin_config, data, digest in plugins:
            key = (plugin_config.vm_id, digest, plugin_config.vm_configuration, plugin_config.env)
            if plugin_config.vm_id:  # one VM for all plugins naming it
                if key in shared or key in self.vms:
                    continue
                shared.add(key)
            wanted.append((key, plugin_config, self.module(data, digest)))
        if len(wanted) < 2:
            return  # nothing to overlap: `load` starts it

        def make(item: tuple[tuple[Any, ...], PluginConfig, wasmtime.Module]) -> WasmVm | errors.PluginStartError:
            key, plugin_config, module = item
            try:
                wvm = WasmVm(self, module, vm_id=plugin_config.vm_id, key=key, label=plugin_config.name)
                wvm.env = plugin_config.env
                wvm.start(parallel=True)
            except errors.PluginStartError as exc:
                return exc
            return wvm

        workers = min(limits.AGENT_PREPARE_THREADS, len(wanted))
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="meshplug-vm") as pool:
            for (key, _, _), made in zip(wanted, pool.map(make, wanted), strict=True):
                self._prestarted.setdefault(key, collections.deque()).append(made)

    def new_vm(self, module: wasmtime.Module, config: PluginConfig, digest: str) -> WasmVm:
        key = (config.vm_id, digest, config.vm_configuration, config.env)
        ready = self._prestarted.get(key)
        if ready:
            made = ready.popleft()
            if isinstance(made, errors.PluginStartError):
                raise made
            wvm = made
            wvm.label = config.name
        else:
            wvm = WasmVm(self, module, vm_id=config.vm_id, key=key, label=config.name)
            wvm.env = config.env
            wvm.start()
        if config.vm_id:
            self.vms[key] = wvm
        return wvm

    def vm_failed(self, wvm: WasmVm) -> None:
        if self.vms.get(wvm.key) is wvm:
            del self.vms[wvm.key]
        for cid in [c for c, (v, _, _) in self._callouts.items() if v is wvm]:
            del self._callouts[cid]
        for gid in [g for g, (v, _, _, _) in self._grpc.items() if v is wvm]:
            self._grpc_forget(gid)
            self._grpc_outbox.append(GrpcEnd(gid, cancel=True))

    def close(self) -> None:
        for plugin in self.plugins:
            plugin.stop()
        self.plugins.clear()
        if self.share is not None:
            self.share.detach(self)

    # -- logs / metrics ------------------------------------------------------------------------------
    def record_log(self, plugin: str, level: int, message: str) -> None:
        if level < self.log_level:
            return
        self.logs.append(LogRecord(plugin, level, message))
        plugin_log.log(_PY_LEVEL.get(level, logging.INFO), "[%s] %s", plugin, message)

    def metric_values(self) -> dict[str, int]:
        return self.metrics.snapshot()

    def _wake(self) -> None:
        if self.on_wakeup is not None:
            self.on_wakeup()

    # -- http callouts -------------------------------------------------------------------------------
    def dispatch_http_call(
        self,
        wvm: hostapi.Vm,
        root: RootContext,
        *,
        upstream: str,
        headers: Headers,
        body: bytes,
        trailers: Headers,
        timeout_ms: int,
    ) -> int:
        assert isinstance(wvm, WasmVm)
        token = wvm.next_token()
        cid = next(self._callout_ids)
        self._callouts[cid] = (wvm, root, token)
        self._outbox.append(HttpCallout(cid, upstream, tuple(headers), body, tuple(trailers), timeout_ms))
        self._wake()
        return token

    def take_http_calls(self) -> list[HttpCallout]:
        out, self._outbox = self._outbox, []
        return out

    def complete_http_call(self, call_id: int, result: HttpCalloutResult | None) -> None:
        """Deliver an http-call outcome (None = failure/reset) on the owning root context."""
        entry = self._callouts.pop(call_id, None)
        if entry is None:
            return
        wvm, root, token = entry
        if wvm.failed is not None or root.deleted:
            return
        if result is None:
            root.status = (hostapi.BROKEN_CONNECTION, b"reset")
            args = (root.id, token, 0, 0, 0)
        else:
            root.status = (hostapi.OK, b"")
            root.maps[hostapi.MAP_HTTP_CALL_RESPONSE_HEADERS] = list(result.headers)
            root.maps[hostapi.MAP_HTTP_CALL_RESPONSE_TRAILERS] = list(result.trailers)
            root.buffers[hostapi.BUF_HTTP_CALL_RESPONSE_BODY] = result.body
            args = (root.id, token, len(result.headers), len(result.body), len(result.trailers))
        try:
            wvm.invoke(root, "proxy_on_http_call_response", *args)
        finally:
            root.maps.pop(hostapi.MAP_HTTP_CALL_RESPONSE_HEADERS, None)
            root.maps.pop(hostapi.MAP_HTTP_CALL_RESPONSE_TRAILERS, None)
            root.buffers.pop(hostapi.BUF_HTTP_CALL_RESPONSE_BODY, None)

    # -- gRPC callouts -------------------------------------------------------------------------------
    # As Envoy's wasm Context: a unary call ends with proxy_on_grpc_receive (success: the response message) or
    # proxy_on_grpc_close (failure: status, message via proxy_get_status), never both, and no metadata
    # callbacks; a stream gets initial metadata, each message, trailing metadata and a close. Tokens carry
    # the kind in their low bits as in cpp-host (call 1, stream 2); everything is delivered on the root.
    def dispatch_grpc(  # noqa: PLR0917 -- the call's parts
        self,
        wvm: hostapi.Vm,
        root: hostapi.RootContext,
        cluster: str,
        authority: str,
        service: bytes,
        method: bytes,
        metadata: Headers,
        message: bytes | None,
        timeout_ms: int,
    ) -> int:
        assert isinstance(wvm, WasmVm)
        assert isinstance(root, RootContext)
        stream = message is None
        token = wvm.next_token() | (2 if stream else 1)
        gid = next(self._callout_ids)
        self._grpc[gid] = (wvm, root, token, stream)
        self._grpc_ids[(wvm, token)] = gid
        self._grpc_outbox.append(
            GrpcCallout(gid, cluster, authority, service, method, tuple(metadata), message, timeout_ms)
        )
        self._wake()
        return token

    def grpc_op(self, wvm: hostapi.Vm, token: int, op: str, message: bytes = b"", end_stream: bool = False) -> int:
        """proxy_grpc_send ("send") / _cancel ("cancel") / _close ("close") on `token`: an ABI status."""
        assert isinstance(wvm, WasmVm)
        gid = self._grpc_ids.get((wvm, token))
        if gid is None:
            return hostapi.NOT_FOUND
        stream = self._grpc[gid][3]
        if op == "send":
            if not stream:
                return hostapi.BAD_ARGUMENT
            self._grpc_outbox.append(GrpcSend(gid, message, end_stream))
        elif op == "close" and stream:
            self._grpc_outbox.append(GrpcEnd(gid, cancel=False))
        else:  # cancel, or close of a unary call (Envoy cancels it): nothing more is delivered
            self._grpc_forget(gid)
            self._grpc_outbox.append(GrpcEnd(gid, cancel=True))
        self._wake()
        return hostapi.OK

    def take_grpc_work(self) -> list[GrpcWork]:
        out, self._grpc_outbox = self._grpc_outbox, []
        return out

    def _grpc_forget(self, gid: int) -> None:
        entry = self._grpc.pop(gid, None)
        if entry is not None:
            self._grpc_ids.pop((entry[0], entry[2]), None)

    def _grpc_deliver(self, gid: int, callback: str, n: int, *, final: bool = False) -> None:
        entry = self._grpc.get(gid)
        if entry is None:
            return
        wvm, root, token, _ = entry
        if final:
            self._grpc_forget(gid)
        if wvm.failed is not None or root.deleted:
            return
        wvm.invoke(root, callback, root.id, token, n)

    def _grpc_metadata(self, gid: int, map_type: int, callback: str, headers: Headers) -> None:
        entry = self._grpc.get(gid)
        if entry is None:
            return
        root = entry[1]
        root.maps[map_type] = list(headers)
        try:
            self._grpc_deliver(gid, callback, len(headers))
        finally:
            root.maps.pop(map_type, None)

    def grpc_initial_metadata(self, gid: int, headers: Headers) -> None:
        self._grpc_metadata(gid, hostapi.MAP_GRPC_INITIAL_METADATA, "proxy_on_grpc_receive_initial_metadata", headers)

    def grpc_message(self, gid: int, message: bytes) -> None:
        """A response message: a stream's next one, or a unary call's answer (which ends the call)."""
        entry = self._grpc.get(gid)
        if entry is None:
            return
        root = entry[1]
        root.buffers[hostapi.BUF_GRPC_RECEIVE] = message
        try:
            self._grpc_deliver(gid, "proxy_on_grpc_receive", len(message), final=not entry[3])
        finally:
            root.buffers.pop(hostapi.BUF_GRPC_RECEIVE, None)

    def grpc_trailing_metadata(self, gid: int, trailers: Headers) -> None:
        self._grpc_metadata(
            gid, hostapi.MAP_GRPC_TRAILING_METADATA, "proxy_on_grpc_receive_trailing_metadata", trailers
        )

    def grpc_close(self, gid: int, status: int, message: bytes) -> None:
        """The call or stream ended with `status` (a unary call: only when it failed)."""
        entry = self._grpc.get(gid)
        if entry is None:
            return
        entry[1].status = (status, message)
        self._grpc_deliver(gid, "proxy_on_grpc_close", status, final=True)

    # -- timers --------------------------------------------------------------------------------------
    def set_tick_period(self, root: RootContext, period_ms: int) -> None:
        root.tick_period_ms = period_ms
        root.next_tick = time.monotonic() + period_ms / 1000.0 if period_ms else None
        self._wake()

    def _roots(self) -> list[Plugin]:
        return [p for p in self.plugins if p.vm.failed is None and not p.root.deleted]

    def next_timer(self) -> float | None:
        """Monotonic time of the next due tick, or None."""
        due = [p.root.next_tick for p in self._roots() if p.root.next_tick is not None]
        return min(due) if due else None

    def run_timers(self, now: float | None = None) -> int:
        """Call proxy_on_tick on every root whose tick is due; returns how many ran."""
        now = time.monotonic() if now is None else now
        ran = 0
        for plugin in self._roots():
            root = plugin.root
            if root.next_tick is not None and root.next_tick <= now and root.tick_period_ms:
                root.next_tick = now + root.tick_period_ms / 1000.0
                plugin.vm.invoke(root, "proxy_on_tick", root.id)
                ran += 1
        return ran

    # -- shared queues -------------------------------------------------------------------------------
    def register_queue(self, wvm: hostapi.Vm, root: RootContext, name: bytes) -> int:
        assert isinstance(wvm, WasmVm)
        if self.share is not None:
            token = self.share.store.queue_register(wvm.vm_id.encode(), name, self.share.index, root.id)
            self._owned[token] = (wvm, root.id)
            return token
        return self.shared.register_queue(wvm, root, name)

    def resolve_queue(self, vm_id: str, name: bytes) -> int | None:
        if self.share is not None:
            return self.share.store.queue_resolve(vm_id.encode(), name) or None
        return self.shared.queue_names.get((vm_id, name))

    def enqueue(self, qid: int, value: bytes) -> bool:
        if self.share is not None:
            owner = self.share.store.enqueue(qid, value)
            if owner == -2:
                raise MemoryError("the workers' shared store is full")
            if owner >= 0:
                self.share.wake(owner, qid)  # posted: delivered from the owner's event loop, never inline
            return owner != -1
        return self.shared.enqueue(qid, value)

    def dequeue(self, qid: int) -> bytes | bool | None:
        """The next item, None when empty, False for an unknown queue."""
        if self.share is not None:
            return self.share.store.dequeue(qid)
        return self.shared.dequeue(qid)

    def post_queue_ready(self, qid: int) -> None:
        """A queue one of this host's roots registered has an item: deliver on_queue_ready later
        (`run_deferred`, never inline)."""
        self._notify.append(qid)
        self._wake()

    # -- memory: leaking VMs recycled --------------------------------------------------------------------
    def check_memory(self) -> int:
        """Mark every VM whose linear memory grew past `recycle_bytes` for recycling, and recycle those no
        stream uses now (the others when their last stream completes). Called by the shell every
        `limits.VM_MEMORY_CHECK_S`. Returns how many VMs were recycled now."""
        if not self.recycle_bytes:
            return 0
        for wvm in self._vms():
            if not wvm.recycle and wvm.failed is None and wvm.memory_size() > self.recycle_bytes:
                wvm.recycle = True
                self._recycling = True
                log.warning(
                    "%s: linear memory %d bytes, past %d: recycling the VM",
                    wvm.label,
                    wvm.memory_size(),
                    self.recycle_bytes,
                )
        return self.recycle_idle() if self._recycling else 0

    def _vms(self) -> list[WasmVm]:
        return list({id(p.vm): p.vm for p in self.plugins}.values())

    def recycle_idle(self) -> int:
        """Replace every VM marked for recycling that no stream or connection uses any more: each of its
        plugins starts on a fresh VM (same module, configuration and vm_id), the old root contexts get
        proxy_on_done and proxy_on_delete, and the old VM's memory goes back to the OS. Returns how many."""
        done = 0
        waiting = False
        for wvm in self._vms():
            if not wvm.recycle:
                continue
            if wvm.failed is not None:  # its fail strategy handles it now
                continue
            if any(not isinstance(c, RootContext) for c in wvm.contexts.values()):
                waiting = True
                continue
            for plugin in [p for p in self.plugins if p.vm is wvm]:
                plugin.recycle()
            done += 1
        self._recycling = waiting
        if done:
            gc.collect()  # the old VMs' objects form cycles: free their stores (and linear memory) now
        return done

    def queue_ready(self, token: int) -> None:
        """Another worker enqueued on queue `token` (meshplug.agent.sharing): notify its owner here, if here."""
        if token in self._owned:
            self._notify.append(token)
            self._wake()

    def pending(self) -> bool:
        return bool(self._notify or self._outbox or self._grpc_outbox)

    def run_deferred(self) -> int:
        """Deliver queued proxy_on_queue_ready notifications (posted, never inline), recycle the VMs whose
        streams are over. Returns how many notifications ran."""
        if self._recycling:
            self.recycle_idle()
        ran = 0
        while self._notify:
            qid = self._notify.popleft()
            if self.share is not None:  # still ours: the last registration (in any worker) owns a queue
                owned = self._owned.get(qid)
                if owned is None or self.share.store.queue_owner(qid) != (self.share.index, owned[1]):
                    continue
                wvm, root_id = owned
            else:
                q = self.shared.queues.get(qid)
                if q is None or q.owner is None:
                    continue
                wvm, root_id = q.owner
            root = wvm.contexts.get(root_id)
            if wvm.failed is None and isinstance(root, RootContext):
                wvm.invoke(root, "proxy_on_queue_ready", root_id, qid)
                ran += 1
        return ran

"""The host interface the proxy-wasm imports work over: contexts, the VM and the host as the ABI sees them.

proxy-wasm-cpp-host keeps its imports (exports.cc) as a table of thin functions over `ContextBase` and
`WasmBase`; this module is the same seam for meshplug. `meshplug.agent.abi` (the import table),
`meshplug.agent.properties` (proxy_get_property) and `meshplug.agent.wasi` import only this module and
never the host; the host implements it (meshplug.agent.wasmvm.WasmVm is a `Vm`, meshplug.agent.host.Host a
`Host`, the stream contexts of meshplug.agent.contexts are `Context`s) and imports them. The .importlinter
contract "wasm-host-layers" keeps it that way: host -> plugin -> contexts -> wasmvm -> abi -> properties | wasi
-> hostapi.

What lives here is what both sides must agree on: the ABI's enums (statuses, buffer, map, stream and log
types), a plugin's configuration (`PluginConfig`), the process-wide shared stores with their semantics
(`SharedData`, `Metrics`), and the base classes whose methods the imports call. A context answers for its own
kind (root, HTTP stream, TCP connection) through methods -- `continue_stream`, `close_stream`,
`send_local_response`, `done`, `clear_route_cache`, the map and buffer accessors -- with the root-context
answers as defaults, so no import asks "which kind of context is this" (cpp-host's virtual methods).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from meshplug.agent import config, envoystats, metadata, streamapi, vm

if TYPE_CHECKING:
    from meshplug.agent import sharing
from meshplug.agent.streamapi import FailStrategy, Phase

# proxy_status_t
OK: Final = 0
NOT_FOUND: Final = 1
BAD_ARGUMENT: Final = 2
SERIALIZATION_FAILURE: Final = 3
PARSE_FAILURE: Final = 4
INVALID_MEMORY_ACCESS: Final = 6
EMPTY: Final = 7
CAS_MISMATCH: Final = 8
INTERNAL_FAILURE: Final = 10
BROKEN_CONNECTION: Final = 11
UNIMPLEMENTED: Final = 12

# proxy_buffer_type_t
BUF_HTTP_REQUEST_BODY: Final = 0
BUF_HTTP_RESPONSE_BODY: Final = 1
BUF_DOWNSTREAM_DATA: Final = 2
BUF_UPSTREAM_DATA: Final = 3
BUF_HTTP_CALL_RESPONSE_BODY: Final = 4
BUF_GRPC_RECEIVE: Final = 5
BUF_VM_CONFIGURATION: Final = 6
BUF_PLUGIN_CONFIGURATION: Final = 7
BUF_FOREIGN_FUNCTION_ARGUMENTS: Final = 8
MAX_BUFFER_TYPE: Final = 8

# proxy_map_type_t
MAP_REQUEST_HEADERS: Final = 0
MAP_REQUEST_TRAILERS: Final = 1
MAP_RESPONSE_HEADERS: Final = 2
MAP_RESPONSE_TRAILERS: Final = 3
MAP_GRPC_INITIAL_METADATA: Final = 4
MAP_GRPC_TRAILING_METADATA: Final = 5
MAP_HTTP_CALL_RESPONSE_HEADERS: Final = 6
MAP_HTTP_CALL_RESPONSE_TRAILERS: Final = 7
MAX_MAP_TYPE: Final = 7

# proxy_stream_type_t
STREAM_REQUEST: Final = 0
STREAM_RESPONSE: Final = 1
STREAM_DOWNSTREAM: Final = 2
STREAM_UPSTREAM: Final = 3

# proxy_log_level_t
TRACE: Final = 0
DEBUG: Final = 1
INFO: Final = 2
WARN: Final = 3
ERROR: Final = 4
CRITICAL: Final = 5

# context kinds (what a context answers for; the imports never branch on it, properties do)
KIND_ROOT: Final = 0
KIND_HTTP: Final = 1
KIND_TCP: Final = 2


@dataclass(frozen=True)
class PluginConfig:
    """One plugin as the agent was told to run it (a WasmPlugin resource or an Envoy PluginConfig after
    defaulting). `configuration` / `vm_configuration` are the bytes the plugin reads, as Envoy hands them
    over (a StringValue's string, a BytesValue's bytes, any other message's serialized protobuf)."""

    name: str
    root_id: str = ""
    vm_id: str = ""
    configuration: bytes = b""
    vm_configuration: bytes = b""
    fail_strategy: FailStrategy = FailStrategy.FAIL_CLOSE
    phase: Phase = Phase.UNSPECIFIED
    priority: int | None = None
    env: tuple[tuple[str, str], ...] = ()


# --- process-wide shared stores ---------------------------------------------------------------------
class SharedData:
    """Key/value store with CAS, one namespace per vm_id (proxy-wasm-cpp-host semantics); with a `store`
    (meshplug.agent.sharing: the workers of one agent), the one all workers share."""

    def __init__(self, store: sharing.Store | None = None) -> None:
        self._data: dict[str, dict[bytes, tuple[bytes, int]]] = {}
        #: the last CAS number handed out: 32 bits, 1..0xffffffff then 1 again (proxy-wasm-cpp-host's nextCas;
        #: the ABI gives a guest 32 bits, and 0 means "no CAS")
        self.last_cas = 0
        self.store = store

    def get(self, vm_id: str, key: bytes) -> tuple[bytes, int] | None:
        if self.store is not None:
            return self.store.get(vm_id.encode(), key)
        return self._data.get(vm_id, {}).get(key)

    def set(self, vm_id: str, key: bytes, value: bytes, cas: int) -> bool:
        """False on a CAS mismatch; MemoryError when a shared store is full."""
        if self.store is not None:
            rc = self.store.set(vm_id.encode(), key, value, cas)
            if rc == 2:
                raise MemoryError("the workers' shared store is full")
            return rc == 0
        space = self._data.setdefault(vm_id, {})
        current = space.get(key)
        if cas and current is not None and current[1] != cas:
            return False
        self.last_cas = self.last_cas + 1 if self.last_cas < 0xFFFF_FFFF else 1
        space[key] = (value, self.last_cas)
        return True


class Metrics:
    """Plugin-defined metrics; ids carry the type in the low 2 bits (cpp-host).

    In a multi-worker agent (`share`: the workers' store, meshplug/agent/_shared.c) counters and gauges live in
    the store, one slot per (type, name) for every worker, as Envoy's workers define a plugin's metric in one
    stats store: a gauge holds the last value any worker set, get_metric reads every worker's increments. Only a
    full store (its bytes: shared data fills them too) leaves a new one in the process, with a warning: then /stats
    sums the workers' values and get_metric reads this worker's. Histograms stay in the process (the admin view
    merges the workers' bins, as Envoy merges its threads')."""

    COUNTER: Final = 0
    GAUGE: Final = 1
    HISTOGRAM: Final = 2

    def __init__(self) -> None:
        self._by_name: dict[tuple[int, bytes], int] = {}
        self.kind: dict[int, int] = {}
        self.name: dict[int, bytes] = {}
        #: the values this process keeps (every metric without a store; histograms' record counts), by id
        self.value: dict[int, int] = {}
        #: a histogram's recorded values by bin (`envoystats.bin_floor` -> count): Envoy's quantiles depend only on
        #: the bins, and the memory stays a few hundred entries however many values a plugin records
        self.bins: dict[int, dict[int, int]] = {}
        self._seq = [itertools.count(1) for _ in range(3)]
        self.store: sharing.Store | None = None
        #: the store's slot of each counter and gauge kept there, by id
        self.slot: dict[int, int] = {}

    @classmethod
    def of_store(cls, store: sharing.Store) -> Metrics:
        """The counters and gauges in `store` as one process's metrics (what an admin view formats), by value."""
        out = cls()
        for kind, name, value in store.metrics():
            out.value[out.define(kind, name)] = value
        return out

    def share(self, store: sharing.Store) -> None:
        """Keep counters and gauges in `store` from now on; those defined already move there, values added."""
        if self.store is store:
            return
        self.store = store
        for mid, kind in self.kind.items():
            if kind != self.HISTOGRAM and mid not in self.slot:
                self._place(mid)

    def _place(self, mid: int) -> None:
        assert self.store is not None
        slot = self.store.metric_define(self.kind[mid], self.name[mid])
        if slot < 0:  # the store is full (shared data filled it): this one stays the process's own
            logging.getLogger("meshplug.agent.plugin").warning(
                "the workers' shared store is full: plugin metric %r is kept per worker (/stats sums the workers'"
                " values; get_metric reads this worker's)",
                self.name[mid].decode(errors="replace"),
            )
            return
        self.slot[mid] = slot
        self.store.metric_add(slot, self.value.pop(mid, 0))

    def define(self, kind: int, name: bytes) -> int:
        key = (kind, name)
        if key not in self._by_name:
            mid = (next(self._seq[kind]) << 2) | kind
            self._by_name[key] = mid
            self.kind[mid] = kind
            self.name[mid] = name
            self.value[mid] = 0
            if kind == self.HISTOGRAM:
                self.bins[mid] = {}
            elif self.store is not None:
                self._place(mid)
        return self._by_name[key]

    def add(self, mid: int, delta: int) -> None:
        """A counter or gauge plus `delta` (negative: minus)."""
        slot = self.slot.get(mid)
        if slot is None:
            self.value[mid] += delta
        else:
            assert self.store is not None
            self.store.metric_add(slot, delta)

    def set(self, mid: int, value: int) -> None:
        """A gauge's value (the last set wins, in any worker)."""
        slot = self.slot.get(mid)
        if slot is None:
            self.value[mid] = value
        else:
            assert self.store is not None
            self.store.metric_set(slot, value)

    def get(self, mid: int) -> int:
        slot = self.slot.get(mid)
        if slot is None:
            return self.value[mid]
        assert self.store is not None
        return self.store.metric_get(slot)

    def record(self, mid: int, value: int) -> None:
        """One value into histogram `mid` (its bin's count; `value` counts the values recorded)."""
        bins = self.bins[mid]
        floor = envoystats.bin_floor(value)
        bins[floor] = bins.get(floor, 0) + 1
        self.value[mid] += 1

    def snapshot(self) -> dict[str, int]:
        """Every metric's value by name, the store's included."""
        return {self.name[m].decode(errors="replace"): self.get(m) for m in self.kind}


# --- what the imports call ----------------------------------------------------------------------------
class Host:
    """The process-wide services imports reach through `vm.host` (meshplug.agent.host.Host implements it)."""

    log_level: int
    upstreams: frozenset[str] | None
    node: dict[str, metadata.Value]
    #: the clusters plugins' xds.cluster_metadata comes from
    clusters: dict[str, config.Cluster]
    node_id: str
    cluster: str
    shared_data: SharedData
    metrics: Metrics
    foreign: dict[bytes, Callable[[bytes], bytes | None]]

    def set_tick_period(self, root: RootContext, period_ms: int) -> None:
        raise NotImplementedError

    def dispatch_http_call(
        self,
        wvm: Vm,
        root: RootContext,
        *,
        upstream: str,
        headers: streamapi.Headers,
        body: bytes,
        trailers: streamapi.Headers,
        timeout_ms: int,
    ) -> int:
        raise NotImplementedError

    def dispatch_grpc(  # noqa: PLR0917 -- the call's parts
        self,
        wvm: Vm,
        root: RootContext,
        cluster: str,
        authority: str,
        service: bytes,
        method: bytes,
        metadata: streamapi.Headers,
        message: bytes | None,
        timeout_ms: int,
    ) -> int:
        """A gRPC call (`message` set) or stream (None) to `cluster`: its token."""
        raise NotImplementedError

    def grpc_op(self, wvm: Vm, token: int, op: str, message: bytes = b"", end_stream: bool = False) -> int:
        """proxy_grpc_send ("send") / _cancel ("cancel") / _close ("close") on `token`: an ABI status."""
        raise NotImplementedError

    def register_queue(self, wvm: Vm, root: RootContext, name: bytes) -> int:
        raise NotImplementedError

    def resolve_queue(self, vm_id: str, name: bytes) -> int | None:
        raise NotImplementedError

    def enqueue(self, qid: int, value: bytes) -> bool:
        raise NotImplementedError

    def dequeue(self, qid: int) -> bytes | bool | None:
        raise NotImplementedError


class Vm:
    """One wasm instance as the imports see it (meshplug.agent.wasmvm.WasmVm implements it)."""

    host: Host
    vm_id: str
    label: str
    env: tuple[tuple[str, str], ...]
    contexts: dict[int, Context]
    current: Context | None
    effective: Context | None
    after: list[Callable[[], None]]
    guest: vm.Guest

    def allocate(self, size: int) -> int:
        """Allocate `size` (> 0) bytes in the guest; 0 on failure."""
        raise NotImplementedError

    def next_token(self) -> int:
        raise NotImplementedError

    def defer(self, action: Callable[[], None]) -> None:
        """Run `action` after the outermost guest call returns (side effects are never re-entrant)."""
        self.after.append(action)

    def log(self, level: int, message: str) -> None:
        raise NotImplementedError


class PluginRef(streamapi.NativeFilter):
    """A configured plugin as its contexts see it (meshplug.agent.plugin.Plugin implements it); a chain filter
    the compiled chain calls directly."""

    config: PluginConfig

    def delete_root(self) -> None:
        raise NotImplementedError


class Context(streamapi.NativeFilterStream):
    """A proxy-wasm context on one VM. The defaults are a root context's answers; stream contexts
    override what applies to them (an HTTP context is the chain's filter stream, called directly)."""

    #: facts of an HTTP context that properties read (see meshplug.agent.contexts.HttpContext)
    request_headers_attached = False
    response_headers_attached = False
    completed_ns = 0
    #: a local reply was sent during the callback in flight on this context (forces "stop", cpp-host)
    local_reply_sent = False
    #: properties the plugin set on this context (proxy_set_property): path -> value; None until the first
    properties: dict[bytes, bytes] | None = None

    def __init__(self, vm_: Vm, cid: int, root: RootContext | None, kind: int) -> None:
        self.vm = vm_
        self.id = cid
        #: the id as an object, boxed once (guest calls pass it; an HTTP context sets it when the guest creates it)
        self.cid: object = cid
        self.root: RootContext = root if root is not None else self  # type: ignore[assignment]
        self.kind = kind
        self.deleted = False

    @property
    def plugin(self) -> PluginRef:
        return self.root.plugin_ref

    def header_map(self, map_type: int) -> streamapi.Headers | None:
        return None

    def buffer(self, buffer_type: int) -> bytes | bytearray | None:
        return None

    def writable_buffer(self, buffer_type: int) -> bytearray | None:
        return None

    def buffer_parts(self, buffer_type: int) -> tuple[int, list[bytes | bytearray]] | None:
        """`buffer` as its size and the pieces it is held in, in order: a caller that only copies it out needs no
        joined copy (an HTTP context's body is held as the chunks it came in)."""
        buf = self.buffer(buffer_type)
        return None if buf is None else (len(buf), [buf])

    def writable_size(self, buffer_type: int) -> int | None:
        """len(`writable_buffer`) without making it (None: not writable)."""
        buf = self.writable_buffer(buffer_type)
        return None if buf is None else len(buf)

    def replaces_whole(self, buffer_type: int) -> bool:
        """Whether a whole rewrite of this writable buffer goes to `replace_buffer` (as bytes, no copy on)."""
        return False

    def replace_buffer(self, buffer_type: int, data: bytes) -> None:
        """The whole writable buffer becomes `data` (only where `replaces_whole`)."""
        raise NotImplementedError(buffer_type)

    def stream_info(self) -> streamapi.StreamInfo | None:
        """The connection/stream facts of a stream context (None for a root)."""
        return None

    def stream_control(self) -> streamapi.StreamControl | None:
        """The HTTP stream an HTTP context acts on (None for roots and TCP contexts)."""
        return None

    # stream actions (proxy_continue_stream & co.): a root has no stream, cpp-host answers OK
    def continue_stream(self, stream_type: int) -> int:
        return OK if stream_type <= STREAM_UPSTREAM else BAD_ARGUMENT

    def close_stream(self, stream_type: int) -> int:
        return OK if stream_type <= STREAM_UPSTREAM else BAD_ARGUMENT

    def send_local_response(self, reply: streamapi.LocalReply) -> int:
        return BAD_ARGUMENT

    def clear_route_cache(self) -> None:
        return None

    def done(self) -> int:
        """proxy_done: only a root context whose on_done deferred its deletion may call it."""
        return NOT_FOUND

    def on_vm_failed(self) -> None:
        """The VM failed while another context was in flight: a stream paused on it learns it (an HTTP
        context fails its stream through its StreamControl); roots and TCP contexts do nothing."""
        return None


class RootContext(Context):
    """A plugin's root context: its configuration buffers, http-call results, tick period, status."""

    def __init__(self, vm_: Vm, cid: int, plugin: PluginRef) -> None:
        super().__init__(vm_, cid, None, KIND_ROOT)
        self.plugin_ref = plugin
        self.buffers: dict[int, bytes] = {}
        self.maps: dict[int, streamapi.Headers] = {}
        self.in_callback = ""
        self.tick_period_ms = 0
        self.next_tick: float | None = None
        self.status: tuple[int, bytes] = (0, b"")
        self.done_pending = False
        #: properties declared with the declare_property foreign function: path -> read-only
        self.declared: dict[bytes, bool] = {}

    def header_map(self, map_type: int) -> streamapi.Headers | None:
        return self.maps.get(map_type)

    def buffer(self, buffer_type: int) -> bytes | bytearray | None:
        if buffer_type == BUF_VM_CONFIGURATION:
            return self.plugin_ref.config.vm_configuration
        return self.buffers.get(buffer_type)

    def done(self) -> int:
        if not self.done_pending:
            return NOT_FOUND
        self.done_pending = False
        self.vm.defer(self.plugin_ref.delete_root)
        return OK

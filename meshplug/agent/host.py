"""The proxy-wasm host: VMs, plugin lifecycle, contexts, and the process-wide state plugins share.

Called by the agent's I/O shell (meshplug.agent.server and its chain builder). Usage::

    host = Host(upstreams={"auth", "cache"}, node={"NAME": "pod-1", "NAMESPACE": "ns"})
    plugin = host.load(PluginConfig(name="ns.add-header", root_id="add_header", configuration=b"{...}",
                                    fail_strategy=FailStrategy.FAIL_OPEN, phase=Phase.AUTHN), module_bytes)
    chain = meshplug.agent.streamapi.Chain([plugin, ...])     # Plugin implements streamapi.Filter
    ... per request: streamapi.new_stream(...) (see streamapi.py) ...
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
import os
import time
import zlib
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import wasmtime

from meshplug import errors, limits
from meshplug.agent import config, hostapi, metadata, streamapi, vm
from meshplug.agent.callouts import (
    GrpcCallout,
    GrpcEnd,
    GrpcSend,
    GrpcWork,
    HttpCallout,
    HttpCalloutResult,
    LogRecord,
)
from meshplug.agent.contexts import ConnectionInfo, HttpContext, TcpStream
from meshplug.agent.hostapi import (
    CRITICAL,
    DEBUG,
    ERROR,
    INFO,
    TRACE,
    WARN,
    Context,
    Metrics,
    PluginConfig,
    RootContext,
    SharedData,
)
from meshplug.agent.plugin import Plugin
from meshplug.agent.wasmvm import WasmVm

if TYPE_CHECKING:
    from meshplug.agent import sharing

__all__ = [
    "CRITICAL",
    "DEBUG",
    "ERROR",
    "INFO",
    "TRACE",
    "WARN",
    "ConnectionInfo",
    "Context",
    "GrpcCallout",
    "GrpcEnd",
    "GrpcSend",
    "GrpcWork",
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

Headers = streamapi.Headers

#: spdlog's level names, as Envoy writes them in its log lines (index: proxy-wasm log level)
_LEVEL_NAMES: Final = ("trace", "debug", "info", "warning", "error", "critical")


class _LogLines:
    """Plugin log lines on stderr in Envoy's format, ``[%Y-%m-%d %T.%e][%t][%l][%n] %v`` (Envoy writes the
    thread id, the agent its process id): one write per line, no logging-framework record, the timestamp text
    made once per second. Envoy's wasm lines read ``wasm log <plugin> <root_id> <vm_id>: <message>`` (the empty
    ids left out), its Lua lines ``script log: <message>``."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.second = -1
        self.stamp = ""

    def write(self, level: int, logger: str, text: str) -> None:
        """One line, straight to file descriptor 2 (sys.stderr's text and buffer layers cost a third of a plugin
        log line; stderr is line-buffered, so the logging module's lines on it are never held back behind
        these). The milliseconds padded by hand: a format spec is the slow path of a string format."""
        now = time.time()
        second = int(now)
        if second != self.second:
            self.second = second
            self.stamp = f"[{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(second))}."
        name = _LEVEL_NAMES[level] if 0 <= level < len(_LEVEL_NAMES) else "info"
        millis = str(1000 + int((now - second) * 1000))[1:]
        line = f"{self.stamp}{millis}][{self.pid}][{name}][{logger}] {text}\n".encode(errors="backslashreplace")
        while line:
            try:
                written = os.write(2, line)
            except InterruptedError:
                continue
            except OSError:  # stderr closed, or a full non-blocking pipe: the line is dropped (never the guest's error)
                return
            line = line[written:]


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
        if share is not None:  # counters and gauges: one per name for every worker (Envoy's one stats store)
            self.metrics.share(share.store)
        self.logs = self.shared.logs
        self.recycle_bytes = recycle_bytes
        self._lines = _LogLines()
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
        """A Lua filter's log line (meshplug.agent.lua), kept for /plugin_logs and written as Envoy's lua logger."""
        if level < self.log_level:
            return
        self.logs.append(LogRecord(plugin, level, message))
        self._lines.write(level, "lua", "script log: " + message)

    def record_wasm_log(self, config: PluginConfig | None, label: str, level: int, message: str) -> None:
        """A plugin's proxy_log line (the caller checked `log_level`): kept for /plugin_logs and written as
        Envoy's wasm logger; `config` None: the VM's own line outside any plugin's context (`label`)."""
        if config is None:
            self.logs.append(LogRecord(label, level, message))
            self._lines.write(level, "wasm", f"wasm log {label}: {message}")
            return
        self.logs.append(LogRecord(config.name, level, message))
        ids = config.name
        if config.root_id:
            ids = f"{ids} {config.root_id}" if ids else config.root_id
        if config.vm_id:
            ids = f"{ids} {config.vm_id}" if ids else config.vm_id
        self._lines.write(level, "wasm", f"wasm log {ids}: {message}" if ids else f"wasm log: {message}")

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

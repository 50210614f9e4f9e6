"""Glue between the loader, the wasm host and the proxy: a plugin set -> started plugins -> a chain.

Called by `meshplug.agent.runtime`'s chain builder in a worker thread, only for sets with plugins (so an
agent with no plugins never imports wasmtime). Each applied set gets its own `host.Host` (VMs, shared
data, queues, metrics) when it has wasm plugins, a `lua.Runtime` when it has Lua filters (each filter its
own LuaJIT state), and a `Driver` that performs their asynchronous work on the event loop: HTTP calls
through the proxy's named clusters, ticks, and deferred queue notifications.
The returned `loader.Chain` carries the `chain.Chain` the proxy uses (each plugin with its resource's `match`
rules) plus views, metrics and close hooks.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Final

from meshplug import errors, limits, prometheus, protocol
from meshplug.agent import chain, config, envoystats, grpccall, host, loader, lua, relay, server

log = logging.getLogger("meshplug.agent.filters")


#: done HTTP calls are dropped from a driver's set of calls when it reaches this size
_CALLS_PRUNE: Final = 64


class Driver:
    """Runs one host's timers, callouts and deferred work on the event loop."""

    def __init__(self, proxy: server.Proxy, loop: asyncio.AbstractEventLoop) -> None:
        self.proxy = proxy
        self.loop = loop
        self.host: host.Host | None = None
        self.lua: lua.Runtime | None = None
        self.closed = False
        self._timer: asyncio.TimerHandle | None = None
        #: the plugins' HTTP calls (in flight, and done ones until pruned): abandoned when the set is closed
        self._calls: set[relay.Call] = set()
        self._grpc: dict[int, grpccall.GrpcClientCall] = {}  # plugins' open gRPC calls and streams
        self._memory_due = time.monotonic() + limits.VM_MEMORY_CHECK_S  # next look at the VMs' memory

    def wakeup(self) -> None:
        """The host has new work; may be called from the loader's worker thread."""
        if self.closed:
            return
        if asyncio.events._get_running_loop() is self.loop:  # (None off the loop thread: the loader's)
            self.loop.call_soon(self.run)  # on the loop's thread (a plugin's HTTP call): no self-pipe write + read
        else:
            self.loop.call_soon_threadsafe(self.run)

    def run(self) -> None:
        if self.closed:
            return
        if self.lua is not None:
            for lua_call in self.lua.take_http_calls():
                ms = lua_call.timeout_ms
                timeout_s = ms / 1000.0 if ms > 0 else limits.UPSTREAM_RESPONSE_TIMEOUT_S
                self._start(
                    lua_call.cluster,
                    lua_call.headers,
                    lua_call.body,
                    timeout_s,
                    functools.partial(self._lua_called, self.lua, lua_call),
                )
        h = self.host
        if h is None:
            return
        try:
            for call in h.take_http_calls():
                done = functools.partial(self._called, h, call)
                self._start(call.upstream, call.headers, call.body, call.timeout_ms / 1000.0, done)
            for work in h.take_grpc_work():
                self._grpc_work(work)
            h.run_deferred()
            due = h.next_timer()
            if due is not None and due <= time.monotonic():
                h.run_timers()
                due = h.next_timer()
            if h.recycle_bytes:  # leaking VMs are recycled (checked every VM_MEMORY_CHECK_S)
                now = time.monotonic()
                if now >= self._memory_due:
                    h.check_memory()
                    self._memory_due = now + limits.VM_MEMORY_CHECK_S
                due = self._memory_due if due is None else min(due, self._memory_due)
        except errors.MeshplugError as exc:  # the host contains plugin failures; this is a last resort
            log.error("host work failed: %s", exc.message)
            due = h.next_timer()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if due is not None:
            self._timer = self.loop.call_later(max(0.0, due - time.monotonic()), self.run)

    def _start(
        self,
        cluster: str,
        headers: Sequence[tuple[bytes, bytes]],
        body: bytes,
        timeout_s: float,
        done: Callable[[relay.Outcome], None],
    ) -> None:
        """One plugin HTTP call through the proxy's cluster, without a task: `done` runs on a later turn."""
        started = self.proxy.start_http_call(cluster, headers, body, timeout_s, done)
        if started is not None:
            calls = self._calls
            if len(calls) >= _CALLS_PRUNE:
                self._calls = calls = {c for c in calls if not c.finished}
            calls.add(started)

    def _called(self, h: host.Host, call: host.HttpCallout, outcome: relay.Outcome) -> None:
        if self.closed:
            return
        if outcome is None:
            result = None
        else:
            status, headers, body, trailers = outcome
            result = host.HttpCalloutResult(
                headers=((b":status", str(status).encode()), *headers), body=body, trailers=tuple(trailers)
            )
        h.complete_http_call(call.id, result)
        self.run()

    def _lua_called(self, rt: lua.Runtime, call: lua.Callout, outcome: relay.Outcome) -> None:
        if self.closed:
            return
        rt.complete_http_call(call.id, None if outcome is None else outcome[:3])
        self.run()

    # gRPC calls: the host's work performed, their outcome handed back (grpccall.Events)
    def _grpc_work(self, work: host.GrpcWork) -> None:
        if isinstance(work, host.GrpcCallout):
            call = grpccall.GrpcClientCall(work.id, _GrpcEvents(self), stream=work.message is None)
            self._grpc[work.id] = call
            path = b"/%b/%b" % (work.service, work.method)
            proxy = self.proxy
            call.start(
                proxy.pools[work.cluster],
                proxy.h2pools.get(work.cluster),
                work.authority or work.cluster,
                path,
                work.metadata,
                work.message,
                work.timeout_ms,
            )
            return
        live = self._grpc.get(work.id)
        if live is None:
            return
        if isinstance(work, host.GrpcSend):
            live.send(work.message, work.end_stream)
        elif work.cancel:
            self._grpc.pop(work.id, None)
            live.cancel()
        else:
            live.half_close()

    def close(self) -> None:
        self.closed = True
        for live in self._grpc.values():
            live.cancel()
        self._grpc.clear()
        if self._timer is not None:
            self._timer.cancel()
        for pending in self._calls:
            pending.abandon()
        self._calls.clear()
        if self.host is not None:
            self.host.close()
        if self.lua is not None:
            self.lua.close()


class _GrpcEvents:
    """A gRPC call's outcome to the host (grpccall.Events), then the driver runs what the plugin asked for."""

    def __init__(self, driver: Driver) -> None:
        self.driver = driver

    def _host(self) -> host.Host | None:
        d = self.driver
        return None if d.closed else d.host

    def _after(self) -> None:
        self.driver.loop.call_soon(self.driver.run)

    def initial_metadata(self, call_id: int, headers: list[tuple[bytes, bytes]]) -> None:
        h = self._host()
        if h is not None:
            h.grpc_initial_metadata(call_id, headers)
            self._after()

    def message(self, call_id: int, message: bytes) -> None:
        live = self.driver._grpc.get(call_id)
        if live is not None and not live.stream:
            self.driver._grpc.pop(call_id, None)
        h = self._host()
        if h is not None:
            h.grpc_message(call_id, message)
            self._after()

    def trailing_metadata(self, call_id: int, trailers: list[tuple[bytes, bytes]]) -> None:
        h = self._host()
        if h is not None:
            h.grpc_trailing_metadata(call_id, trailers)
            self._after()

    def close(self, call_id: int, status: int, message: bytes) -> None:
        self.driver._grpc.pop(call_id, None)
        h = self._host()
        if h is not None:
            h.grpc_close(call_id, status, message)
            self._after()


_METRIC_CHARS: Final = re.compile(r"[^a-zA-Z0-9_]")


def _chain_metrics_text(chains: Sequence[chain.Chain]) -> str:
    """Per plugin (label ``plugin``, Envoy's plugin name), summed over the listeners' chains: failures, FAIL_OPEN
    bypasses, and the local replies the plugin sent by status class (a plugin's 403 is counted here and in
    downstream_rq_local_reply)."""
    failures: dict[str, int] = {}
    bypasses: dict[str, int] = {}
    by_class: dict[str, list[int]] = {}
    for built in chains:
        for i, f in enumerate(built.filters):
            failures[f.name] = failures.get(f.name, 0) + built.failures[i]
            bypasses[f.name] = bypasses.get(f.name, 0) + built.bypasses[i]
            counts = by_class.setdefault(f.name, [0] * len(built.local_replies[i]))
            for cls, count in enumerate(built.local_replies[i]):
                counts[cls] += count
    replies = [
        ((("plugin", name), ("code_class", f"{cls}xx")), float(count))
        for name, counts in by_class.items()
        for cls, count in enumerate(counts)
        if count
    ]
    lines = [
        *prometheus.family(
            "meshplug_agent_plugin_failures_total",
            "counter",
            "Times a plugin failed while serving a stream (trap, CPU budget, memory cap).",
            [((("plugin", n),), float(v)) for n, v in failures.items()],
        ),
        *prometheus.family(
            "meshplug_agent_plugin_fail_open_bypasses_total",
            "counter",
            "Streams that went on without a failed FAIL_OPEN plugin.",
            [((("plugin", n),), float(v)) for n, v in bypasses.items()],
        ),
        *prometheus.family(
            "meshplug_agent_plugin_local_replies_total",
            "counter",
            "Local replies a plugin sent instead of the upstream's response, by status class.",
            replies,
        ),
    ]
    health = plugin_health(chains, {})
    lines += prometheus.family(
        "meshplug_agent_plugin_requests_total",
        "counter",
        "Requests through the listener chains a plugin is in.",
        [((("plugin", h.name),), float(h.requests)) for h in health],
    )
    # the request time histogram (ms) of those requests: cumulative buckets, le last; no _sum (not kept)
    lines += [
        "# HELP meshplug_agent_plugin_request_time_ms Time from a request's start to its exchange's end, in ms.",
        "# TYPE meshplug_agent_plugin_request_time_ms histogram",
    ]
    bounds = [*(format(b, "g") for b in limits.PLUGIN_RQ_TIME_BUCKETS_MS), "+Inf"]
    for h in health:
        running = 0
        for le, count in zip(bounds, h.latency, strict=True):
            running += count
            lines.append(f'meshplug_agent_plugin_request_time_ms_bucket{{le="{le}",plugin="{h.name}"}} {running}')
        lines.append(f'meshplug_agent_plugin_request_time_ms_count{{plugin="{h.name}"}} {running}')
    return "\n".join(lines) + "\n"


def plugin_health(chains: Sequence[chain.Chain], digests: Mapping[str, str]) -> tuple[protocol.PluginHealth, ...]:
    """Per plugin (Envoy's plugin name), summed over the listeners' chains it is in: the requests through them,
    its failures, its own 5xx local replies and the request time histogram (what a canary rollout compares)."""
    width = len(limits.PLUGIN_RQ_TIME_BUCKETS_MS) + 1
    sums: dict[str, list[int]] = {}  # name -> [requests, failures, local 5xx, *latency]
    for built in chains:
        for i, f in enumerate(built.filters):
            row = sums.setdefault(f.name, [0] * (3 + width))
            row[0] += built.requests
            row[1] += built.failures[i]
            row[2] += built.local_replies[i][5]
            for b, count in enumerate(built.latency):
                row[3 + b] += count
    return tuple(
        protocol.PluginHealth(name, digests.get(name, ""), row[0], row[1], row[2], tuple(row[3:]))
        for name, row in sums.items()
    )


def _lua_metrics_text(rt: lua.Runtime) -> str:
    """Envoy's per-filter Lua stats (<stat_prefix>.errors / .executions) as labelled counters."""
    lines = ["# HELP meshplug_lua_errors_total Lua filter script errors.", "# TYPE meshplug_lua_errors_total counter"]
    lines += [f'meshplug_lua_errors_total{{filter="{f.name}"}} {f.errors}' for f in rt.filters]
    lines.append("# HELP meshplug_lua_executions_total Lua filter script executions.")
    lines.append("# TYPE meshplug_lua_executions_total counter")
    lines += [f'meshplug_lua_executions_total{{filter="{f.name}"}} {f.executions}' for f in rt.filters]
    return "\n".join(lines) + "\n"


def plugin_metrics_text(m: host.Metrics) -> str:
    """The plugin metrics `m` keeps (in a worker: not those in the workers' store) as Prometheus text."""
    lines: list[str] = []
    kinds = {host.Metrics.COUNTER: "counter", host.Metrics.GAUGE: "gauge", host.Metrics.HISTOGRAM: "untyped"}
    for mid, value in sorted(m.value.items(), key=lambda kv: m.name[kv[0]]):
        raw = m.name[mid].decode(errors="replace")
        name = "meshplug_plugin_" + _METRIC_CHARS.sub("_", raw)
        kind = kinds.get(m.kind[mid], "untyped")
        if kind == "counter" and not name.endswith("_total"):
            name += "_total"
        lines.append(f"# HELP {name} Metric {raw!r} defined by a plugin (proxy_define_metric).")
        lines.append(f"# TYPE {name} {kind}")
        lines.append(f"{name} {value}")
    return "\n".join(lines) + ("\n" if lines else "")


def _host_log_level() -> int:
    """The proxy-wasm log level matching the agent's logging level (debug lets trace records through)."""
    plugin_log = logging.getLogger("meshplug.agent.plugin")
    if plugin_log.isEnabledFor(logging.DEBUG):
        return host.TRACE
    if plugin_log.isEnabledFor(logging.INFO):
        return host.INFO
    return host.WARN if plugin_log.isEnabledFor(logging.WARNING) else host.ERROR


_LEVEL_NAMES: Final = {0: "trace", 1: "debug", 2: "info", 3: "warn", 4: "error", 5: "critical"}


def plugin_envoy_stats(m: host.Metrics) -> list[envoystats.Stat]:
    """The plugin metrics `m` keeps under Envoy's names: wasmcustom.<name>; histograms as their bins."""
    out: list[envoystats.Stat] = []
    for mid, value in m.value.items():
        name = envoystats.CUSTOM_PREFIX + m.name[mid].decode(errors="replace")
        if m.kind[mid] == host.Metrics.HISTOGRAM:
            out.append(envoystats.Stat(name, bins=envoystats.binned(m.bins[mid])))
        else:
            out.append(envoystats.Stat(name, value))
    return out


def plugin_metric_values(m: host.Metrics) -> dict[str, int | None]:
    """The plugin metrics `m` keeps by name (None: a histogram)."""
    return {
        m.name[mid].decode(errors="replace"): None if m.kind[mid] == host.Metrics.HISTOGRAM else value
        for mid, value in m.value.items()
    }


#: the process's shared stores (shared data, queues, metrics, plugin log), made on first use: every host
#: of the process -- each applied set's, the singletons' -- uses them (Envoy's process-wide stores)
_SHARED: list[host.Shared] = []


def shared() -> host.Shared:
    if not _SHARED:
        _SHARED.append(host.Shared())
    return _SHARED[0]


def applies(resource: protocol.ExtensionConfig, listener: config.Listener) -> bool:
    """Whether a plugin runs on a listener: its type fits the listener's (HTTP chain or TCP), the listener is
    among its `listeners` (if it names some), and some `traffic` selector takes the listener's direction and
    port (Istio's match: SERVER = inbound, CLIENT = outbound; an UNSPECIFIED listener takes both)."""
    if resource.listeners and listener.name not in resource.listeners:
        return False
    kind = protocol.PluginType.NETWORK if listener.type == "tcp" else protocol.PluginType.HTTP
    if resource.type is not kind:
        return False
    if not resource.traffic:
        return True
    for selector in resource.traffic:
        mode = selector.mode
        if mode is protocol.TrafficMode.SERVER and listener.direction == "OUTBOUND":
            continue
        if mode is protocol.TrafficMode.CLIENT and listener.direction == "INBOUND":
            continue
        if selector.ports and listener.port not in selector.ports:
            continue
        return True
    return False


def vm_env(resource: protocol.ExtensionConfig, environ: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """The VM environment: the resource's own values plus its host_env_keys read from the agent's
    environment (Istio's valueFrom HOST, Envoy's host_env_keys; a key the agent does not have is left out)."""
    own = dict(resource.vm_env)
    for key in resource.host_env_keys:
        if key in environ:
            own[key] = environ[key]
    return tuple(sorted(own.items()))


def _plugin_config(resource: protocol.ExtensionConfig) -> host.PluginConfig:
    return host.PluginConfig(
        name=resource.name,
        root_id=resource.root_id,
        configuration=resource.configuration.encode("utf-8", "surrogateescape"),
        fail_strategy=chain.FailStrategy(resource.fail_strategy.value),
        env=vm_env(resource, os.environ),
        vm_id=resource.vm_id,
        vm_configuration=resource.vm_configuration.encode("utf-8", "surrogateescape"),
    )


def _listener_chains(
    listeners: Sequence[config.Listener],
    started: Sequence[tuple[protocol.ExtensionConfig, host.Plugin | lua.LuaFilter, str, int]],
) -> tuple[dict[str, chain.Chain | None], dict[str, tuple[host.Plugin, ...]]]:
    """Each listener's chain of the started plugins that apply to it: an HTTP chain (None: none applies) or
    a TCP listener's network filters."""
    http_chains: dict[str, chain.Chain | None] = {}
    network_chains: dict[str, tuple[host.Plugin, ...]] = {}
    for listener in listeners:
        mine = [(r, p) for r, p, _, _ in started if applies(r, listener)]
        if listener.type == "tcp":
            network_chains[listener.name] = tuple(p for _, p in mine if isinstance(p, host.Plugin))
        else:
            filters = [p for _, p in mine]
            http_chains[listener.name] = chain.Chain(filters, match=[r.match for r, _ in mine]) if mine else None
    return http_chains, network_chains


def build(
    plugins: Sequence[tuple[protocol.ExtensionConfig, bytes]],
    *,
    proxy: server.Proxy,
    loop: asyncio.AbstractEventLoop,
    singletons: bool = False,
) -> loader.Chain:
    """Start every plugin (blocking: compile/deserialize, instantiate, vm_start, configure) and Lua filter
    (compile, run its top-level code), in the push's order, and make each listener's chain of the ones that
    apply to it. `singletons`: the plugins are singletons (WasmService): started on their own host, in no
    chain."""
    driver = Driver(proxy, loop)
    node = proxy.cfg.node
    h: host.Host | None = None
    if any(not r.lua for r, _ in plugins):
        h = host.Host(
            upstreams=set(proxy.pools),
            on_wakeup=driver.wakeup,
            log_level=_host_log_level(),
            node=dict(node.metadata),
            node_id=node.id,
            cluster=node.cluster,
            share=proxy.share,
            shared=shared(),
            clusters={c.name: c for c in proxy.cfg.clusters},
            recycle_bytes=proxy.cfg.wasm.recycle_memory_mb * 1024 * 1024,
        )
    rt: lua.Runtime | None = None
    if any(r.lua for r, _ in plugins):
        rt = lua.Runtime(
            clusters=set(proxy.pools),
            on_wakeup=driver.wakeup,
            record_log=None if h is None else h.record_log,  # one log, in order, for both kinds
            log_level=_host_log_level(),
        )
    driver.host, driver.lua = h, rt
    # by position: an Envoy bootstrap may name two filters alike
    configs = [None if resource.lua else _plugin_config(resource) for resource, _ in plugins]
    if h is not None:  # the wasm VMs start at once (each plugin's own start callbacks below, in order)
        h.prestart(
            [
                (c, data, r.sha256 or loader.sha256_hex(data))
                for c, (r, data) in zip(configs, plugins, strict=True)
                if c is not None
            ]
        )
    started: list[tuple[protocol.ExtensionConfig, host.Plugin | lua.LuaFilter, str, int]] = []
    for (resource, data), plugin_config in zip(plugins, configs, strict=True):
        try:
            if plugin_config is None:
                assert rt is not None
                script = rt.load(lua.LuaConfig(resource.name, resource.lua))
                started.append((resource, script, resource.sha256, len(data)))
                continue
            assert h is not None
            plugin = h.load(plugin_config, data, digest=resource.sha256 or None)
        except errors.MeshplugError as exc:  # a plugin that fails to start, a module or script that does not compile
            driver.close()
            raise loader.ResourceError(resource.name, exc) from None
        started.append((resource, plugin, loader.sha256_hex(data), len(data)))

    def views() -> list[loader.PluginView]:
        out: list[loader.PluginView] = []
        for resource, plugin, digest, size in started:
            failed = plugin.failed if isinstance(plugin, host.Plugin) else None
            out.append(
                loader.PluginView(
                    name=resource.name,
                    root_id=resource.root_id,
                    sha256=digest,
                    size=size,
                    state=protocol.PluginState.FAILED if failed is not None else protocol.PluginState.RUNNING,
                    detail=failed.message if failed is not None else "",
                )
            )
        return out

    def relevel() -> None:
        if h is not None:
            h.log_level = _host_log_level()
        if rt is not None:
            rt.log_level = _host_log_level()

    built = chain.Chain([p for _, p, _, _ in started], match=[r.match for r, _, _, _ in started])
    http_chains, network_chains = ({}, {}) if singletons else _listener_chains(proxy.cfg.listeners, started)
    serving = [c for c in http_chains.values() if c is not None]

    def metrics() -> str:
        return (
            _chain_metrics_text(serving)
            + (plugin_metrics_text(h.metrics) if h is not None else "")
            + (_lua_metrics_text(rt) if rt is not None else "")
        )

    def metric_values() -> dict[str, int | None]:
        out: dict[str, int | None] = plugin_metric_values(h.metrics) if h is not None else {}
        if rt is not None:
            out.update(lua.metric_values(rt))
        return out

    def logs() -> list[tuple[str, str, str, int]]:
        records = h.logs if h is not None else rt.logs if rt is not None else ()
        return [(r.plugin, _LEVEL_NAMES.get(r.level, str(r.level)), r.message, r.at) for r in records]

    loop.call_soon_threadsafe(driver.run)
    return loader.Chain(
        filters=built,
        network=tuple(p for _, p, _, _ in started if isinstance(p, host.Plugin)),
        http_chains=http_chains,
        network_chains=network_chains,
        views=views,
        metrics=metrics,
        metric_values=metric_values,
        logs=logs,
        close=driver.close,
        relevel=relevel,
        wasm=h is not None,
        plugin_stats=(lambda: plugin_envoy_stats(h.metrics)) if h is not None else list,
        plugin_health=lambda: plugin_health(serving, {r.name: digest for r, _, digest, _ in started}),
    )

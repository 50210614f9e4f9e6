"""The agent process: event loop (uvloop), proxy listeners, admin and push endpoints, signals, drain.

Called by `meshplug agent` and `meshplug run` (meshplug.commands). Start order: apply the initial plugin
set (the persisted last good push if there is one, else the static config's plugins) BEFORE the listeners
open, so the first request already sees the plugins; then listeners, admin, push. SIGTERM/SIGINT: stop
accepting, let in-flight exchanges finish (connections close after their current response) up to the
drain timeout, then exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import gc
import json
import logging
import re
import signal
import ssl
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import uvloop

from meshplug import errors, limits, native, protocol
from meshplug.agent import admin, config, envoystats, loader, push, server, tls, wire

log = logging.getLogger("meshplug.agent")

GAUGES = frozenset({"downstream_cx_active", "downstream_rq_active", "upstream_cx_active"})


def build_chain(
    plugins: Sequence[tuple[protocol.ExtensionConfig, bytes]],
    *,
    proxy: server.Proxy,
    loop: asyncio.AbstractEventLoop,
    singletons: bool = False,
) -> loader.Chain:
    """Start every plugin's VM and make the listeners' chains (blocking; runs in a worker thread)."""
    if not plugins:
        return loader.empty_chain()
    from meshplug.agent import filters  # noqa: PLC0415 -- the wasm host is imported only when a plugin needs it

    return filters.build(plugins, proxy=proxy, loop=loop, singletons=singletons)


#: glibc's mallopt parameters
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def tune_malloc() -> bool:
    """Set the process's malloc thresholds (limits.MALLOC_*) where the C library is glibc; False elsewhere (musl
    and others keep their defaults)."""
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(
        mallopt(_M_MMAP_THRESHOLD, limits.MALLOC_MMAP_THRESHOLD_BYTES)
        and mallopt(_M_TRIM_THRESHOLD, limits.MALLOC_TRIM_THRESHOLD_BYTES)
    )


def _push_tls(settings: config.PushTLS | None) -> tls.ReloadingContext | None:
    if settings is None:
        return None
    try:
        return tls.ReloadingContext(settings)
    except (OSError, ssl.SSLError) as exc:
        raise errors.ConfigError(f"push.tls: cannot load {settings.cert_file} / {settings.key_file}: {exc}") from None


class Agent:
    def __init__(self, cfg: config.AgentConfig) -> None:
        self.cfg = cfg
        self.loop = asyncio.get_running_loop()
        self.proxy = server.Proxy(cfg, loop=self.loop)
        self.store = loader.StateStore(cfg.state_dir)
        build = functools.partial(build_chain, proxy=self.proxy, loop=self.loop)
        self.sources = loader.Sources(cfg.modules, state_dir=cfg.state_dir)
        self.applier = push.Applier(self.proxy, store=self.store, sources=self.sources, build=build)
        self.admin = admin.ControlServer(self._admin)
        self.push_server: admin.ControlServer | None = None
        #: the singleton plugins (bootstrap_extensions), started once before anything else
        self.singletons: loader.LoadedSet | None = None
        self.ready = False
        self.ports: dict[str, int] = {}
        self._stop = asyncio.Event()

    async def _start_singletons(self) -> None:
        """Envoy starts bootstrap extensions before listeners: so do we; one that fails stops the start."""
        if not self.cfg.singletons:
            return
        push = protocol.Push(version_info=protocol.STATIC_VERSION, nonce="", resources=self.cfg.singletons)
        build = functools.partial(build_chain, proxy=self.proxy, loop=self.loop, singletons=True)
        try:
            loaded, _ = await self.loop.run_in_executor(
                None,
                lambda: loader.load(push, store=self.store, sources=self.sources, build=build, singletons=True),
            )
        except loader.ResourceError as exc:
            raise errors.ConfigError(
                f"singleton {exc.resource or '?'} failed to start: {exc.error.message}", reason=exc.error.reason
            ) from None
        self.singletons = loaded
        log.info("started %d singleton plugin(s)", len(self.cfg.singletons))

    def plugin_chains(self) -> list[loader.Chain]:
        """The chains whose plugins' logs and metrics admin shows: the active set's, the singletons'. Every
        chain with wasm plugins reads the process's shared stores, so only the first of those counts."""
        out: list[loader.Chain] = []
        wasm = False
        for loaded in (self.applier.active, self.singletons):
            if loaded is None or (loaded.chain.wasm and wasm):
                continue
            wasm = wasm or loaded.chain.wasm
            out.append(loaded.chain)
        return out

    async def _initial(self) -> None:
        persisted = self.store.last_good()
        if persisted is not None:
            reply = await self.applier.apply(persisted, persist=False)
            if reply.ack:
                log.info("serving persisted config %s", persisted.version_info)
                return
            assert reply.error_detail is not None
            log.error("persisted config %s failed to load: %s", persisted.version_info, reply.error_detail.message)
        static = protocol.Push(version_info=protocol.STATIC_VERSION, nonce="", resources=self.cfg.plugins)
        reply = await self.applier.apply(static, persist=False)
        if not reply.ack:
            assert reply.error_detail is not None
            d = reply.error_detail
            raise errors.ConfigError(f"static plugin {d.resource or '?'} failed to load: {d.message}", reason=d.reason)

    async def start(self) -> None:
        wire.refresh_debug()
        # everything imported and configured so far lives as long as the process: out of the collector's
        # sight, so its full collections stay cheap (plugin chains come after: they must stay collectable)
        gc.freeze()
        await self._start_singletons()
        await self._initial()
        await self.listen()
        self.ports["admin"] = await self.admin.start(self.cfg.admin.address, self.cfg.admin.port)
        if self.cfg.push is not None:
            push_tls = _push_tls(self.cfg.push.tls)
            if push_tls is None:
                log.warning("push port %d takes plain HTTP (push.allow_plaintext): local runs only", self.cfg.push.port)
            signatures = self.sources.signatures
            level = logging.WARNING if signatures.trusted is None else logging.INFO
            log.log(level, "signatures: %s", signatures.describe())
            handler = push.handler(self.applier, self.cfg.push.token_file, health=self.health)
            self.push_server = admin.ControlServer(handler, tls=push_tls)
            self.ports["push"] = await self.push_server.start(self.cfg.push.address, self.cfg.push.port)
        self.ready = True
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self._stop.set)
        # one machine-readable line: tools and tests learn the bound ports (config may say port 0)
        sys.stdout.write(json.dumps({"event": "ready", "ports": self.ports}) + "\n")
        sys.stdout.flush()

    async def listen(self) -> None:
        """Open the listeners (a multi-worker agent's parent has its workers open theirs)."""
        await self.proxy.start()
        for lst, srv in zip(self.cfg.listeners, self.proxy.servers, strict=True):
            self.ports[lst.name] = self.proxy.port_of(srv)

    async def run_until_stopped(self) -> bool:
        await self._stop.wait()
        log.info("draining (up to %.0fs)", self.cfg.drain_timeout_s)
        self.ready = False
        clean = await self.proxy.drain(self.cfg.drain_timeout_s)
        await self.admin.stop()
        if self.push_server is not None:
            await self.push_server.stop()
        if self.applier.active is not None:
            self.applier.active.chain.close()
        if self.singletons is not None:
            self.singletons.chain.close()
        self.sources.close()
        log.info("stopped (%s)", "drained" if clean else "drain deadline hit, connections aborted")
        return clean

    # --- admin routes ---
    async def _admin(self, request: admin.Request) -> admin.Response:  # noqa: PLR0911 - one return per admin route: a table
        path = request.path
        if path == "/ready":
            if self.ready:
                return admin.Response(200, b"LIVE\n")
            return admin.Response(503, b"DRAINING\n" if self.proxy.draining else b"PRE_INITIALIZING\n")
        if path == "/config_dump":
            return admin.Response(200, loader.dumps(self.config_dump()), "application/json")
        if path == "/stats":
            return self.stats_route(request)
        if path == "/stats/prometheus":
            return admin.Response(200, self.prometheus(), "text/plain; version=0.0.4")
        if path == "/logging":
            response = admin.logging_route(request)
            if request.method == "POST" and response.status == 200:
                wire.refresh_debug()  # the data path's cached debug switch
                for loaded in (self.applier.active, self.singletons):
                    if loaded is not None:
                        loaded.chain.relevel()  # the running hosts' proxy_get_log_level and log filter
            return response
        if path == "/plugin_logs":  # the plugins' proxy_log records, oldest first (bounded by the host)
            records = (r for c in self.plugin_chains() for r in c.logs())
            body = [{"plugin": p, "level": lvl, "message": m} for p, lvl, m, _ in records]
            return admin.Response(200, loader.dumps(body), "application/json")
        if path == "/plugin_stats":  # the plugins' own metrics by the name they defined (histograms: null)
            values: dict[str, int | None] = {}
            for c in self.plugin_chains():
                values.update(c.metric_values())
            return admin.Response(200, loader.dumps(values), "application/json")
        return admin.Response(404, b"not found\n")

    def config_dump(self) -> dict[str, object]:
        active = self.applier.active
        last = self.applier.last
        return {
            "dataplane": native.STATUS.as_dict(),
            "version_info": active.version_info if active else "",
            "nonce": active.nonce if active else "",
            "plugins": loader.json_views(active.chain.views()) if active else [],
            "resources": [r.to_json() for r in active.resources] if active else [],
            "digests": dict(active.digests) if active else {},
            # what the agent demands of pushed modules now (the trusted keys file as it reads it at this moment)
            "signatures": self.sources.signatures.describe(),
            "last_push": None
            if last is None
            else {
                "version_info": last.version_info,
                "nonce": last.nonce,
                "ack": last.ack,
                "reason": last.reason,
                "message": last.message,
                "resource": last.resource,
                "at": last.at,
                "timings": dict(last.timings),
            },
            "listeners": [
                {
                    "name": lst.name,
                    "address": lst.address,
                    "port": self.ports.get(lst.name, lst.port),
                    "cluster": lst.cluster,
                }
                for lst in self.cfg.listeners
            ],
            "clusters": [{"name": c.name, "address": c.address, "port": c.port} for c in self.cfg.clusters],
        }

    async def health(self) -> protocol.Health:
        """The applied set's per-plugin stats (GET protocol.HEALTH_PATH on the push port)."""
        active = self.applier.active
        plugins = active.chain.plugin_health() if active is not None else ()
        version = active.version_info if active is not None else ""
        return protocol.Health(version, tuple(float(b) for b in limits.PLUGIN_RQ_TIME_BUCKETS_MS), plugins)

    def stats_route(self, request: admin.Request) -> admin.Response:
        """/stats in Envoy's formats: text, ?format=json (?format=prometheus: /stats/prometheus)."""
        fmt = request.query.get("format", "")
        if fmt == "prometheus":
            return admin.Response(200, self.prometheus(), "text/plain; version=0.0.4")
        if fmt not in ("", "json"):
            return admin.Response(400, b"format must be json or prometheus\n")
        stats = self.envoy_stats()
        try:
            if fmt == "json":
                return admin.Response(200, envoystats.to_json(stats, request.query), "application/json")
            return admin.Response(200, envoystats.text(stats, request.query))
        except re.error as exc:
            return admin.Response(400, f"invalid filter regex: {exc}\n".encode())

    def envoy_stats(self) -> list[envoystats.Stat]:
        """/stats: the plugins' metrics as Envoy names them, then the agent's own counters (meshplug.<name>)."""
        out = [stat for c in self.plugin_chains() for stat in c.plugin_stats()]
        active = self.applier.active
        for p in active.chain.plugin_health() if active is not None else ():
            out += [
                envoystats.Stat(f"wasm.plugin.{p.name}.rq_total", p.requests),
                envoystats.Stat(f"wasm.plugin.{p.name}.failed", p.failures),
                envoystats.Stat(f"wasm.plugin.{p.name}.local_rq_5xx", p.local_5xx),
            ]
        out += [envoystats.Stat(f"meshplug.{name}", int(value)) for name, value in self.counters().items()]
        return out

    def counters(self) -> dict[str, int]:
        """The agent's own counters (/stats as meshplug.<name>, /stats/prometheus): the data path's, the pushes'."""
        counters = self.proxy.stats.as_dict()
        counters["push_ack_total"] = self.applier.acks
        counters["push_nack_total"] = self.applier.nacks
        return counters

    def prometheus(self) -> bytes:
        extra = "".join(c.metrics() for c in self.plugin_chains())
        return admin.prometheus(self.counters(), gauges=GAUGES, labels={}, extra=extra)


async def run(agent: Agent) -> int:
    """Start `agent`, serve until stopped; 0 when the drain finished in time."""
    try:
        await agent.start()
    except OSError as exc:
        raise errors.ConfigError(f"cannot listen: {exc.strerror or exc}") from None
    clean = await agent.run_until_stopped()
    return 0 if clean else 1


async def _main(cfg: config.AgentConfig) -> int:
    return await run(Agent(cfg))


def serve(
    cfg: config.AgentConfig, *, log_level: str = "info", main: Callable[[], Coroutine[Any, Any, int]] | None = None
) -> int:
    """Run the agent until SIGTERM/SIGINT; the exit status says whether the drain finished in time. `main`:
    another main coroutine (meshplug.agent.workers' parent)."""
    logging.basicConfig(
        level=admin.LEVELS.get(log_level, logging.INFO),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if native.STATUS.reason:
        log.warning("data path interpreted, several times slower than compiled: %s", native.STATUS.reason)
    tune_malloc()
    with contextlib.suppress(KeyboardInterrupt):
        return uvloop.run(main() if main is not None else _main(cfg))
    return 130

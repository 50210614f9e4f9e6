"""`meshplug agent --concurrency N`: N worker processes accepting on the same listeners, as Envoy's N workers.

Called by `meshplug.commands.agent` (`serve`) and, in each worker, by the same command with the hidden
``--worker SPEC``. The parent process is the pod's one agent as the outside sees it: admin endpoint (stats summed
over the workers), push endpoint (one ACK or NACK for all workers), the persisted last good set; it serves no
traffic. Each worker is a `runtime.Agent` without admin and push: its listeners bind the configured ports with
SO_REUSEPORT (the kernel spreads connections over the workers, as over Envoy's workers), its plugins run on VMs
of its own (Envoy: one VM per worker), and proxy-wasm shared data and queues live in one shared memory store all
workers map (`meshplug.agent.sharing`, meshplug/agent/_shared.c), so CAS numbers, queue tokens and items mean
the same in every worker, as across Envoy's threads.

A push: the parent prepares every resource (fetch, sha256, the operator's artifact or one compile, validation:
`meshplug.agent.loader`), then every worker loads the set from the same caches (no second fetch or compile) and
holds it; only when all loaded does the parent swap, tell the workers to switch (commit) and ACK; one failure
NACKs the push and the workers drop what they loaded (abort), so every worker keeps serving the last good set.

Parent <-> worker: one UNIX socket pair per worker, messages as a 4-byte length + JSON, each answered in order.
Requests (from the parent): ``load`` {set, resources} -> {ok, plugins | reason, message, resource}, ``commit``
{set}, ``abort`` {set}, ``listen`` -> {ports}, ``snapshot`` -> {counters, metrics, metric_values, views, logs},
``logging`` {level}, ``drain``; the snapshot's ``health`` (per-plugin stats, summed for GET
protocol.HEALTH_PATH on the push port) and ``plugin_stats`` (the plugins' metrics as /stats names them) too. The
parent's admin view sums the workers' snapshots, taken when it is asked (/stats, /stats/prometheus, ...): the
agent's counters and gauges, the plugins' histograms merged (sent as bins: `stat_json`); the singletons' (run by
the parent) count as one more snapshot. The plugins' counters and gauges are not summed: every worker keeps them
in the shared store (`hostapi.Metrics.share`), one value each as in Envoy's one stats store (a gauge holds the
last value any worker set), which the parent reads once (`Parent._store_snapshot`). A worker that exits is
started again and given the active set before it listens.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshplug import errors, limits, native, protocol
from meshplug.agent import admin, config, envoystats, filters, hostapi, loader, runtime, sharing, wire

log = logging.getLogger("meshplug.agent.workers")

_LEN = struct.Struct("<I")
#: the largest control message (a push with many resources, a snapshot with many log records)
_MAX_MESSAGE = 64 * 1024 * 1024


async def send(writer: asyncio.StreamWriter, message: Mapping[str, Any]) -> None:
    data = json.dumps(message).encode()
    writer.write(_LEN.pack(len(data)) + data)
    await writer.drain()


async def receive(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """The next message, None at end of stream."""
    try:
        head = await reader.readexactly(_LEN.size)
        (size,) = _LEN.unpack(head)
        if size > _MAX_MESSAGE:
            raise errors.ProtocolError(f"control message of {size} bytes")
        body = await reader.readexactly(size)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    out = json.loads(body)
    if not isinstance(out, dict):
        raise errors.ProtocolError("control message is not an object")
    return out


@dataclass(frozen=True)
class Spec:
    """What a worker is told at start (``--worker`` JSON): its index, its end of the control socket, the notify
    pipes (its read end; every worker's write end, by index), the shared store, and the listeners' ports."""

    index: int
    control_fd: int
    notify_read_fd: int
    notify_fds: tuple[int, ...]
    store: str
    store_size: int
    ports: Mapping[str, int]

    def encode(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def decode(cls, text: str) -> Spec:
        raw = json.loads(text)
        return cls(
            index=int(raw["index"]),
            control_fd=int(raw["control_fd"]),
            notify_read_fd=int(raw["notify_read_fd"]),
            notify_fds=tuple(int(f) for f in raw["notify_fds"]),
            store=str(raw["store"]),
            store_size=int(raw["store_size"]),
            ports={str(k): int(v) for k, v in raw["ports"].items()},
        )


def stat_json(stat: envoystats.Stat) -> list[Any]:
    """A plugin metric in a snapshot: [name, value, None] for a counter or gauge; a histogram as [name, 0,
    [[bin floor, count], ...]] (`envoystats.bin_floor`: its quantiles exactly, in a few hundred pairs at most
    however many values it recorded)."""
    if stat.bins is None:
        return [stat.name, stat.value, None]
    return [stat.name, 0, [list(pair) for pair in stat.bins]]


def sum_plugin_stats(snapshots: Iterable[Mapping[str, Any]]) -> list[envoystats.Stat]:
    """The plugins' metrics under Envoy's names (/stats) over the workers' snapshots: counters and gauges
    summed, histograms' bins merged (each value stands as its bin's floor: the same quantiles)."""
    values: dict[str, int] = {}
    bins: dict[str, dict[int, int]] = {}
    for snap in snapshots:
        for name, value, binned in snap.get("plugin_stats") or []:
            if binned is None:
                values[name] = values.get(name, 0) + int(value)
                continue
            into = bins.setdefault(name, {})
            for floor, count in binned:
                into[int(floor)] = into.get(int(floor), 0) + int(count)
    out = [envoystats.Stat(name, value) for name, value in values.items()]
    for name, counts in bins.items():
        out.append(envoystats.Stat(name, bins=envoystats.binned(counts)))
    return out


def _shared_store(path: str, size: int, *, create: bool) -> sharing.Store:
    from meshplug.agent import _shared  # noqa: PLC0415 -- a native build only (checked by `serve`)

    return _shared.Store(path, size, create)


# ------------------------------------------------------------------------------------------------------------
# worker side
# ------------------------------------------------------------------------------------------------------------
class Worker(runtime.Agent):
    """One worker: the proxy on shared ports, VMs of its own, the shared store; driven by the parent."""

    def __init__(self, cfg: config.AgentConfig, spec: Spec) -> None:
        listeners = tuple(dataclasses.replace(lst, port=spec.ports.get(lst.name, lst.port)) for lst in cfg.listeners)
        # the parent persists the pushed set and answers pushes: a worker has no state, admin or push of its own;
        # it fetches from the parent's module cache (the parent fetched every module before the workers load)
        shared_cache = cfg.modules.cache_dir or (cfg.state_dir / "cache" if cfg.state_dir is not None else None)
        modules = dataclasses.replace(cfg.modules, cache_dir=shared_cache)
        super().__init__(dataclasses.replace(cfg, listeners=listeners, push=None, state_dir=None, modules=modules))
        self.spec = spec
        self.proxy.reuse_port = True
        store = _shared_store(spec.store, spec.store_size, create=False)
        self.proxy.share = sharing.Share(store, spec.index, spec.notify_fds)
        self.pending: dict[int, loader.LoadedSet] = {}

    async def serve_parent(self) -> None:
        # as `runtime.Agent.start`: the data path's debug switch, and what is imported so far out of the
        # collector's sight (the plugin sets loaded later stay collectable)
        wire.refresh_debug()
        gc.freeze()
        os.set_blocking(self.spec.notify_read_fd, False)
        share = self.proxy.share
        assert share is not None
        self.loop.add_reader(self.spec.notify_read_fd, share.read_notifications, self.spec.notify_read_fd)
        for sig in (signal.SIGTERM, signal.SIGINT):  # the parent decides when a worker stops (drain)
            self.loop.add_signal_handler(sig, lambda: None)
        sock = socket.socket(fileno=self.spec.control_fd)
        reader, writer = await asyncio.open_connection(sock=sock)
        await send(writer, {"hello": self.spec.index, "pid": os.getpid()})
        while (message := await receive(reader)) is not None:
            try:
                reply = await self.handle(message)
            except errors.MeshplugError as exc:
                reply = {"ok": False, "reason": exc.reason, "message": exc.message}
            except Exception as exc:  # the parent NACKs; the worker keeps serving what it served
                log.exception("control operation %s failed", message.get("op"))
                reply = {"ok": False, "reason": "worker_error", "message": f"{type(exc).__name__}: {exc}"}
            await send(writer, reply)
            if message.get("op") == "drain":
                break
        writer.close()

    async def handle(self, message: Mapping[str, Any]) -> dict[str, Any]:
        ops = {
            "load": self._load,
            "commit": self._commit,
            "abort": self._abort,
            "listen": self._listen,
            "snapshot": self._snapshot,
            "logging": self._logging,
            "drain": self._drain,
        }
        op = ops.get(str(message.get("op")))
        if op is None:
            raise errors.ProtocolError(f"unknown control operation {message.get('op')!r}")
        return await op(message)

    async def _commit(self, message: Mapping[str, Any]) -> dict[str, Any]:
        loaded = self.pending.pop(int(message["set"]), None)
        if loaded is None:
            return {"ok": False, "reason": "unknown_set", "message": f"no loaded set {message['set']}"}
        old, self.applier.active = self.applier.active, loaded
        self.proxy.install(loaded.chain.http_chains, loaded.chain.network_chains)
        if old is not None:
            self.loop.call_later(self.applier.retire_after_s, old.chain.close)
        return {"ok": True}

    async def _abort(self, message: Mapping[str, Any]) -> dict[str, Any]:
        dropped = self.pending.pop(int(message["set"]), None)
        if dropped is not None:
            dropped.chain.close()
        return {"ok": True}

    async def _listen(self, _: Mapping[str, Any]) -> dict[str, Any]:
        if not self.proxy.servers:
            await self.proxy.start()
            self.ready = True
        return {"ok": True, "ports": [self.proxy.port_of(s) for s in self.proxy.servers]}

    async def _snapshot(self, _: Mapping[str, Any]) -> dict[str, Any]:
        active = self.applier.active
        return {
            "ok": True,
            "index": self.spec.index,
            "counters": self.proxy.stats.as_dict(),
            "metrics": active.chain.metrics() if active else "",
            "metric_values": active.chain.metric_values() if active else {},
            "plugin_stats": [stat_json(s) for s in active.chain.plugin_stats()] if active else [],
            "views": loader.json_views(active.chain.views()) if active else [],
            "logs": active.chain.logs() if active else [],
            "health": [h.to_json() for h in active.chain.plugin_health()] if active else [],
        }

    async def _logging(self, message: Mapping[str, Any]) -> dict[str, Any]:
        logging.getLogger("meshplug").setLevel(admin.LEVELS[str(message["level"])])
        wire.refresh_debug()
        if (active := self.applier.active) is not None:
            active.chain.relevel()
        return {"ok": True}

    async def _drain(self, _: Mapping[str, Any]) -> dict[str, Any]:
        self.ready = False
        clean = await self.proxy.drain(self.cfg.drain_timeout_s)
        if self.applier.active is not None:
            self.applier.active.chain.close()
        return {"ok": True, "clean": clean}

    async def _load(self, message: Mapping[str, Any]) -> dict[str, Any]:
        set_id, resources = int(message["set"]), message["resources"]
        push = protocol.Push(
            version_info=f"set-{set_id}",
            nonce="",
            resources=tuple(protocol.decode_extension_config(r, f"resources[{i}]") for i, r in enumerate(resources)),
        )
        try:
            loaded, _ = await self.loop.run_in_executor(
                None,
                lambda: loader.load(push, store=self.store, sources=self.sources, build=self.applier.build),
            )
        except loader.ResourceError as exc:
            return {"ok": False, "reason": exc.error.reason, "message": exc.error.message, "resource": exc.resource}
        self.pending[set_id] = loaded
        return {"ok": True, "views": loader.json_views(loaded.chain.views())}


async def _worker_main(cfg: config.AgentConfig, spec: Spec) -> int:
    worker = Worker(cfg, spec)
    await worker.serve_parent()
    worker.sources.close()
    return 0


def run_worker(cfg: config.AgentConfig, spec_text: str, *, log_level: str) -> int:
    """A worker process's main (``meshplug agent --worker SPEC``)."""
    spec = Spec.decode(spec_text)
    logging.basicConfig(
        level=admin.LEVELS.get(log_level, logging.INFO),
        stream=sys.stderr,
        format=f"%(asctime)s %(levelname)s %(name)s[worker {spec.index}]: %(message)s",
    )
    import uvloop  # noqa: PLC0415

    runtime.tune_malloc()
    return uvloop.run(_worker_main(cfg, spec))


# ------------------------------------------------------------------------------------------------------------
# parent side
# ------------------------------------------------------------------------------------------------------------
@dataclass
class _Child:
    index: int
    popen: subprocess.Popen[bytes]
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    lock: asyncio.Lock
    pid: int = 0
    listening: bool = False


class Parent(runtime.Agent):
    """The agent as the pod sees it, with `n` workers doing the proxying."""

    def __init__(self, cfg: config.AgentConfig, *, n: int, config_path: Path, log_level: str) -> None:
        super().__init__(cfg)
        self.n = n
        self.config_path = config_path
        self.log_level = log_level
        self.applier.build = self._build
        self.children: dict[int, _Child] = {}
        self.stopping = False
        self.sets = 0
        self.committed: tuple[int, tuple[protocol.ExtensionConfig, ...]] | None = None
        self.snapshots: list[dict[str, Any]] = []
        shm = "/dev/shm" if Path("/dev/shm").is_dir() else None  # noqa: S108 -- tmpfs: the store never hits a disk
        self._dir = tempfile.mkdtemp(prefix="meshplug-workers-", dir=shm)
        self.store_path = str(Path(self._dir) / "shared")
        self.shared = _shared_store(self.store_path, limits.WORKERS_SHARED_BYTES, create=True)
        self._reserved: list[socket.socket] = []
        self.worker_ports: dict[str, int] = {}
        # one notify pipe per worker and, last (index n), the parent's: the singletons (bootstrap extensions) run
        # here, on the shared store, so the queues they register are the workers' to resolve and feed
        self._pipes = [os.pipe() for _ in range(n + 1)]
        self.proxy.share = sharing.Share(self.shared, n, tuple(w for _, w in self._pipes))
        self._watchers: set[asyncio.Task[None]] = set()

    # -- workers ---------------------------------------------------------------------------------------
    def _reserve_ports(self) -> None:
        """Bind (not listen) each listener's port with SO_REUSEPORT: port 0 becomes a port all workers share."""
        for lst in self.cfg.listeners:
            family = socket.AF_INET6 if ":" in lst.address else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((lst.address, lst.port))
            self._reserved.append(sock)
            self.worker_ports[lst.name] = int(sock.getsockname()[1])

    async def _spawn(self, index: int) -> _Child:
        parent_end, child_end = socket.socketpair()
        read_fd = self._pipes[index][0]
        write_fds = tuple(w for _, w in self._pipes)
        spec = Spec(
            index=index,
            control_fd=child_end.fileno(),
            notify_read_fd=read_fd,
            notify_fds=write_fds,
            store=self.store_path,
            store_size=limits.WORKERS_SHARED_BYTES,
            ports=self.worker_ports,
        )
        source = "--envoy-config" if self.cfg.source == "envoy" else "--config"  # the file the parent read
        argv = [sys.executable, "-m", "meshplug", "agent", source, str(self.config_path)]
        argv += ["--log-level", self.log_level, "--worker", spec.encode()]
        if self.cfg.modules.trusted_keys is not None:  # each worker checks signatures against the same list
            argv += ["--trusted-keys", str(self.cfg.modules.trusted_keys)]
        popen = subprocess.Popen(argv, pass_fds=(child_end.fileno(), read_fd, *write_fds))
        child_end.close()
        reader, writer = await asyncio.open_connection(sock=parent_end)
        hello = await asyncio.wait_for(receive(reader), limits.WORKER_START_TIMEOUT_S)
        if hello is None or hello.get("hello") != index:
            popen.kill()
            raise errors.ConfigError(f"worker {index} did not start (exit {popen.wait()})")
        child = _Child(index, popen, reader, writer, asyncio.Lock(), pid=int(hello["pid"]))
        self.children[index] = child
        return child

    async def request(self, child: _Child, message: Mapping[str, Any]) -> dict[str, Any]:
        async with child.lock:
            await send(child.writer, message)
            reply = await receive(child.reader)
        if reply is None:
            raise errors.HostError(f"worker {child.index} went away", reason="worker_exited")
        return reply

    async def broadcast(self, message: Mapping[str, Any]) -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(self.request(c, message) for c in self.children.values())))

    def _sync(self, message: Mapping[str, Any]) -> list[dict[str, Any]]:
        """`broadcast` from the loader's thread."""
        return asyncio.run_coroutine_threadsafe(self.broadcast(message), self.loop).result()

    def _build(self, plugins: Sequence[tuple[protocol.ExtensionConfig, bytes]]) -> loader.Chain:
        """The applier's chain builder: every worker loads the set (prepared here already, so from the caches)."""
        self.sets += 1
        set_id = self.sets
        resources = tuple(r for r, _ in plugins)
        replies = self._sync({"op": "load", "set": set_id, "resources": [r.to_json() for r in resources]})
        failed = next((r for r in replies if not r.get("ok")), None)
        if failed is not None:
            self._sync({"op": "abort", "set": set_id})
            error = errors.PluginStartError(str(failed.get("message")), reason=str(failed.get("reason") or "worker"))
            raise loader.ResourceError(str(failed.get("resource") or ""), error)
        self.snapshots = [{"views": r.get("views") or []} for r in replies]

        async def activate() -> None:
            await self.broadcast({"op": "commit", "set": set_id})
            self.committed = (set_id, resources)

        return loader.Chain(
            filters=None,
            views=self._views,
            metrics=self._metrics,
            metric_values=self._metric_values,
            logs=self._logs,
            activate=activate,
            plugin_stats=self._plugin_stats,
            plugin_health=self._health,
        )

    async def _watch(self, child: _Child) -> None:
        """Start a worker again when it exits, with the active set, then let it listen."""
        await asyncio.get_running_loop().run_in_executor(None, child.popen.wait)
        if self.stopping:
            return
        code = child.popen.returncode
        log.error("worker %d (pid %d) exited with %s: starting it again", child.index, child.pid, code)
        self.children.pop(child.index, None)
        try:
            fresh = await self._spawn(child.index)
            if self.committed is not None:
                set_id, resources = self.committed
                load = {"op": "load", "set": set_id, "resources": [r.to_json() for r in resources]}
                loaded = await self.request(fresh, load)
                if loaded.get("ok"):
                    await self.request(fresh, {"op": "commit", "set": set_id})
            await self.request(fresh, {"op": "listen"})
        except (errors.MeshplugError, OSError, TimeoutError) as exc:
            log.error("worker %d could not be started again: %s", child.index, exc)
            return
        self._watch_child(fresh)

    def _watch_child(self, child: _Child) -> None:
        task = self.loop.create_task(self._watch(child))
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    # -- aggregated views --------------------------------------------------------------------------------
    def _views(self) -> list[loader.PluginView]:
        """Each plugin's state over the workers: failed in any worker is failed."""
        merged: dict[str, loader.PluginView] = {}
        for snap in self.snapshots:
            for v in snap.get("views") or []:
                view = loader.PluginView(
                    name=v["name"],
                    root_id=v["root_id"],
                    sha256=v["sha256"],
                    size=int(v["size"]),
                    state=protocol.PluginState(v["state"]),
                    detail=v.get("detail", ""),
                )
                if view.name not in merged or view.state is protocol.PluginState.FAILED:
                    merged[view.name] = view
        return list(merged.values())

    def _plugin_stats(self) -> list[envoystats.Stat]:
        return sum_plugin_stats(self.snapshots)

    def _metric_values(self) -> dict[str, int | None]:
        out: dict[str, int | None] = {}
        for snap in self.snapshots:
            for name, value in (snap.get("metric_values") or {}).items():
                prev = out.get(name)
                out[name] = None if value is None else (prev or 0) + int(value)
        return out

    def _metrics(self) -> str:
        """The workers' plugin metrics, each sample summed over them."""
        types: dict[str, str] = {}
        values: dict[str, float] = {}
        for snap in self.snapshots:
            for line in str(snap.get("metrics") or "").splitlines():
                if line.startswith("# TYPE "):
                    types.setdefault(line.split()[2], line)
                elif line and not line.startswith("#"):
                    name, _, number = line.rpartition(" ")
                    values[name] = values.get(name, 0.0) + float(number)
        lines: list[str] = []
        for name, value in values.items():
            base = name.partition("{")[0]
            if base in types:
                lines.append(types.pop(base))
            lines.append(f"{name} {int(value) if value.is_integer() else value}")
        return "\n".join(lines) + ("\n" if lines else "")

    def _health(self) -> tuple[protocol.PluginHealth, ...]:
        """Each plugin's health stats summed over the workers."""
        sums: dict[str, protocol.PluginHealth] = {}
        for snap in self.snapshots:
            for raw in snap.get("health") or []:
                h = protocol.PluginHealth(
                    raw["name"],
                    raw["sha256"],
                    raw["requests"],
                    raw["failures"],
                    raw["local_5xx"],
                    tuple(raw["latency"]),
                )
                prev = sums.get(h.name)
                if prev is not None:
                    h = dataclasses.replace(
                        h,
                        requests=prev.requests + h.requests,
                        failures=prev.failures + h.failures,
                        local_5xx=prev.local_5xx + h.local_5xx,
                        latency=tuple(a + b for a, b in zip(prev.latency, h.latency, strict=True)),
                    )
                sums[h.name] = h
        return tuple(sums.values())

    async def health(self) -> protocol.Health:
        await self._refresh()
        return await super().health()

    def _logs(self) -> list[tuple[str, str, str, int]]:
        """The workers' plugin log records merged in the order they were logged (one clock for every process), as
        Envoy's workers write one log."""
        records = [(str(p), str(lvl), str(m), int(at)) for s in self.snapshots for p, lvl, m, at in s.get("logs") or []]
        return sorted(records, key=lambda r: r[3])

    async def _refresh(self) -> None:
        replies = await asyncio.gather(
            *(self.request(c, {"op": "snapshot"}) for c in list(self.children.values())), return_exceptions=True
        )
        self.snapshots = [r for r in replies if isinstance(r, dict) and r.get("ok")] + self._own_snapshot()
        self.snapshots.append(self._store_snapshot())

    def _store_snapshot(self) -> dict[str, Any]:
        """The plugins' counters and gauges in the shared store (one value for every worker, as in Envoy's one
        stats store: never summed), as one more snapshot; the workers' snapshots leave them out."""
        m = hostapi.Metrics.of_store(self.shared)
        return {
            "counters": {},
            "metrics": filters.plugin_metrics_text(m),
            "metric_values": filters.plugin_metric_values(m),
            "plugin_stats": [stat_json(s) for s in filters.plugin_envoy_stats(m)],
            "logs": [],
        }

    def _own_snapshot(self) -> list[dict[str, Any]]:
        """The singletons' (their VMs run here) metrics and logs, summed with the workers' as one more snapshot."""
        if self.singletons is None:
            return []
        own = self.singletons.chain
        return [
            {
                "counters": {},
                "metrics": own.metrics(),
                "metric_values": own.metric_values(),
                "plugin_stats": [stat_json(s) for s in own.plugin_stats()],
                "logs": own.logs(),
            }
        ]

    def plugin_chains(self) -> list[loader.Chain]:
        """Only the active set's chain: it sums the workers' snapshots, the singletons' among them."""
        return [self.applier.active.chain] if self.applier.active is not None else []

    def counters(self) -> dict[str, int]:
        """The workers' counters and gauges summed (each worker's proxy counts what it served), the pushes'."""
        counters: dict[str, int] = {}
        for snap in self.snapshots:
            for name, value in (snap.get("counters") or {}).items():
                counters[name] = counters.get(name, 0) + int(value)
        counters["push_ack_total"] = self.applier.acks
        counters["push_nack_total"] = self.applier.nacks
        return counters

    # -- lifecycle ---------------------------------------------------------------------------------------
    async def start(self) -> None:
        self._reserve_ports()
        for i in range(self.n):
            await self._spawn(i)
        assert self.proxy.share is not None
        own = self._pipes[self.n][0]
        os.set_blocking(own, False)
        self.loop.add_reader(own, self.proxy.share.read_notifications, own)
        await super().start()  # the initial set (loaded by every worker), admin, push; the parent listens on nothing

    async def listen(self) -> None:
        for reply in await self.broadcast({"op": "listen"}):
            if not reply.get("ok"):
                raise errors.ConfigError(f"a worker cannot listen: {reply.get('message')}")
        for child in self.children.values():
            self._watch_child(child)
        for lst in self.cfg.listeners:
            self.ports[lst.name] = self.worker_ports[lst.name]

    async def run_until_stopped(self) -> bool:
        await self._stop.wait()
        self.stopping = True
        self.ready = False
        log.info("draining %d workers (up to %.0fs)", len(self.children), self.cfg.drain_timeout_s)
        replies = await asyncio.gather(
            *(self.request(c, {"op": "drain"}) for c in self.children.values()), return_exceptions=True
        )
        clean = all(isinstance(r, dict) and r.get("clean") for r in replies)
        for child in self.children.values():
            try:
                await asyncio.wait_for(self.loop.run_in_executor(None, child.popen.wait), limits.WORKER_STOP_TIMEOUT_S)
            except TimeoutError:
                child.popen.kill()
        await self.admin.stop()
        if self.push_server is not None:
            await self.push_server.stop()
        self.sources.close()
        for sock in self._reserved:
            sock.close()
        self.loop.remove_reader(self._pipes[self.n][0])
        for r, w in self._pipes:
            os.close(r)
            os.close(w)
        for leftover in Path(self._dir).iterdir():
            leftover.unlink()
        os.rmdir(self._dir)
        return clean

    async def _admin(self, request: admin.Request) -> admin.Response:
        if request.path in ("/stats", "/stats/prometheus", "/config_dump", "/plugin_logs", "/plugin_stats"):
            await self._refresh()
        if request.path == "/logging" and request.method == "POST":
            response = await super()._admin(request)
            if response.status == 200:
                level = logging.getLevelName(logging.getLogger("meshplug").getEffectiveLevel()).lower()
                await self.broadcast({"op": "logging", "level": level})
            return response
        if request.path == "/ready" and self.ready and len(self.children) < self.n:
            return admin.Response(503, b"WORKER_RESTARTING\n")
        return await super()._admin(request)

    def config_dump(self) -> dict[str, object]:
        out = super().config_dump()
        served = {s.get("index"): (s.get("counters") or {}).get("downstream_rq_total") for s in self.snapshots}
        out["workers"] = [
            {"index": c.index, "pid": c.pid, "running": c.popen.poll() is None, "requests": served.get(c.index)}
            for c in sorted(self.children.values(), key=lambda c: c.index)
        ]
        return out


async def _parent_main(cfg: config.AgentConfig, n: int, config_path: Path, log_level: str) -> int:
    return await runtime.run(Parent(cfg, n=n, config_path=config_path, log_level=log_level))


def serve(cfg: config.AgentConfig, *, concurrency: int, config_path: Path, log_level: str) -> int:
    """Run the agent with `concurrency` workers until SIGTERM/SIGINT (then drain them)."""
    if not native.STATUS.extension:
        raise errors.ConfigError(
            f"--concurrency {concurrency} needs the native build (the workers' shared store is a C extension): "
            f"{native.STATUS.reason or 'not built'}"
        )
    return runtime.serve(cfg, log_level=log_level, main=lambda: _parent_main(cfg, concurrency, config_path, log_level))

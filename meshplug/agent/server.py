"""The agent's data path: listeners -> filter chain -> upstream, as asyncio Protocols over httptools + uvloop.

Called by `meshplug.agent.runtime` (which owns the event loop, admin and push); holds no configuration
logic of its own. One `Proxy` serves every listener and owns the cluster pools, the counters, the active
filter chain and drain. The work is split by concern:

* `downstream`: a client connection; HTTP/1.1 parsing (httptools), the request queue (pipelining), flow
  control, batched writes, the connection's timer.
* `exchange`: one request/response without plugins (the fast path), and local replies.
* `filtered`: one request/response through a plugin chain (`chain.Stream` events in, outputs performed).
* `upstream`: keep-alive connections to a cluster and their pool; plugins' HTTP calls.
* `tcp`: TCP listeners (tcp_proxy with network plugins).
* `wire` and `stats`: what they share (constants, framing helpers, Envoy's wording) and the counters.

Flow control both ways: a full write buffer on one side pauses reading on the other (asyncio's
pause_writing/resume_writing -> pause_reading/resume_reading). Each listener's `routing.ListenerState` holds
its route table and its active `chain.Chain` (swapped in one assignment by the push path through
`Proxy.install`) or None (no plugins: the fast path).

Local replies follow Envoy's wording (503 "upstream connect error or disconnect/reset before headers.
reset reason: remote connection failure", 504 "upstream request timeout", 502 for an unparseable upstream
response), `text/plain`, so clients and the corpus see the same bodies from both data planes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from meshplug.agent import chain as agent_chain
from meshplug.agent import config as agent_config
from meshplug.agent import h2up, relay, routing, upstream, wire
from meshplug.agent import stats as agent_stats
from meshplug.agent.downstream import Downstream
from meshplug.agent.h2down import H2Downstream
from meshplug.agent.tcp import NetworkFilter, TcpDownstream
from meshplug.agent.tunnel import Tunnel

if TYPE_CHECKING:
    from meshplug.agent import sharing

log = logging.getLogger("meshplug.agent.server")


class Proxy:
    """Listeners (with their routes and active chains), cluster pools, counters, and drain."""

    def __init__(
        self,
        cfg: agent_config.AgentConfig,
        *,
        loop: asyncio.AbstractEventLoop,
        idle_timeout_s: float | None = None,
    ) -> None:
        self.cfg = cfg
        self.loop = loop
        self.stats = agent_stats.Stats()
        self.pools = {c.name: upstream.Pool(c, self.stats, cfg.http) for c in cfg.clusters}
        #: clusters that speak HTTP/2: their streams go here (`pools` keeps their HTTP/1.1 form unused)
        self.h2pools = {c.name: h2up.H2Pool(c, self.stats, cfg.http) for c in cfg.clusters if c.http2}
        #: per listener: its routes, the pools, and the chain the push path installs (`install`)
        self.listeners = [
            routing.ListenerState(lst, routing.RouteTable(cfg.routes(lst)) if lst.type == "http" else None, self.pools)
            for lst in cfg.listeners
        ]
        self.idle_timeout_s = cfg.http.idle_timeout_s if idle_timeout_s is None else idle_timeout_s
        self.draining = False
        self.connections: set[Downstream | H2Downstream | TcpDownstream | Tunnel] = set()
        self.servers: list[asyncio.AbstractServer] = []
        self._drained: asyncio.Event | None = None
        #: a worker of a multi-worker agent (meshplug.agent.workers): its listeners share their ports with the
        #: other workers' (SO_REUSEPORT: the kernel spreads connections), its hosts the workers' shared store
        self.reuse_port = False
        self.share: sharing.Share | None = None

    def install(
        self,
        filters: Mapping[str, agent_chain.Chain | None],
        network: Mapping[str, tuple[NetworkFilter, ...]],
    ) -> None:
        """Swap every listener's chain (by listener name; absent: none); exchanges and connections already
        started keep the chain they began with."""
        for state in self.listeners:
            state.filters = filters.get(state.name)
            state.network = network.get(state.name, ())

    async def start(self) -> None:
        for state in self.listeners:
            lst = state.config
            factory: Callable[[], asyncio.Protocol]
            if lst.type == "tcp":
                factory = functools.partial(TcpDownstream, self, state)
            else:
                factory = functools.partial(Downstream, self, state)
            server = await self.loop.create_server(
                factory,
                lst.address,
                lst.port,
                reuse_address=True,
                reuse_port=self.reuse_port or None,
                backlog=1024,
                ssl=self._tls(lst),
            )
            self.servers.append(server)
            log.info(
                "%s listener %s on %s:%d -> %s",
                lst.type,
                lst.name,
                lst.address,
                self.port_of(server),
                f"cluster {lst.cluster}" if lst.cluster else "routes",
            )

    @staticmethod
    def _tls(lst: agent_config.Listener) -> ssl.SSLContext | None:
        """A TLS listener's context: its certificate, ALPN h2 then http/1.1 (Envoy's default for HCM)."""
        if lst.tls is None:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(lst.tls.cert_file), str(lst.tls.key_file))
        ctx.set_alpn_protocols(["h2", "http/1.1"])
        return ctx

    @staticmethod
    def port_of(server: asyncio.AbstractServer) -> int:
        sockets = getattr(server, "sockets", ())
        return int(sockets[0].getsockname()[1]) if sockets else 0

    def connection_closed(self) -> None:
        if self.draining and not self.connections and self._drained is not None:
            self._drained.set()

    async def drain(self, timeout_s: float) -> bool:
        """Stop accepting, let in-flight exchanges finish (closing each connection after), up to `timeout_s`.

        Returns True when every connection ended in time; remaining ones are aborted otherwise.
        """
        self.draining = True
        for server in self.servers:
            server.close()
        self._drained = asyncio.Event()
        for conn in list(self.connections):
            if isinstance(conn, H2Downstream):
                conn.close()  # GOAWAY: streams in flight finish, new ones are refused
            elif isinstance(conn, Downstream) and not conn.queue:
                conn.close()  # idle HTTP connections end now; TCP ones run until they end or the deadline
        if self.connections:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), timeout_s)
        clean = not self.connections
        for conn in list(self.connections):
            conn.abort()
        for pool in self.pools.values():
            pool.close()
        for h2pool in self.h2pools.values():
            h2pool.close()
        return clean

    async def http_call(
        self, cluster: str, headers: Sequence[tuple[bytes, bytes]], body: bytes, timeout_s: float
    ) -> tuple[int, wire.Headers, bytes, wire.Headers] | None:
        """A plugin's HTTP call to a named cluster (`relay.call`: a stream on an HTTP/2 cluster, else a keep-alive
        connection): (status, headers, body, trailers); None for an unknown cluster or a failure."""
        pool = self.pools.get(cluster)
        if pool is None:
            return None
        return await relay.call(pool, self.h2pools.get(cluster), headers, body, (), timeout_s)

    def start_http_call(
        self,
        cluster: str,
        headers: Sequence[tuple[bytes, bytes]],
        body: bytes,
        timeout_s: float,
        done: Callable[[relay.Outcome], object],
    ) -> relay.Call | None:
        """`http_call` without a task: `done` gets the outcome on a later turn of the loop (None at once for an
        unknown cluster)."""
        pool = self.pools.get(cluster)
        if pool is None:
            self.loop.call_soon(done, None)
            return None
        return relay.start_call(pool, self.h2pools.get(cluster), headers, body, (), timeout_s, done)

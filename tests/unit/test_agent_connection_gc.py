"""A closed connection leaves nothing to the cyclic GC: once a client's connection ends, however it ends, its
objects (the connection, its parser, its timer, its exchanges, their plugin streams, an upstream connection
closed with it) are freed by their reference counts. Each left cycle (~20 objects per connection) fed the
collector, whose passes on a loaded machine set the agent's tail latency.

A real agent data path (`server.Proxy`) on the event loop the agent runs (uvloop), a real upstream server on the
same loop, real client sockets; the count is the collector's own (gc.DEBUG_SAVEALL keeps what it found).
"""

from __future__ import annotations

import asyncio
import gc
import socket
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
import uvloop
import wasmtime

from meshplug.agent import chain as agent_chain
from meshplug.agent import config as agent_config
from meshplug.agent import h2wire, server
from meshplug.agent import host as agent_host

pytestmark = pytest.mark.unit

GUEST = Path(__file__).resolve().parents[1] / "guests" / "abi_0_2_1.wat"
#: the HTTP/2 connection preface and an empty SETTINGS frame
H2_START = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000")
CONNECTIONS = 5


_GET = b"GET / HTTP/1.1\r\nhost: h\r\n\r\n"
_CHUNKED = b"POST / HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\n"
#: how the client ends: it reads until the answer ends with these bytes (the upstream's 2-byte body), or to the
#: proxy's close (b"": a refusal, Connection: close), then closes; or (None) it closes as soon as the proxy took
#: what it sent (inside a request, an HTTP/2 connection)
_OK, _CLOSE, _LEAVE = b"ok", b"", None

# name: (what the client sends, how it ends)
CASES: dict[str, tuple[bytes, bytes | None]] = {
    "answered, kept alive": (_GET, _OK),
    "answered, connection close": (b"GET / HTTP/1.1\r\nhost: h\r\nconnection: close\r\n\r\n", _CLOSE),
    "a body": (b"POST / HTTP/1.1\r\nhost: h\r\ncontent-length: 3\r\n\r\nabc", _OK),
    "a chunked body": (_CHUNKED + b"3\r\nabc\r\n0\r\n\r\n", _OK),
    "two pipelined": (_GET + b"GET / HTTP/1.1\r\nhost: h\r\nconnection: close\r\n\r\n", _CLOSE),
    "refused by the codec": (b"GET / HTTP/1.1\r\nhost: h\r\nx y: z\r\n\r\n", _CLOSE),
    "refused, no host": (b"GET / HTTP/1.1\r\n\r\n", _CLOSE),
    "a bad chunk after the head": (_CHUNKED + b"zz\r\n", _CLOSE),
    "the client leaves inside the head": (b"GET / HTTP/1.1\r\nhost: h\r\n", _LEAVE),
    "the client leaves inside the body": (b"POST / HTTP/1.1\r\nhost: h\r\ncontent-length: 30\r\n\r\nabc", _LEAVE),
    "HTTP/2, prior knowledge": (H2_START, _LEAVE),
}


class _Upstream(asyncio.Protocol):
    """Answers each request head with a 2-byte body."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop transports are not subclasses
        self.got = b""

    def data_received(self, data: bytes) -> None:
        self.got += data
        if b"\r\n\r\n" in self.got:
            self.got = b""
            self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def plugin_chain() -> Iterator[agent_chain.Chain]:
    host = agent_host.Host()
    plugin = host.load(agent_host.PluginConfig(name="guest"), bytes(wasmtime.wat2wasm(GUEST.read_text())))
    yield agent_chain.Chain([plugin])


async def _drive(send: bytes, until: bytes | None, chain: agent_chain.Chain | None) -> tuple[int, Counter[str]]:
    """Serve `CONNECTIONS` connections of `case` after warm-up; what the cyclic GC found after them."""
    loop = asyncio.get_running_loop()
    up_server = await loop.create_server(_Upstream, "127.0.0.1", 0)
    port = _free_port()
    cfg = agent_config.parse(
        {
            "listeners": [{"name": "in", "address": "127.0.0.1", "port": port, "cluster": "up"}],
            "clusters": [
                {"name": "up", "address": "127.0.0.1", "port": up_server.sockets[0].getsockname()[1]},
            ],
            "admin": {"address": "127.0.0.1", "port": _free_port()},
        },
        base=Path("/tmp"),
    )
    proxy = server.Proxy(cfg, loop=loop)
    if chain is not None:
        proxy.install({"in": chain}, {})
    await proxy.start()
    stats = proxy.stats

    async def settled() -> None:
        """Every downstream connection and every upstream connection not kept for reuse is closed."""
        for _ in range(100_000):
            idle = sum(len(p.idle) for p in proxy.pools.values())
            if not proxy.connections and stats.downstream_cx_active == 0 and stats.upstream_cx_active == idle:
                return
            await asyncio.sleep(0)
        raise AssertionError(f"connections still open: {proxy.connections}, {stats.upstream_cx_active} upstream")

    async def one() -> None:
        taken = stats.downstream_rq_total + stats.downstream_cx_http2_total
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(send)
        if until is not None:
            got = b""
            while (chunk := await reader.read(65536)) and not (until and (got := got + chunk).endswith(until)):
                pass
        else:
            for _ in range(100_000):  # until the proxy took the request (or the HTTP/2 connection)
                if stats.downstream_rq_total + stats.downstream_cx_http2_total > taken:
                    break
                await asyncio.sleep(0)
        writer.close()
        await writer.wait_closed()
        await settled()

    try:
        for _ in range(2):  # first use: caches, the plugin's VM state, the pool
            await one()
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        for _ in range(CONNECTIONS):
            await one()
        found = gc.collect()
        kinds = Counter(type(o).__qualname__ for o in gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        for s in proxy.servers:
            s.close()
        up_server.close()
        for pool in proxy.pools.values():
            pool.close()
    return found, kinds


@pytest.mark.parametrize("plugins", [False, True], ids=["no plugins", "a plugin"])
@pytest.mark.parametrize("name", list(CASES))
def test_a_closed_connection_leaves_nothing_to_the_cyclic_gc(
    name: str, plugins: bool, plugin_chain: agent_chain.Chain
) -> None:
    # below the agent, two libraries of the interpreted fallback make cycles of their own: wasmtime-py's public
    # call path (ctypes types per call) and the h2 library (bound methods in its state machine's tables)
    if plugins and plugin_chain.filters[0].vm.guest.backend != "fast":
        pytest.skip("the plugin runs on wasmtime-py's public call path (its ctypes types are cycles)")
    if name.startswith("HTTP/2") and h2wire.CODEC_NAME == "h2":
        pytest.skip("HTTP/2 on the h2 library (its connection state holds cycles)")
    gc.disable()  # only the collection below looks for cycles
    try:
        found, kinds = uvloop.run(_drive(*CASES[name], plugin_chain if plugins else None))
    finally:
        gc.enable()
    assert (found, kinds) == (0, Counter())

"""The test bed's kube-proxy (run by tests/testbed/kubelet.py in the node's network namespace): every Service's
ClusterIP:port listens and forwards each connection to a ready endpoint, round robin."""

from __future__ import annotations

import asyncio
import functools
import itertools
import threading

from tests.testbed import netns


class Proxy:
    """ClusterIP:port listeners forwarding to ready endpoints (round robin), on their own event loop thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.routes: dict[tuple[str, int], list[tuple[str, int]]] = {}
        self.servers: dict[tuple[str, int], asyncio.AbstractServer] = {}
        self.counter = itertools.count()
        threading.Thread(target=self.loop.run_forever, name="proxy", daemon=True).start()

    def update(self, routes: dict[tuple[str, int], list[tuple[str, int]]]) -> None:
        asyncio.run_coroutine_threadsafe(self._update(routes), self.loop).result(timeout=30)

    async def _update(self, routes: dict[tuple[str, int], list[tuple[str, int]]]) -> None:
        self.routes = routes
        for key in [k for k in self.servers if k not in routes]:
            self.servers.pop(key).close()
        for key in routes:
            if key not in self.servers:
                self.servers[key] = await asyncio.start_server(
                    functools.partial(self._handle, key), key[0], key[1], reuse_address=True
                )

    async def _handle(self, key: tuple[str, int], reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        backends = list(self.routes.get(key) or [])
        if not backends:
            writer.close()  # no ready endpoint: connection refused, as kube-proxy's REJECT
            return
        start = next(self.counter)
        for i in range(len(backends)):
            host, port = backends[(start + i) % len(backends)]
            try:
                up_reader, up_writer = await asyncio.open_connection(host, port)
                break
            except OSError:
                continue
        else:
            writer.close()
            return
        await netns.splice(reader, writer, up_reader, up_writer)

"""What the workers of one agent (`meshplug agent --concurrency N`) share: proxy-wasm shared data and queues.

Envoy keeps shared data (with CAS) and shared queues process-wide, across its worker threads; the agent's workers
are processes, so one `Share` per worker maps the same store (meshplug/agent/_shared.c: shared memory, one
process-shared lock) and the host of each worker's plugin set works through it (`meshplug.agent.host.Host`'s
``share``): a CAS number, a queue token and an item mean the same in every worker. A queue is owned by the last
root context that registered it (in whichever worker: Envoy's last registrant wins too); enqueueing in another
worker wakes the owner's worker through its notify pipe (4-byte tokens), whose event loop hands the token to its
hosts (`deliver`), which call proxy_on_queue_ready there.

Made by meshplug.agent.workers (the parent creates the store and the pipes; each worker opens them).
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from meshplug.agent._shared import Store as Store  # noqa: PLC0414 -- re-exported for hostapi and workers

log = logging.getLogger("meshplug.agent.sharing")

_TOKEN = struct.Struct("<I")


class Receiver(Protocol):
    """A host that may own queues: told when one of its queues has items."""

    def queue_ready(self, token: int) -> None: ...


class Share:
    """One worker's handle on the shared store: its index, the notify pipes' write ends (one per worker, by
    index), and the hosts of this worker that may own queues."""

    def __init__(self, store: Store, index: int, notify_fds: Sequence[int]) -> None:
        self.store = store
        self.index = index
        self.notify_fds = tuple(notify_fds)
        self._hosts: list[Receiver] = []

    def attach(self, host: Receiver) -> None:
        """`host` may own queues from now on (a new plugin set's host), until it `detach`es (closed)."""
        self._hosts.append(host)

    def detach(self, host: Receiver) -> None:
        self._hosts = [h for h in self._hosts if h is not host]

    def wake(self, worker: int, token: int) -> None:
        """Tell `worker` that queue `token` has items (its owner lives there)."""
        if worker == self.index:
            self.deliver(token)
            return
        try:
            os.write(self.notify_fds[worker], _TOKEN.pack(token))
        except (OSError, IndexError) as exc:  # a worker being replaced: its successor re-registers the queue
            log.warning("cannot wake worker %d for queue %d: %s", worker, token, exc)

    def deliver(self, token: int) -> None:
        for host in list(self._hosts):
            host.queue_ready(token)

    def read_notifications(self, fd: int) -> None:
        """Drain this worker's notify pipe (non-blocking) and deliver every token read."""
        while True:
            try:
                data = os.read(fd, 4096 - 4096 % _TOKEN.size)
            except BlockingIOError:
                return
            if not data:
                return
            for (token,) in _TOKEN.iter_unpack(data[: len(data) - len(data) % _TOKEN.size]):
                self.deliver(token)

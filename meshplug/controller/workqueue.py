"""A de-duplicating, delaying work queue of WasmPlugin keys, drained by worker threads.

Called by `meshplug.controller.handlers`: kopf's watch handlers (WasmPlugins, Pods, workloads) only `add` keys;
`Workers` run `Reconciler.reconcile_key` for them. Semantics as controller-runtime's queue: a key is queued at
most once (the earliest due time wins); a key is never processed by two workers at once (an `add` while it
runs marks it dirty and it runs again afterwards); ``add(key, after=s)`` schedules a retry. kopf-free.

Shutdown never waits on a blocked call: `Workers` and `Pool` (the reconciler's pushes to agents) run daemon
threads, unlike ``concurrent.futures.ThreadPoolExecutor`` whose threads the interpreter joins at exit (a push to
an agent that does not answer would hold a stopping operator for its whole timeout). Work still running when
they are stopped is abandoned, and redone by the next leader: every reconcile starts from the API's state.
"""

from __future__ import annotations

import concurrent.futures
import functools
import heapq
import logging
import queue as queue_mod
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

log = logging.getLogger("meshplug.controller.workqueue")

Key = tuple[str, str]  # (namespace, name)
T = TypeVar("T")
R = TypeVar("R")


class ShuttingDown(Exception):
    """The operator is stopping: the call was abandoned (the next leader redoes it)."""


@dataclass(order=True)
class _Item:
    due: float
    seq: int
    key: Key = field(compare=False)


class WorkQueue:
    """Thread-safe; `get` blocks until a key is due or the queue is shut down (then returns None)."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, on_wait: Callable[[float], None] | None = None
    ) -> None:
        """``on_wait(seconds)``: called with how long each key handed out waited after it was due (a metric)."""
        self._clock = clock
        self._on_wait = on_wait
        self._cond = threading.Condition()
        self._heap: list[_Item] = []
        self._due: dict[Key, float] = {}  # queued keys and their due time
        self._running: set[Key] = set()
        self._dirty: dict[Key, float] = {}  # added while running: re-queue at this due time when done
        self._seq = 0
        self._closed = False

    def add(self, key: Key, *, after: float = 0.0) -> None:
        due = self._clock() + max(0.0, after)
        with self._cond:
            if self._closed:
                return
            if key in self._running:
                self._dirty[key] = min(due, self._dirty.get(key, due))
                return
            if key in self._due and self._due[key] <= due:
                return
            self._push(key, due)

    def _push(self, key: Key, due: float) -> None:
        self._due[key] = due
        self._seq += 1
        heapq.heappush(self._heap, _Item(due, self._seq, key))
        self._cond.notify_all()

    def get(self) -> Key | None:
        with self._cond:
            while True:
                if self._closed:
                    return None
                while self._heap and self._due.get(self._heap[0].key) != self._heap[0].due:
                    heapq.heappop(self._heap)  # superseded by an earlier due time
                now = self._clock()
                if self._heap and self._heap[0].due <= now:
                    item = heapq.heappop(self._heap)
                    del self._due[item.key]
                    self._running.add(item.key)
                    if self._on_wait is not None:
                        self._on_wait(now - item.due)
                    return item.key
                timeout = None if not self._heap else max(0.0, self._heap[0].due - self._clock())
                self._cond.wait(timeout)

    def done(self, key: Key) -> None:
        with self._cond:
            self._running.discard(key)
            self._cond.notify_all()
            due = self._dirty.pop(key, None)
            if due is not None and not self._closed and (key not in self._due or self._due[key] > due):
                self._push(key, due)

    def hold(self, key: Key, timeout: float = 60.0) -> bool:
        """Wait until no worker runs ``key`` and mark it running (release with `done`); False on timeout or
        shutdown. The delete handler holds a key so no reconcile re-creates what its cleanup removes."""
        deadline = self._clock() + timeout
        with self._cond:
            while key in self._running:
                if self._closed:
                    return False
                left = deadline - self._clock()
                if left <= 0:
                    return False
                self._cond.wait(left)
            self._running.add(key)
            return True

    def pending(self) -> int:
        with self._cond:
            return len(self._due) + len(self._running)

    def shutdown(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class Workers:
    """``count`` threads running ``work(key)`` for each key the queue hands out, until `stop`."""

    def __init__(self, queue: WorkQueue, work: Callable[[Key], None], count: int) -> None:
        self.queue = queue
        self._work = work
        self._threads = [
            threading.Thread(target=self._loop, name=f"meshplug-reconcile-{i}", daemon=True) for i in range(count)
        ]

    def _loop(self) -> None:
        while (key := self.queue.get()) is not None:
            try:
                self._work(key)
            except ShuttingDown:
                log.debug("reconcile of %s/%s abandoned: the operator is stopping", *key)
            except Exception:  # a bug in one reconcile must not kill the worker; it is logged with its key
                log.exception("reconcile of %s/%s failed unexpectedly", *key)
                self.queue.add(key, after=30.0)
            finally:
                self.queue.done(key)

    def start(self) -> Workers:
        for t in self._threads:
            t.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self.queue.shutdown()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))


class Pool:
    """Up to ``count`` daemon threads (started on demand) running calls for `map`. `close` abandons what runs:
    `map` callers waiting for it get `ShuttingDown` at once, later `map` calls too."""

    def __init__(self, count: int, name: str) -> None:
        self._count = count
        self._name = name
        self._tasks: queue_mod.SimpleQueue[tuple[Callable[[], Any], concurrent.futures.Future[Any]] | None] = (
            queue_mod.SimpleQueue()
        )
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._idle = 0  # threads waiting for a task that no queued task has claimed yet
        self._backlog = 0  # queued tasks no thread was free or could be started for
        self._pending: set[concurrent.futures.Future[Any]] = set()
        self._closed = False

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """``[fn(item) for item in items]``, run concurrently; raises the first call's exception."""
        futures = [self._submit(functools.partial(fn, item)) for item in items]
        return [f.result() for f in futures]

    def _submit(self, call: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._lock:
            if self._closed:
                raise ShuttingDown("the operator is stopping")
            self._pending.add(future)
            # each task claims an idle thread, else a new one: a burst of tasks runs at once (counting a thread
            # idle until it had taken a task, as before, ran a burst on the one idle thread, one after another)
            if self._idle > 0:
                self._idle -= 1
            elif len(self._threads) < self._count:
                thread = threading.Thread(target=self._loop, name=f"{self._name}-{len(self._threads)}", daemon=True)
                self._threads.append(thread)
                thread.start()
            else:
                self._backlog += 1
            self._tasks.put((call, future))
        return future

    def _loop(self) -> None:
        while (task := self._tasks.get()) is not None:
            call, future = task
            try:
                if future.set_running_or_notify_cancel():
                    try:
                        result = call()
                    except BaseException as exc:  # handed to the map caller, who re-raises it
                        _settle(future, exc=exc)
                    else:
                        _settle(future, result=result)
            finally:
                with self._lock:
                    if self._backlog:  # the next task is one that waited for a thread: this one takes it
                        self._backlog -= 1
                    else:
                        self._idle += 1
                    self._pending.discard(future)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pending, self._pending = self._pending, set()
            threads = len(self._threads)
        for future in pending:
            if not future.cancel():  # already running: its caller stops waiting for it
                _settle(future, exc=ShuttingDown("the operator is stopping"))
        for _ in range(threads):
            self._tasks.put(None)


def _settle(future: concurrent.futures.Future[Any], *, result: Any = None, exc: BaseException | None = None) -> None:
    try:
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)
    except concurrent.futures.InvalidStateError:
        pass  # settled already (abandoned by close)

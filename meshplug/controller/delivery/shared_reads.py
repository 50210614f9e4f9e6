"""Reads of a remote view shared by every caller that can use them: istiod's debug endpoints, read once for all the
reconciles (and the NACK watch) that want them at about the same time.

Used by `meshplug.controller.delivery.proxies.Istiod`. A caller asks for a reading of a key (syncz, one proxy's
extension configs) *started at or after* a time of its choosing (``after``): the last reading when it started then;
else the one in flight when it started then (the caller waits for it); else a new one (after the one in flight
ended, when that one started too early). Many plugins changing at once therefore cost istiod one read per key per
moment, not one per reconcile. A failed read is an outcome as much as an answer: the callers that share it get its
exception. Thread-safe; the readings kept are bounded: those older than ``keep_s`` (no caller asks for older ones:
`limits.ISTIOD_READING_REUSE_S` by default) go when another is stored, and at most `limits.ISTIOD_SHARED_READINGS`
are kept (the least recently used go first).
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from meshplug import limits

K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True)
class Outcome(Generic[V]):
    """One read: when it started (monotonic), its answer or its exception."""

    at: float
    value: V | None
    error: BaseException | None

    def result(self) -> V:
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[return-value]  # a read without an error answered


class SharedReads(Generic[K, V]):
    """The last read of each key and the one in flight (see the module docstring)."""

    def __init__(
        self, capacity: int = limits.ISTIOD_SHARED_READINGS, *, keep_s: float = limits.ISTIOD_READING_REUSE_S
    ) -> None:
        self._cond = threading.Condition()
        self._latest: collections.OrderedDict[K, Outcome[V]] = collections.OrderedDict()
        self._flying: dict[K, float] = {}  # key -> when the read in flight started
        self._capacity = capacity
        self._keep_s = keep_s
        self.reads = 0  # reads made (not shared ones): for tests and benchmarks

    def get(self, key: K, read: Callable[[], V], *, after: float | None = None) -> V:
        """``read()``'s answer for ``key`` from a read started at or after ``after`` (monotonic; None: now)."""
        return self.outcome(key, read, after=after).result()

    def outcome(self, key: K, read: Callable[[], V], *, after: float | None = None) -> Outcome[V]:
        """As `get`, with when the read started."""
        since = time.monotonic() if after is None else after
        with self._cond:
            while True:
                latest = self._latest.get(key)
                if latest is not None and latest.at >= since:
                    self._latest.move_to_end(key)
                    return latest
                flying = self._flying.get(key)
                if flying is None:
                    break
                self._cond.wait()  # the read in flight serves (or, when it started too early, ends first)
            start = time.monotonic()
            self._flying[key] = start
            self.reads += 1
        out: Outcome[V] | None = None
        try:
            out = Outcome(start, read(), None)
        except Exception as exc:  # the callers sharing this read get its failure
            out = Outcome(start, None, exc)
        finally:  # whatever ended the read, its waiters go on (without an outcome: each reads for itself)
            with self._cond:
                del self._flying[key]
                if out is not None:
                    self._store(key, out)
                self._cond.notify_all()
        return out

    def _store(self, key: K, out: Outcome[V]) -> None:
        """Keep ``out`` as the last reading of ``key`` (unless a newer one is kept); drop those too old to serve
        anyone, and the least recently used beyond the capacity. Under the lock."""
        held = self._latest.get(key)
        if held is not None and held.at > out.at:
            return
        self._latest[key] = out
        self._latest.move_to_end(key)
        oldest = time.monotonic() - self._keep_s
        while len(self._latest) > self._capacity or next(iter(self._latest.values())).at < oldest:
            first = next(iter(self._latest))
            if first == key:
                break
            del self._latest[first]

    def forget(self, key: K) -> None:
        with self._cond:
            self._latest.pop(key, None)

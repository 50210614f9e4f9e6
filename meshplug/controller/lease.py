"""One active operator replica: leader election on a coordination.k8s.io/v1 Lease (client-go's algorithm).

Called by `meshplug.controller.handlers.run_operator`: `Elector.wait_until_leader` blocks a standby replica;
`Elector.run` (a thread) renews the Lease and calls ``on_lost`` when renewing fails for longer than the lease
duration, after which the replica stops (the process exits and is restarted as a standby: restarts are
idempotent because every reconcile starts from the API's state). `release` hands the Lease over at shutdown.
Expiry is judged by when *this* replica last saw the record change (monotonic clock), never by comparing the
holder's timestamps with our wall clock, so clock skew between nodes cannot elect two leaders.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from meshplug import errors, limits
from meshplug.controller import apply

log = logging.getLogger("meshplug.controller.lease")
LEASE_API = "coordination.k8s.io/v1"


def _micro_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Elector:
    def __init__(
        self,
        writer: apply.Writer,
        *,
        namespace: str,
        name: str,
        identity: str,
        duration_s: float = limits.LEASE_DURATION_S,
        renew_s: float = limits.LEASE_RENEW_S,
    ) -> None:
        self.writer = writer
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.duration_s = duration_s
        self.renew_s = renew_s
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self._last_renew = 0.0
        self.leader = False

    def _spec(self, lease: dict[str, Any] | None) -> dict[str, Any]:
        spec: dict[str, Any] = (lease or {}).get("spec") or {}
        return spec

    def try_acquire(self) -> bool:
        """One round: acquire or renew; True while we hold the Lease. API errors count as not holding."""
        try:
            lease = self.writer.get(LEASE_API, "Lease", self.namespace, self.name)
            now = _micro_now()
            mine = {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": max(1, round(self.duration_s)),
                "renewTime": now,
            }
            if lease is None:
                body = {
                    "apiVersion": LEASE_API,
                    "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": {**mine, "acquireTime": now, "leaseTransitions": 0},
                }
                self.writer.create(body)
                return self._won()
            spec = self._spec(lease)
            holder = spec.get("holderIdentity") or ""
            record = (holder, spec.get("renewTime"), spec.get("leaseTransitions"))
            if record != self._observed:
                self._observed, self._observed_at = record, time.monotonic()
            expired = time.monotonic() - self._observed_at >= float(spec.get("leaseDurationSeconds") or 0)
            if holder and holder != self.identity and not expired:
                self.leader = False
                return False
            new_spec = {**spec, **mine}
            if holder != self.identity:
                new_spec["acquireTime"] = now
                new_spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
            self.writer.replace({**lease, "spec": new_spec})
            return self._won()
        except errors.ApplyError as exc:
            if exc.reason not in ("Conflict", "AlreadyExists"):
                log.error("leader election on Lease %s/%s: %s", self.namespace, self.name, exc.message)
            return self.leader and time.monotonic() - self._last_renew < self.duration_s

    def _won(self) -> bool:
        if not self.leader:
            log.info("became leader (Lease %s/%s, identity %s)", self.namespace, self.name, self.identity)
        self.leader = True
        self._last_renew = time.monotonic()
        return True

    def wait_until_leader(self, stop: threading.Event) -> bool:
        """Block until this replica holds the Lease (True) or ``stop`` is set (False)."""
        logged = False
        while not stop.is_set():
            if self.try_acquire():
                return True
            if not logged:
                log.info("standing by: Lease %s/%s is held by another replica", self.namespace, self.name)
                logged = True
            stop.wait(self.renew_s)
        return False

    def run(self, stop: threading.Event, on_lost: Callable[[], None]) -> None:
        """Renew until ``stop`` is set; on losing the Lease call ``on_lost`` once and return."""
        while not stop.wait(self.renew_s):
            if not self.try_acquire():
                self.leader = False
                log.error("lost the Lease %s/%s; stopping this replica", self.namespace, self.name)
                on_lost()
                return

    def release(self) -> None:
        """Give the Lease up (others take over at once instead of after its duration)."""
        if not self.leader:
            return
        self.leader = False
        try:
            lease = self.writer.get(LEASE_API, "Lease", self.namespace, self.name)
            if lease is None or self._spec(lease).get("holderIdentity") != self.identity:
                return
            spec = {**self._spec(lease), "holderIdentity": "", "leaseDurationSeconds": 1, "renewTime": _micro_now()}
            self.writer.replace({**lease, "spec": spec})
        except errors.ApplyError as exc:
            log.warning("could not release Lease %s/%s: %s", self.namespace, self.name, exc.message)

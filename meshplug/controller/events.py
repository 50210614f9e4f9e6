"""Kubernetes Events of the operator: written after the status (the user-visible truth), never holding it back,
and tried again when the API refused or did not answer.

A reconcile records an Event once, when what it reports changes (Ready turning to a failure, a refused
signature, ...): an Event lost then is never recorded. `EventRecorder.record` writes it at once through
`meshplug.controller.apply.Writer.event` and, when that fails for a reason that may pass (no answer, a conflict,
429, 5xx, a denial -- RBAC or an admission policy -- lifted later), keeps it and tries again on its own thread after
`limits.EVENT_RETRY_FIRST_S`, doubling up to `limits.EVENT_RETRY_MAX_S`, `limits.EVENT_RETRY_TRIES` tries in
all; a refusal of the Event itself (400/422, the namespace gone) is final. Every try of one occurrence carries the
same id (`apply.OCCURRENCE_ANNOTATION`), so a try whose answer was lost after the API took it is not counted
twice. Dropped Events are logged.
"""

from __future__ import annotations

import collections
import logging
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import urllib3

from meshplug import errors, limits
from meshplug.controller import apply

log = logging.getLogger("meshplug.controller.events")

#: refusals of the Event itself: trying again writes the same refused Event
FINAL = frozenset({"Invalid", "BadRequest", "HTTP400", "HTTP422", "NotFound", "HTTP404", "MethodNotAllowed"})


@dataclass(frozen=True)
class Pending:
    """One occurrence of an Event not written yet: what to write, its id, the tries so far, when to try next."""

    involved: Mapping[str, Any]
    warning: bool
    reason: str
    message: str
    occurrence: str
    tries: int = 0
    due: float = 0.0


class EventRecorder:
    """Writes Events with `apply.Writer.event`; keeps and tries again those that failed (module docstring)."""

    def __init__(
        self,
        writer: apply.Writer,
        *,
        first_s: float = limits.EVENT_RETRY_FIRST_S,
        max_s: float = limits.EVENT_RETRY_MAX_S,
        tries: int = limits.EVENT_RETRY_TRIES,
        most: int = limits.EVENT_RETRY_PENDING,
    ) -> None:
        self.writer = writer
        self.first_s, self.max_s, self.tries, self.most = first_s, max_s, tries, most
        self._lock = threading.Lock()
        self._pending: collections.deque[Pending] = collections.deque()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def record(self, involved: Mapping[str, Any], *, warning: bool, reason: str, message: str) -> None:
        """Write the Event now; when that fails for a reason that may pass, it is tried again later."""
        meta = involved.get("metadata") or {}
        about = {  # what the Event names of the object: not the whole body, kept while it waits
            "apiVersion": involved.get("apiVersion"),
            "kind": involved.get("kind"),
            "metadata": {k: meta[k] for k in ("name", "namespace", "uid") if k in meta},
        }
        about = {k: v for k, v in about.items() if v is not None}
        self._try(Pending(about, warning, reason, message, secrets.token_hex(8)))

    def pending(self) -> int:
        """How many Events wait for another try."""
        with self._lock:
            return len(self._pending)

    def _try(self, item: Pending) -> None:
        try:
            self.writer.event(
                item.involved,
                warning=item.warning,
                reason=item.reason,
                message=item.message,
                occurrence=item.occurrence,
            )
        except errors.ApplyError as exc:
            why, final = f"{exc.reason}: {exc.message}", exc.reason in FINAL
        except (OSError, urllib3.exceptions.HTTPError) as exc:  # no answer (the API server down, a reset)
            why, final = f"{type(exc).__name__}: {exc}", False
        else:
            if item.tries:
                log.info("Event %s on %s recorded at try %d", item.reason, _name(item), item.tries + 1)
            return
        tries = item.tries + 1
        if final or tries >= self.tries:
            log.warning(
                "Event %s on %s not recorded (dropped after %d tries): %s", item.reason, _name(item), tries, why
            )
            return
        wait = min(self.max_s, self.first_s * 2 ** (tries - 1))
        log.warning("Event %s on %s not recorded (trying again in %gs): %s", item.reason, _name(item), wait, why)
        with self._lock:
            if len(self._pending) >= self.most:
                dropped = self._pending.popleft()
                log.warning("Event %s on %s dropped: %d Events wait", dropped.reason, _name(dropped), self.most)
            self._pending.append(replace(item, tries=tries, due=time.monotonic() + wait))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="meshplug-events", daemon=True)
                self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        """Try each waiting Event when it is due, oldest first; the thread ends when none waits."""
        while True:
            with self._lock:
                if not self._pending:
                    self._thread = None
                    return
                now = time.monotonic()
                due = [p for p in self._pending if p.due <= now]
                self._pending = collections.deque(p for p in self._pending if p.due > now)
                wait = min((p.due for p in self._pending), default=now) - now
            for item in due:
                self._try(item)
            if not due:
                self._wake.wait(max(0.0, wait))
                self._wake.clear()


def _name(item: Pending) -> str:
    meta = item.involved.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"

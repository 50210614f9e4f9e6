"""Applying plugin sets: the push endpoint (ECDS-style, bearer-authenticated) and the one `Applier` behind it.

Called by `meshplug.agent.runtime`: at start (the persisted last good set, else the static config's plugins)
and for every push. `Applier.apply` serialises applies, loads the new set in a worker thread
(`meshplug.agent.loader.load`), swaps the proxy's chain in one assignment (exchanges already started keep
the chain they began with), persists it, and answers with a `protocol.Reply`. A failed load changes
nothing: the reply is a NACK naming the resource and the reason, and the last good set keeps serving.

Authentication: mutual TLS on the port (`meshplug.agent.tls`: only the operator's client certificate gets a
connection), then `Authorization: Bearer <token>`, compared in constant time to each token of the token file
(one per line: during a rotation the new and the previous token), re-read on every push so a rotated Secret
takes effect without a restart. Missing or wrong -> 401 and a NACK body with reason ``unauthorized``; nothing
is read or changed. The same port answers GET ``protocol.HEALTH_PATH`` (the per-plugin stats a canary rollout
compares), with the same authentication.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from meshplug import errors, limits, protocol
from meshplug.agent import admin, config, loader, server

log = logging.getLogger("meshplug.agent.push")


@dataclass(frozen=True)
class Outcome:
    """The last apply attempt, for /config_dump and metrics."""

    version_info: str
    nonce: str
    ack: bool
    reason: str = ""
    message: str = ""
    resource: str = ""
    at: float = 0.0
    #: how long the apply took, in ms: prepare (per resource: fetch, artifact, load, validate), start, persist,
    #: total (a set already applied: total only)
    timings: Mapping[str, object] = field(default_factory=dict)


class Applier:
    def __init__(
        self,
        proxy: server.Proxy,
        *,
        store: loader.StateStore,
        sources: loader.Sources,
        build: loader.ChainBuilder,
        retire_after_s: float = limits.UPSTREAM_RESPONSE_TIMEOUT_S,
    ) -> None:
        self.proxy = proxy
        self.store = store
        self.sources = sources
        self.build = build
        self.retire_after_s = retire_after_s
        self.active: loader.LoadedSet | None = None
        self.last: Outcome | None = None
        self.acks = 0
        self.nacks = 0
        self._lock = asyncio.Lock()

    def statuses(self) -> tuple[protocol.PluginStatus, ...]:
        if self.active is None:
            return ()
        return tuple(
            protocol.PluginStatus(name=v.name, sha256=v.sha256, state=v.state) for v in self.active.chain.views()
        )

    def _nack(self, push: protocol.Push, error: errors.MeshplugError, resource: str = "") -> protocol.Reply:
        self.nacks += 1
        self.last = Outcome(push.version_info, push.nonce, False, error.reason, error.message, resource, time.time())
        log.warning("NACK %s (nonce %s): %s %s", push.version_info, push.nonce, resource, error.message)
        return protocol.Reply(
            ack=False,
            version_info=self.active.version_info if self.active else "",
            nonce=push.nonce,
            error_detail=protocol.ErrorDetail(reason=error.reason, message=error.message, resource=resource),
            plugins=self.statuses(),
        )

    async def apply(self, push: protocol.Push, *, persist: bool = True) -> protocol.Reply:
        async with self._lock:
            t0 = time.monotonic()
            if self.active is not None and self.active.same_as(push):
                self.acks += 1
                self.last = Outcome(push.version_info, push.nonce, True, at=time.time())
                return protocol.Reply(
                    ack=True, version_info=push.version_info, nonce=push.nonce, plugins=self.statuses()
                )
            loop = asyncio.get_running_loop()
            try:
                loaded, modules = await loop.run_in_executor(
                    None,
                    lambda: loader.load(push, store=self.store, sources=self.sources, build=self.build),
                )
            except loader.ResourceError as exc:
                return self._nack(push, exc.error, exc.resource)
            except errors.MeshplugError as exc:
                return self._nack(push, exc, str(getattr(exc, "resource", "")))
            old, self.active = self.active, loaded
            # the swap (no await in between): new exchanges and connections take the new chain
            self.proxy.install(loaded.chain.http_chains, loaded.chain.network_chains)
            if loaded.chain.activate is not None:
                await loaded.chain.activate()
            if old is not None:
                loop.call_later(self.retire_after_s, old.chain.close)
            timings = dict(loaded.timings)
            if persist:
                t1 = time.monotonic()
                try:
                    await loop.run_in_executor(None, self.store.save, loaded, modules)
                except OSError as exc:
                    log.error("applied %s but could not persist it: %s", push.version_info, exc)
                timings["persist_ms"] = round((time.monotonic() - t1) * 1000, 1)
            timings["total_ms"] = round((time.monotonic() - t0) * 1000, 1)
            self.acks += persist  # the start-up apply (persisted or static set) is not a push
            self.last = Outcome(push.version_info, push.nonce, True, at=time.time(), timings=timings)
            log.info("applied %s (nonce %s): %d plugin(s)", push.version_info, push.nonce, len(push.resources))
            return protocol.Reply(ack=True, version_info=push.version_info, nonce=push.nonce, plugins=self.statuses())


def _reply_response(status: int, reply: protocol.Reply) -> admin.Response:
    return admin.Response(status, protocol.encode(reply), protocol.CONTENT_TYPE)


def authorized(request: admin.Request, token_file: Path) -> bool:
    header = request.headers.get("authorization", "")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not presented:
        return False
    try:
        expected = config.read_tokens(token_file)
    except errors.ConfigError as exc:
        log.error("push refused: %s", exc.message)
        return False
    offered = presented.strip().encode()
    return any([hmac.compare_digest(offered, token.encode()) for token in expected])  # every one compared


#: the agent's per-plugin health stats (GET protocol.HEALTH_PATH on the push port)
HealthSource = Callable[[], Awaitable[protocol.Health]]


class _Handler:
    """The push endpoint: `authorize` judges a request from its head (admin.ControlServer calls it before
    reading any body byte), the call handles the whole request."""

    def __init__(self, applier: Applier, token_file: Path, health: HealthSource | None = None) -> None:
        self.applier = applier
        self.token_file = token_file
        self.health = health

    def _nack(self, status: int, reason: str, message: str) -> admin.Response:
        current = self.applier.active.version_info if self.applier.active else ""
        detail = protocol.ErrorDetail(reason=reason, message=message)
        return _reply_response(status, protocol.Reply(ack=False, version_info=current, nonce="", error_detail=detail))

    def authorize(self, request: admin.Request) -> admin.Response | None:
        if request.path == protocol.HEALTH_PATH and self.health is not None:
            if request.method != "GET":
                return admin.Response(405, b"use GET\n")
        elif request.path != protocol.PUSH_PATH:
            return admin.Response(404, b"not found\n")
        elif request.method not in ("PUT", "POST"):
            return admin.Response(405, b"use PUT\n")
        if not authorized(request, self.token_file):
            return self._nack(401, "unauthorized", "missing or invalid bearer token")
        return None

    async def __call__(self, request: admin.Request) -> admin.Response:
        refusal = self.authorize(request)
        if refusal is not None:
            return refusal
        if request.path == protocol.HEALTH_PATH and self.health is not None:
            return admin.Response(200, protocol.encode(await self.health()), protocol.CONTENT_TYPE)
        try:
            push = protocol.decode_push(request.body)
        except errors.ProtocolError as exc:
            return self._nack(400, exc.reason, exc.message)
        except RecursionError:  # JSON nested past the parser's depth: a bad push, not a fault of the agent
            return self._nack(400, errors.ProtocolError.reason, "push body is nested too deeply")
        return _reply_response(200, await self.applier.apply(push))


def handler(applier: Applier, token_file: Path, health: HealthSource | None = None) -> admin.Handler:
    """The push endpoint's request handler (with its `authorize` pre-check); with ``health``, it also answers
    GET `protocol.HEALTH_PATH`, authenticated as pushes are."""
    return _Handler(applier, token_file, health)

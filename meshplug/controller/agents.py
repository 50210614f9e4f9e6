"""Pushes to the in-pod agents: one pod's full desired set over `meshplug.protocol`, and the reply as an outcome.

Called by `meshplug.controller.reconcile` (agent data plane) for each selected pod. The agent listens at the pod
IP on the port named by the pod annotation `PUSH_PORT_ANNOTATION` (else `DEFAULT_PUSH_PORT`). Each push is
mutually authenticated TLS (the operator's client certificate; the agent's certificate must carry
``meshplug-agent.<namespace>``, both from the operator's CA: `meshplug.controller.identity`) and carries a bearer
token from the namespace's agent Secret as a second factor; on a 401 the next (older) token is tried, so a
rotation that has not reached the agent's mounted Secret yet costs nothing. Plain HTTP only when the operator
was started with ``--allow-plaintext-push`` (local runs). Not a Kubernetes API client: the only API writer stays
`meshplug.controller.apply`.

Outcomes: ``ack`` (the agent applied or already had the set), ``nack`` (it refused the set; the reply names the
resource and reason and the agent keeps serving its last good set), ``unreachable`` (no answer, a failed TLS
handshake, or an answer that is not a protocol reply: retried with backoff), ``unauthorized`` (401: no token
was accepted).
"""

from __future__ import annotations

import contextlib
import enum
import http.client
import itertools
import json
import socket
import ssl
import threading
from dataclasses import dataclass

from meshplug import errors, limits, protocol
from meshplug.controller import identity

PUSH_PORT_ANNOTATION = "meshplug.io/agent-push-port"
DEFAULT_PUSH_PORT = 15010

_nonces = itertools.count(1)
#: the sockets of pushes in flight: `abort_pushes` shuts them down when the operator stops (a push blocked in a
#: TLS handshake would otherwise hold the interpreter's finalization, which must not free an SSL object in use)
_inflight: set[socket.socket] = set()
_inflight_lock = threading.Lock()


def abort_pushes() -> None:
    """End every push in flight at once (they come back UNREACHABLE); called when the operator stops."""
    with _inflight_lock:
        sockets = list(_inflight)
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


class Result(enum.StrEnum):
    """A push's outcome; also the ``result`` label of ``meshplug_operator_pushes_total``."""

    ACK = "ack"
    NACK = "nack"
    UNREACHABLE = "unreachable"
    UNAUTHORIZED = "unauthorized"


@dataclass(frozen=True)
class Target:
    """Where one pod's agent takes pushes."""

    namespace: str
    pod: str
    ip: str
    port: int


@dataclass(frozen=True)
class Outcome:
    """What one push to one pod's agent came to."""

    result: Result
    version_info: str  # the version pushed
    applied_version: str  # the version the agent runs afterwards ("" if unknown)
    reason: str = ""
    message: str = ""
    resource: str = ""
    running: tuple[tuple[str, str], ...] = ()  # (plugin name, sha256) the agent reports running


def target_of(pod: dict[str, object]) -> Target | None:
    """The pod's agent endpoint; None while it has no IP (Pending, or not scheduled yet)."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    assert isinstance(meta, dict) and isinstance(status, dict)
    ip = status.get("podIP")
    if not isinstance(ip, str) or not ip:
        return None
    annotations = meta.get("annotations") or {}
    raw = annotations.get(PUSH_PORT_ANNOTATION) if isinstance(annotations, dict) else None
    try:
        port = int(raw) if raw is not None else DEFAULT_PUSH_PORT
    except ValueError:
        raise errors.ConfigError(
            f"pod {meta.get('name')}: annotation {PUSH_PORT_ANNOTATION}={raw!r} is not a port", reason="BadPushPort"
        ) from None
    if not 1 <= port <= 65535:
        raise errors.ConfigError(
            f"pod {meta.get('name')}: annotation {PUSH_PORT_ANNOTATION}={raw!r} is not a port", reason="BadPushPort"
        )
    return Target(namespace=str(meta.get("namespace")), pod=str(meta.get("name")), ip=ip, port=port)


class _TLSConnection(http.client.HTTPSConnection):
    """HTTPS to a pod IP whose certificate names ``server_name`` (not the address it is reached at)."""

    def __init__(self, host: str, port: int, *, context: ssl.SSLContext, server_name: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._server_name = server_name

    def connect(self) -> None:
        raw = socket.create_connection((self.host, self.port), self.timeout)
        with _inflight_lock:
            _inflight.add(raw)
        self.raw = raw
        self.sock = self._context.wrap_socket(raw, server_hostname=self._server_name)  # type: ignore[attr-defined]

    def close(self) -> None:
        raw = getattr(self, "raw", None)
        if raw is not None:
            with _inflight_lock:
                _inflight.discard(raw)
        super().close()


def _exchange(
    target: Target, body: bytes | None, token: str, creds: identity.PushCredentials, path: str = protocol.PUSH_PATH
) -> tuple[int, bytes]:
    """One PUT of ``body`` (None: a GET of ``path``); (status, reply bytes); raises OSError/HTTPException for the
    network's faults."""
    ip = target.ip.strip("[]")
    timeout = limits.AGENT_PUSH_TIMEOUT_S
    conn: http.client.HTTPConnection
    if creds.context is None:
        conn = http.client.HTTPConnection(ip, target.port, timeout=timeout)
    else:
        conn = _TLSConnection(ip, target.port, context=creds.context, server_name=creds.server_name, timeout=timeout)
    try:
        if body is None:
            conn.request("GET", path, headers=protocol.bearer(token))
        else:
            conn.request("PUT", path, body=body, headers=protocol.bearer(token))
        resp = conn.getresponse()
        return resp.status, resp.read(limits.MAX_CONTROL_REQUEST_BYTES)
    finally:
        conn.close()


def push(
    target: Target,
    version: str,
    resources: tuple[protocol.ExtensionConfig, ...],
    creds: identity.PushCredentials,
) -> Outcome:
    """PUT the full set to the agent and read its reply. Never raises for the agent's or the network's faults."""
    message = protocol.Push(version_info=version, nonce=f"n-{next(_nonces)}", resources=resources)
    body = protocol.encode(message)
    status, raw = 401, b""
    for token in creds.tokens or ("",):
        try:
            status, raw = _exchange(target, body, token, creds)
        except ssl.SSLError as exc:  # a certificate the CA did not issue for this namespace, or no TLS at all
            where = f"{target.ip}:{target.port}"
            return Outcome(Result.UNREACHABLE, version, "", "AgentTLSFailed", f"{where}: TLS: {exc.reason or exc}")
        except (OSError, http.client.HTTPException) as exc:
            return Outcome(Result.UNREACHABLE, version, "", "AgentUnreachable", f"{target.ip}:{target.port}: {exc}")
        if status != 401:
            break
    try:
        reply = protocol.decode_reply(raw)
    except errors.ProtocolError as exc:
        return Outcome(Result.UNREACHABLE, version, "", "AgentProtocolError", f"HTTP {status}: {exc.message}")
    return _outcome(status, reply, message)


def read_health(target: Target, creds: identity.PushCredentials) -> protocol.Health | str:
    """The agent's per-plugin health stats (GET `protocol.HEALTH_PATH`, authenticated as pushes are), or why
    they could not be read. Never raises for the agent's or the network's faults."""
    status, raw = 401, b""
    for token in creds.tokens or ("",):
        try:
            status, raw = _exchange(target, None, token, creds, protocol.HEALTH_PATH)
        except ssl.SSLError as exc:
            return f"{target.ip}:{target.port}: TLS: {exc.reason or exc}"
        except (OSError, http.client.HTTPException) as exc:
            return f"{target.ip}:{target.port}: {exc}"
        if status != 401:
            break
    if status != 200:
        return f"{target.ip}:{target.port}: health stats answered HTTP {status} (an agent without them?)"
    try:
        return protocol.decode_health(raw)
    except errors.ProtocolError as exc:
        return f"{target.ip}:{target.port}: health stats: {exc.message}"


def _outcome(status: int, reply: protocol.Reply, pushed: protocol.Push) -> Outcome:
    """What a protocol reply to ``pushed`` means."""
    version = pushed.version_info
    running = tuple((p.name, p.sha256) for p in reply.plugins if p.state is protocol.PluginState.RUNNING)
    if status == 401:
        return Outcome(Result.UNAUTHORIZED, version, reply.version_info, "AgentUnauthorized", _detail(reply))
    if reply.ack and reply.nonce == pushed.nonce and reply.version_info == version:
        return Outcome(Result.ACK, version, reply.version_info, running=running)
    if reply.ack:  # an ACK for something else: not a confirmation of this push
        return Outcome(
            Result.UNREACHABLE, version, reply.version_info, "AgentProtocolError", "reply does not match the push"
        )
    detail = reply.error_detail
    return Outcome(
        Result.NACK,
        version,
        reply.version_info,
        reason=detail.reason if detail else "nack",
        message=_detail(reply),
        resource=detail.resource if detail else "",
        running=running,
    )


def _detail(reply: protocol.Reply) -> str:
    d = reply.error_detail
    if d is None:
        return json.dumps(reply.to_json())[:200]
    return f"{d.resource}: {d.message}" if d.resource else d.message

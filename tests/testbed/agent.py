"""meshplug's agent as a real process of the test bed: write its config, start it, wait for /ready, stop by pid.

Used by tests/integration/test_agent_*.py, the agent corpus plane and bench/agent_vs_envoy.py.
"""

from __future__ import annotations

import http.client
import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from meshplug import protocol
from tests.testbed import procs


def http_request(
    port: int,
    method: str,
    path: str,
    *,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


@dataclass
class Agent:
    proc: procs.Proc
    port: int
    admin_port: int
    push_port: int | None
    config_path: Path

    def admin(self, path: str, method: str = "GET") -> tuple[int, bytes]:
        status, _, body = http_request(self.admin_port, method, path)
        return status, body

    def admin_json(self, path: str) -> Any:
        status, body = self.admin(path)
        if status != 200:
            raise RuntimeError(f"agent admin {path} answered {status}: {body[:200]!r}")
        return json.loads(body)

    def config_dump(self) -> dict[str, Any]:
        dump: dict[str, Any] = self.admin_json("/config_dump")
        return dump

    def ready(self) -> bool:
        try:
            return self.admin("/ready")[0] == 200
        except OSError:
            return False

    def push_body(self, body: bytes, *, token: str | None, timeout: float = 60.0) -> tuple[int, protocol.Reply]:
        """PUT ``body`` to the plain-HTTP push port with bearer ``token`` (None: no Authorization header);
        the HTTP status and the decoded reply (a NACK saying why when the agent refuses the push)."""
        assert self.push_port is not None, "this agent has no push port"
        headers = protocol.bearer(token) if token is not None else {"content-type": protocol.CONTENT_TYPE}
        conn = http.client.HTTPConnection("127.0.0.1", self.push_port, timeout=timeout)
        try:
            conn.request("PUT", protocol.PUSH_PATH, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, protocol.decode_reply(resp.read())
        finally:
            conn.close()

    def push(
        self, version: str, resources: Sequence[protocol.ExtensionConfig], *, token: str, nonce: str | None = None
    ) -> protocol.Reply:
        """Push ``resources`` as version ``version`` (nonce ``n-<version>`` unless given); the reply of a 200."""
        doc = protocol.Push(version_info=version, nonce=nonce or f"n-{version}", resources=tuple(resources))
        status, reply = self.push_body(protocol.encode(doc), token=token)
        assert status == 200, (status, reply)
        return reply

    def stop(self) -> None:
        self.proc.stop()

    def kill(self) -> None:
        self.proc.kill()


def write_config(directory: Path, raw: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "agent.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def base_config(
    *,
    port: int,
    admin_port: int,
    clusters: dict[str, int],
    listener_cluster: str = "upstream",
    plugins: list[dict[str, Any]] | None = None,
    push: dict[str, Any] | None = None,
    state_dir: Path | None = None,
    drain_timeout_s: float | None = None,
    listener_type: str = "http",
    http2_clusters: frozenset[str] = frozenset(),
    upgrade_types: tuple[str, ...] = (),
) -> dict[str, Any]:
    """An agent config: listener `main` on `port` to `listener_cluster`; `http2_clusters` speak HTTP/2."""
    listener: dict[str, Any] = {"name": "main", "address": "127.0.0.1", "port": port, "cluster": listener_cluster}
    if listener_type != "http":
        listener["type"] = listener_type
    if upgrade_types:
        listener["upgrade_types"] = list(upgrade_types)
    raw: dict[str, Any] = {
        "listeners": [listener],
        "clusters": [
            {"name": n, "address": "127.0.0.1", "port": p, **({"http2": True} if n in http2_clusters else {})}
            for n, p in sorted(clusters.items())
        ],
        "admin": {"address": "127.0.0.1", "port": admin_port},
        "plugins": plugins or [],
    }
    if push is not None:
        raw["push"] = push
    if state_dir is not None:
        raw["state_dir"] = str(state_dir)
    if drain_timeout_s is not None:
        raw["drain_timeout_s"] = drain_timeout_s
    return raw


def start_agent(
    raw: dict[str, Any],
    *,
    work_dir: Path,
    log_dir: Path,
    name: str = "agent",
    timeout: float = 60.0,
    log_level: str = "debug",
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    concurrency: int = 1,
    args: Sequence[str] = (),
    wrapper: Sequence[str] = (),
) -> Agent:
    """Start `meshplug agent --config` for `raw` (ports must be concrete) and wait until /ready says LIVE;
    `concurrency` > 1: that many workers (--concurrency); `args`: more of the agent's flags; `wrapper`: a
    command the agent runs under (valgrind: bench/_callgrind.py)."""
    path = write_config(work_dir, raw)
    admin_port = int(raw["admin"]["port"])
    port = int(raw["listeners"][0]["port"])
    push_port = int(raw["push"]["port"]) if raw.get("push") else None
    proc = procs.start(
        name,
        [*wrapper, sys.executable, "-m", "meshplug", "agent", "--config", str(path), "--log-level", log_level]
        + (["--concurrency", str(concurrency)] if concurrency != 1 else [])
        + list(args),
        log_dir=log_dir,
        ready=None,
        env=env,
        cwd=cwd,
        ports={"main": port, "admin": admin_port},
    )
    agent = Agent(proc=proc, port=port, admin_port=admin_port, push_port=push_port, config_path=path)
    return _ready_or_stopped(agent, timeout=timeout, name=name)


def start_envoy_config(
    config_path: Path,
    *,
    port: int,
    admin_port: int,
    log_dir: Path,
    name: str = "agent",
    timeout: float = 60.0,
    log_level: str = "debug",
    command: str = "run",
    env: dict[str, str] | None = None,
    concurrency: int = 1,
) -> Agent:
    """Start `meshplug run --envoy-config` (or `meshplug agent --envoy-config`, `command="agent"`) on an Envoy
    bootstrap whose listener port and admin port are `port` / `admin_port`; wait until /ready says LIVE.
    `concurrency` > 1: `meshplug agent` with that many workers."""
    if concurrency != 1:
        command = "agent"
    proc = procs.start(
        name,
        [sys.executable, "-m", "meshplug", command, "--envoy-config", str(config_path), "--log-level", log_level]
        + (["--concurrency", str(concurrency)] if concurrency != 1 else []),
        log_dir=log_dir,
        ready=None,
        ports={"main": port, "admin": admin_port},
        env=env,
    )
    agent = Agent(proc=proc, port=port, admin_port=admin_port, push_port=None, config_path=config_path)
    return _ready_or_stopped(agent, timeout=timeout, name=name)


def _ready_or_stopped(agent: Agent, *, timeout: float, name: str) -> Agent:
    """``agent`` once /ready says LIVE; otherwise stopped, and the error carries its log's tail."""
    try:
        _wait_ready(agent, timeout=timeout, name=name)
    except BaseException as exc:
        tail = agent.proc.log()[-4000:]
        agent.proc.stop()
        raise RuntimeError(f"{name} did not become ready ({exc}); log tail:\n{tail}") from None
    return agent


def _wait_ready(agent: Agent, *, timeout: float, name: str) -> None:
    """Poll /ready until LIVE; an agent that exits (e.g. refused its config) ends the wait at once."""
    deadline = time.monotonic() + timeout
    while not agent.ready():
        if not agent.proc.alive():
            raise RuntimeError(f"{name} exited with {agent.proc.popen.returncode}")
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {name} to answer /ready with LIVE")
        time.sleep(0.05)


# --- an injected agent, as the kubelet would run it ------------------------------------------------------------

#: the annotation the injection webhook sets (the operator adopts such pods' agent Secret)
INJECTED_ANNOTATION = "meshplug.io/injected"


def mount_identity(
    kube: Any,
    namespace: str,
    pod: str,
    directory: Path,
    *,
    secret: str = "meshplug-agent",
    audience: str = "meshplug",
    timeout: float = 60.0,
) -> Path:
    """What the kubelet projects into an injected agent's config volume, written into ``directory``: the agent
    Secret the operator makes for ``namespace`` (waited for: the operator creates it, nobody else does) and a
    ServiceAccount token bound to ``pod`` for ``audience`` (TokenRequest, as the kubelet asks for it)."""
    import base64

    found: dict[str, Any] = {}

    def made() -> bool:
        status, body = kube.request("GET", f"/api/v1/namespaces/{namespace}/secrets/{secret}")
        if status == 200:
            found.update(body)
        return bool(status == 200)

    procs.wait_until(made, timeout=timeout, what=f"the operator to make Secret {namespace}/{secret}")
    directory.mkdir(parents=True, exist_ok=True)
    for key, value in found["data"].items():
        (directory / key).write_bytes(base64.b64decode(value))
    status, body = kube.request("GET", f"/api/v1/namespaces/{namespace}/pods/{pod}")
    if status != 200:
        raise RuntimeError(f"pod {namespace}/{pod}: {status} {body}")
    request = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {
            "audiences": [audience],
            "expirationSeconds": 3600,
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod, "uid": body["metadata"]["uid"]},
        },
    }
    sa = body["spec"].get("serviceAccountName") or "default"
    status, out = kube.request("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{sa}/token", request)
    if status != 201:
        raise RuntimeError(f"TokenRequest for pod {namespace}/{pod}: {status} {out}")
    (directory / "sa-token").write_text(out["status"]["token"])
    return directory


def injected_push(directory: Path, *, address: str, port: int) -> dict[str, Any]:
    """The push section the injection webhook writes, with the mounted files of `mount_identity`."""
    return {
        "address": address,
        "port": port,
        "token_file": str(directory / "token"),
        "tls": {
            "cert_file": str(directory / "tls.crt"),
            "key_file": str(directory / "tls.key"),
            "client_ca_file": str(directory / "ca.crt"),
        },
    }


def injected_modules(directory: Path, module_server_url: str) -> dict[str, Any]:
    """The modules section the injection webhook writes (the operator's HTTPS module server), opted in to loopback:
    the test bed's module server listens on 127.0.0.1."""
    return {
        "allow_loopback": True,
        "server": {
            "url": module_server_url,
            "token_file": str(directory / "sa-token"),
            "ca_file": str(directory / "ca.crt"),
        },
    }


def start_injected(
    kube: Any,
    namespace: str,
    pod: str,
    work: Path,
    *,
    ip: str,
    port: int,
    module_server_url: str,
    modules: Mapping[str, Any] | None = None,
    env: dict[str, str] | None = None,
    log_level: str = "debug",
    upstream_port: int | None = None,
    args: Sequence[str] = (),
) -> Agent:
    """An injected pod's agent as a local process at ``ip`` (the pod's IP): push port ``port``, what the kubelet
    would mount (`mount_identity`, into ``work``/``pod``/etc), the operator's HTTPS module server at
    ``module_server_url``; ``modules``: more keys of the config's modules section; ``upstream_port``: the app it
    proxies to (None: nothing listens); ``args``: more of the agent's flags (the injected ``--trusted-keys``)."""
    files = mount_identity(kube, namespace, pod, work / pod / "etc")
    raw = base_config(
        port=procs.free_port(),
        admin_port=procs.free_port(),
        clusters={"upstream": upstream_port if upstream_port is not None else procs.free_port()},
        push=injected_push(files, address=ip, port=port),
    )
    raw["modules"] = {**injected_modules(files, module_server_url), **(modules or {})}
    return start_agent(
        raw, work_dir=work / pod, log_dir=work / "logs", name=f"agent-{pod}", env=env, log_level=log_level, args=args
    )


def run_pod(kube: Any, namespace: str, pod: str, work: Path, *, ip: str, module_server_url: str) -> Agent:
    """What a kubelet does for a pod the webhook injected, minus the containers we do not run: its agent as a local
    process at ``ip`` (on the push port the webhook annotated), then the pod reported Running and Ready there."""
    status, body = kube.request("GET", f"/api/v1/namespaces/{namespace}/pods/{pod}")
    if status != 200:
        raise RuntimeError(f"pod {namespace}/{pod}: {status} {body}")
    port = int(body["metadata"]["annotations"]["meshplug.io/agent-push-port"])
    agent = start_injected(kube, namespace, pod, work, ip=ip, port=port, module_server_url=module_server_url)
    running = {
        "phase": "Running",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": "True"}],
    }
    status, out = kube.request(
        "PATCH",
        f"/api/v1/namespaces/{namespace}/pods/{pod}/status",
        {"status": running},
        content_type="application/merge-patch+json",
    )
    if status != 200:
        agent.stop()
        raise RuntimeError(f"pod {namespace}/{pod} status: {status} {out}")
    return agent

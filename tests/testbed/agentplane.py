"""The agent plane as the operator tests drive it: `meshplug operator` (a process) against the real kube-apiserver,
and injected pods whose agents are real processes at loopback addresses of their own, set as the pods'
status.podIP through the status subresource (the test bed has no kubelet). Each agent mounts what the operator
made for its namespace (`agent.start_injected`).

Used by test_operator_agent, test_operator_canary and test_author_workflow; each test module hands in its own
range of 127.0.0.x addresses.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from tests.testbed import agent as agent_mod
from tests.testbed import kube as kube_mod
from tests.testbed import operator as operator_mod
from tests.testbed import procs

PLUGINS = "/apis/meshplug.io/v1alpha1/namespaces/{ns}/wasmplugins"


@dataclass
class AgentPlane:
    kube: kube_mod.Kube
    ns: str
    modules: Path
    work: Path
    op: operator_mod.Operator
    hosts: Iterator[int]  # the last byte of each new pod's 127.0.0.x address
    agents: dict[str, agent_mod.Agent] = field(default_factory=dict)
    app_port: int | None = None  # the app the pods' agents proxy to (None: nothing listens)
    log_level: str = "debug"

    @classmethod
    def start(cls, kube: kube_mod.Kube, namespace: str, work: Path, hosts: Iterator[int], **fields: Any) -> Self:
        """The operator watching ``namespace``, allowed `file://` modules from ``work``/modules (made here)."""
        modules = work / "modules"
        modules.mkdir()
        op = operator_mod.start_operator(
            kube.kubeconfig, work, namespaces=[namespace], extra=[f"--file-root={modules}"]
        )
        return cls(kube, namespace, modules, work, op, hosts, **fields)

    def module(self, name: str, data: bytes) -> str:
        (self.modules / name).write_bytes(data)
        return f"file://{self.modules / name}"

    def pod(
        self,
        name: str,
        labels: dict[str, str],
        *,
        agent: bool = True,
        ip: str | None = None,
        precompiled: bool = True,
        args: Sequence[str] = (),
    ) -> agent_mod.Agent | None:
        """An injected pod (its annotations as the webhook writes them); with ``agent``, its agent runs at a
        loopback address of its own (the pod's IP) with what the kubelet would mount (`mounted`) and ``args``."""
        port = procs.free_port()
        annotations = {"meshplug.io/agent-push-port": str(port), agent_mod.INJECTED_ANNOTATION: "test"}
        body = {
            "metadata": {"name": name, "labels": labels, "annotations": annotations},
            "spec": {"containers": [{"name": "app", "image": "registry.example/app:v1"}]},
        }
        status, out = self.kube.request("POST", f"/api/v1/namespaces/{self.ns}/pods", body)
        assert status == 201, out
        ip = ip or self.next_ip()
        started = self.start_agent(name, ip, port, precompiled=precompiled, args=args) if agent else None
        self.set_ip(name, ip)
        return started

    def next_ip(self) -> str:
        return f"127.0.0.{next(self.hosts)}"

    def mounted(self, pod: str) -> Path:
        """Where the pod's agent finds what the kubelet mounts (its namespace's agent Secret among it)."""
        return self.work / pod / "etc"

    def start_agent(
        self, pod: str, ip: str, port: int, *, precompiled: bool = True, args: Sequence[str] = ()
    ) -> agent_mod.Agent:
        """The pod's agent, with an artifact cache of its own (empty); `precompiled=False`: it compiles modules
        rather than load the operator's artifacts."""
        started = agent_mod.start_injected(
            self.kube,
            self.ns,
            pod,
            self.work,
            ip=ip,
            port=port,
            module_server_url=f"https://127.0.0.1:{self.op.module_tls_port}",
            modules={"precompiled": precompiled},
            env={"MESHPLUG_CACHE": str(self.work / pod / "cache")},
            log_level=self.log_level,
            upstream_port=self.app_port,
            args=args,
        )
        self.agents[pod] = started
        return started

    def set_ip(self, name: str, ip: str) -> None:
        running = {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
        status, out = self.kube.request(
            "PATCH",
            f"/api/v1/namespaces/{self.ns}/pods/{name}/status",
            {"status": {**running, "conditions": [{"type": "Ready", "status": "True"}]}},
            content_type="application/merge-patch+json",
        )
        assert status == 200, out

    def plugin(self, name: str, spec: dict[str, Any]) -> None:
        body = {"apiVersion": "meshplug.io/v1alpha1", "kind": "WasmPlugin", "metadata": {"name": name}, "spec": spec}
        status, out = self.kube.request("POST", PLUGINS.format(ns=self.ns), body)
        assert status == 201, out

    def apply(self, name: str, spec: dict[str, Any]) -> None:
        """Server-side apply with strict field validation (what ``kubectl apply --validate=strict`` sends)."""
        body = {"apiVersion": "meshplug.io/v1alpha1", "kind": "WasmPlugin", "metadata": {"name": name}, "spec": spec}
        query = "fieldManager=kubectl&fieldValidation=Strict"
        path = f"{PLUGINS.format(ns=self.ns)}/{name}?{query}"
        status, out = self.kube.request("PATCH", path, body, content_type="application/apply-patch+yaml")
        assert status == 201, out

    def patch_plugin(self, name: str, spec: dict[str, Any]) -> None:
        status, out = self.kube.request(
            "PATCH", f"{PLUGINS.format(ns=self.ns)}/{name}", {"spec": spec}, content_type="application/merge-patch+json"
        )
        assert status == 200, out

    def get(self, name: str) -> dict[str, Any]:
        status, obj = self.kube.request("GET", f"{PLUGINS.format(ns=self.ns)}/{name}")
        assert status == 200, obj
        return dict(obj)

    def status(self, name: str) -> dict[str, Any]:
        return dict(self.get(name).get("status") or {})

    def wait_ready(self, name: str, status: str, reason: str, summary: str | None = None) -> dict[str, Any]:
        def ok() -> bool:
            st = self.status(name)
            ready: dict[str, Any] = next((c for c in st.get("conditions") or [] if c["type"] == "Ready"), {})
            return (
                ready.get("status") == status
                and ready.get("reason") == reason
                and (summary is None or (st.get("pods") or {}).get("summary") == summary)
            )

        procs.wait_until(ok, timeout=90, interval=0.2, what=f"{name}: Ready={status} ({reason}) pods {summary}")
        return self.status(name)

    def events(self, name: str) -> list[tuple[str, str, str, int]]:
        """(type, reason, message, count): one series per type and reason, as the operator records them."""
        _, out = self.kube.request("GET", f"/api/v1/namespaces/{self.ns}/events")
        return [
            (e["type"], e["reason"], e["message"], int(e.get("count") or 1))
            for e in out["items"]
            if e["involvedObject"]["name"] == name
        ]

    def stop(self) -> None:
        """The operator (the one running now: a test may have started another) and every pod's agent."""
        self.op.stop()
        for a in self.agents.values():
            a.stop()

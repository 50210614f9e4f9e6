"""meshplug as the chart installs it, on a test-bed control plane: the operator run the way the chart's Deployment
runs it -- as the chart's ServiceAccount (a TokenRequest token: exactly the RBAC the chart granted), with the
Deployment's own flags (``--namespace`` per ``watchNamespaces``, ``--file-root``, ...) and the chart's webhook
config -- but as a local process listening on 127.0.0.1. The API server reaches its webhooks through
``webhook.url`` (`Webhook.values`), TLS from the operator's own CA (the chart's default) or a test CA.

Works whether the chart's objects came from ``helm install`` or from ``helm template`` applied by another tool: it
reads the Deployment and the webhook ConfigMap from the API. Used by tests/integration/test_operator_rbac.py and
test_gitops.py.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.testbed import helm as helm_mod
from tests.testbed import kube as kube_mod
from tests.testbed import operator as operator_mod
from tests.testbed import procs

#: flags of the chart's Deployment that `operator_mod.start_operator` sets itself (local ports and directories)
_LOCAL_FLAGS = (
    "--module-listen",
    "--module-host",
    "--module-port",
    "--module-tls-listen",
    "--module-tls-port",
    "--cache-dir",
    "--metrics-listen",
    "--liveness",
)


@dataclass(frozen=True)
class Webhook:
    """Where the operator's admission webhooks listen on 127.0.0.1, and their TLS: the operator's own CA
    (``tls`` None: webhook.tls.mode=operator, the chart's default) or a test CA (tls.mode=provided)."""

    port: int
    tls: helm_mod.WebhookTls | None = None

    @classmethod
    def make(cls, directory: Path, *, provided: bool = False) -> Webhook:
        return cls(port=procs.free_port(), tls=helm_mod.webhook_tls(directory) if provided else None)

    def values(self) -> dict[str, Any]:
        """The chart values that point the webhook configurations at this listener."""
        tls = {"mode": "operator"} if self.tls is None else {"mode": "provided", "caBundle": self.tls.ca_bundle}
        return {"webhook": {"url": f"https://127.0.0.1:{self.port}", "tls": tls}}

    def ca_file(self, kube: kube_mod.Kube, namespace: str, fullname: str, work: Path) -> Path:
        """The CA the API server is to trust: the test CA, or the operator's (from its identity Secret)."""
        if self.tls is not None:
            return self.tls.ca_cert
        status, secret = kube.request("GET", f"/api/v1/namespaces/{namespace}/secrets/{fullname}-identity")
        assert status == 200, secret
        path = work / f"{fullname}-ca.crt"
        path.write_bytes(base64.b64decode(secret["data"]["ca.crt"]))
        return path


def audit_policy(path: Path, groups: Sequence[str] = ("system:serviceaccounts",)) -> list[str]:
    """apiserver flags for an audit log of every request by ``groups`` (Metadata level: verb, resource, namespace,
    name, response code), JSON lines in ``path``; `audit_events` reads it."""
    policy = {
        "apiVersion": "audit.k8s.io/v1",
        "kind": "Policy",
        "omitStages": ["RequestReceived"],
        "rules": [{"level": "Metadata", "userGroups": list(groups)}, {"level": "None"}],
    }
    policy_file = path.with_suffix(".policy.json")
    policy_file.write_text(json.dumps(policy))
    return [f"--audit-policy-file={policy_file}", f"--audit-log-path={path}", "--audit-log-maxbackup=0"]


def audit_events(path: Path, user: str) -> list[dict[str, Any]]:
    """The requests of ``user`` in the audit log, one event each: its last stage (a watch still open has only
    ResponseStarted)."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    events: dict[str, dict[str, Any]] = {}
    for line in lines:
        if line.strip():
            event = json.loads(line)
            if event["user"]["username"] == user:
                events[event["auditID"]] = event
    return list(events.values())


def service_account(fullname: str) -> str:
    return f"{fullname}-operator"


def user(namespace: str, fullname: str) -> str:
    return f"system:serviceaccount:{namespace}:{service_account(fullname)}"


def operator_flags(deployment: Mapping[str, Any], work: Path) -> list[str]:
    """The operator container's flags, minus the local ones `start_operator` sets; other listen addresses move to a
    free port on 127.0.0.1."""
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    args = list(container.get("args") or [])
    assert args[0] == "operator", args
    out = []
    for arg in args[1:]:
        flag, _, value = arg.partition("=")
        if flag in _LOCAL_FLAGS:
            continue
        if flag.endswith("-listen") and value:
            arg = f"{flag}=127.0.0.1:{procs.free_port()}"
        out.append(arg)
    return out


def _mounted_ca(kube: kube_mod.Kube, namespace: str, fullname: str, work: Path, flag: str) -> str:
    """``--extra-ca-file`` names the chart's ``operator.trustedCA`` ConfigMap as the pod mounts it: the same file
    here, written from that ConfigMap."""
    if not flag.startswith("--extra-ca-file="):
        return flag
    status, cm = kube.request("GET", f"/api/v1/namespaces/{namespace}/configmaps/{fullname}-trusted-ca")
    assert status == 200, cm
    path = work / "trusted-ca.crt"
    path.write_text(cm["data"]["ca.crt"])
    return f"--extra-ca-file={path}"


def _mounted_key(kube: kube_mod.Kube, namespace: str, fullname: str, work: Path, flag: str) -> str:
    """``--trusted-key`` names a key of the chart's ``signatures.trustedKeys`` ConfigMap as the pod mounts it: the
    same file here, written from that ConfigMap."""
    if not flag.startswith("--trusted-key=/etc/meshplug/signature-keys/"):
        return flag
    name = flag.rsplit("/", 1)[1]
    status, cm = kube.request("GET", f"/api/v1/namespaces/{namespace}/configmaps/{fullname}-signature-keys")
    assert status == 200, cm
    path = work / "signature-keys" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(cm["data"][name])
    return f"--trusted-key={path}"


def start_operator(
    kube: kube_mod.Kube,
    namespace: str,
    fullname: str,
    work: Path,
    *,
    webhook: Webhook | None,
    name: str = "operator",
    wait_healthy: bool = True,
    allow_loopback: bool = True,
) -> operator_mod.Operator:
    """Run the installed operator locally as its ServiceAccount (see the module docstring). ``allow_loopback``: the
    test bed's opt-in (`--allow-loopback`) on top of the chart's flags; False leaves it to the chart's
    ``ssrf.allowLoopback``."""
    status, deployment = kube.request("GET", f"/apis/apps/v1/namespaces/{namespace}/deployments/{fullname}-operator")
    assert status == 200, deployment
    work.mkdir(parents=True, exist_ok=True)
    sa_user = user(namespace, fullname)
    token = kube.service_account_token(namespace, service_account(fullname))
    kubeconfig = kube.kubeconfig_for(token, sa_user, work / f"{name}.kubeconfig")
    env = {"POD_NAMESPACE": namespace}  # as the Deployment's downward API sets it
    flags = [
        _mounted_key(kube, namespace, fullname, work, _mounted_ca(kube, namespace, fullname, work, f))
        for f in operator_flags(deployment, work)
    ]
    if webhook is not None:
        status, cm = kube.request("GET", f"/api/v1/namespaces/{namespace}/configmaps/{fullname}-webhook")
        assert status == 200, cm
        config = yaml.safe_load(cm["data"]["webhook.yaml"])
        # only where it listens (and, with a test CA, its certificate files) differ from the chart's config
        config["listen"] = {"address": "127.0.0.1", "port": webhook.port}
        if webhook.tls is not None:
            config["tls"] = {"certFile": str(webhook.tls.cert), "keyFile": str(webhook.tls.key)}
        path = work / f"{name}-webhook.yaml"
        path.write_text(yaml.safe_dump(config))
        env["MESHPLUG_WEBHOOK_CONFIG"] = str(path)
    op = operator_mod.start_operator(
        kubeconfig,
        work,
        name=name,
        # what $POD_NAMESPACE gives the Deployment's operator (start_operator names other defaults)
        extra=[
            *flags,
            f"--lease-namespace={namespace}",
            f"--identity-namespace={namespace}",
        ],
        wait_healthy=wait_healthy,
        env=env,
        allow_loopback=allow_loopback,
    )
    if webhook is not None and wait_healthy:
        ca = webhook.ca_file(kube, namespace, fullname, work)
        procs.wait_until(lambda: procs.tls_ready(webhook.port, ca), timeout=60, what="the webhook server")
    return op

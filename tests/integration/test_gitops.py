"""A GitOps sync, as Argo CD runs one with server-side apply, against a real kube-apiserver + controller-manager.

The "repository": the chart rendered by `helm template` with the values a user keeps in Git (webhooks reached at a
local operator through ``webhook.url``; TLS from the operator's own CA, the default) and an app: a namespace, a
Deployment whose pods opt in to agent injection, a WasmPlugin per data plane the code offers and a Lua
TrafficExtension. A sync is
``kubectl apply --server-side --field-manager=argocd-controller`` of every file, without ``--force-conflicts``
(platform first, then apps: Argo CD's sync waves; the plugins need the CRDs and the admission webhooks up). The
operator runs as the chart's ServiceAccount with the rendered Deployment's flags (tests/testbed/installed.py); the
controller-manager makes the Deployment's ReplicaSet and pod, the injection webhook admits it, its agent runs as a
local process at the pod's IP.

After the operator reconciled (the plugin Ready on the pod's agent), the same sync again: it succeeds (no field
conflict), ``kubectl diff --server-side`` finds nothing (no drift), the Deployment keeps its generation, ReplicaSet
and pod (no rollout), and the API server's audit log shows the operator wrote no synced object except the fields
it owns by design: the plugins' status subresource and its finalizer, and the caBundle of the chart's two webhook
configurations (`meshplug.controller.webhook_tls`) -- which managedFields confirm field by field. A change in Git
(another module) syncs, becomes Ready, and the next sync is clean again.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshplug import injection
from tests.guests import minimal
from tests.testbed import agent as agent_mod
from tests.testbed import fixtures_kube, installed, procs
from tests.testbed import helm as helm_mod
from tests.testbed import kube as kube_mod
from tests.testbed import operator as operator_mod

MANAGER = "argocd-controller"
RELEASE = NAMESPACE = "meshplug"  # fullname "meshplug": the release name holds the chart's
SYSTEM = "meshplug-system"
APP = "shop"
PLUGINS = f"/apis/meshplug.io/v1alpha1/namespaces/{APP}/wasmplugins"
EXTENSIONS = f"/apis/meshplug.io/v1alpha1/namespaces/{APP}/trafficextensions"
MODULE = minimal.passthrough('(data (i32.const 2048) "gitops")')
MODULE_V2 = minimal.passthrough('(data (i32.const 2048) "gitops-v2")')
#: every data plane / delivery mode the code offers: the plugin spec fields that choose it, the Ready reason it
#: reaches (a mode whose delivery writes a synced object, e.g. a Deployment's pod template, fails this test)
PLANES = {
    "agent": ({"dataPlane": "agent"}, "Confirmed"),
    # the istio plane's two routes: Istio's own resources, and EnvoyFilter + ConfigMap mounted at admission; the
    # app's pod has no Istio proxy (no istiod here): each renders its objects and reports NoProxies
    "istio-native": ({"istioDelivery": "native"}, "NoProxies"),
    "istio-configmap": ({"istioDelivery": "configmap"}, "NoProxies"),
}
#: what the operator may write on objects the GitOps tool synced: (resource, subresource) -> the fields it owns
OWNED_BY_DESIGN = {
    ("wasmplugins", "status"): "the plugin's status",
    ("wasmplugins", ""): "its finalizer (metadata.finalizers)",
    ("trafficextensions", "status"): "the plugin's status",
    ("trafficextensions", ""): "its finalizer (metadata.finalizers)",
    ("mutatingwebhookconfigurations", ""): "webhooks[*].clientConfig.caBundle",
    ("validatingwebhookconfigurations", ""): "webhooks[*].clientConfig.caBundle",
}


@dataclass
class Repo:
    """The Git repository's files and the cluster they sync to."""

    kube: kube_mod.Kube
    dir: Path
    audit: Path
    webhook: installed.Webhook
    modules: Path

    def sync(self, *files: str) -> None:
        """One sync of ``files`` (all when none): server-side apply as the GitOps tool, conflicts not forced."""
        for name in files or ("platform.yaml", "apps.yaml"):
            out = kubectl(self.kube, "apply", "--server-side", f"--field-manager={MANAGER}", "-f", str(self.dir / name))
            assert out.returncode == 0, f"sync of {name} failed:\n{out.stdout}\n{out.stderr}"

    def drift(self) -> str:
        """`kubectl diff --server-side` of every file: what a sync would change now ("" when in sync)."""
        out = ""
        for name in ("platform.yaml", "apps.yaml"):
            diff = kubectl(self.kube, "diff", "--server-side", f"--field-manager={MANAGER}", "-f", str(self.dir / name))
            assert diff.returncode in (0, 1), diff.stderr
            out += diff.stdout
        return out

    def objects(self) -> list[dict[str, Any]]:
        return [
            d for name in ("platform.yaml", "apps.yaml") for d in yaml.safe_load_all((self.dir / name).read_text()) if d
        ]

    def write_apps(self, module: bytes) -> None:
        """The app: its namespace, a Deployment whose pods opt in to injection, one plugin per data plane."""
        path = self.modules / f"{hashlib.sha256(module).hexdigest()[:12]}.wasm"
        path.write_bytes(module)
        labels = {"app": "cart"}
        docs: list[dict[str, Any]] = [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": APP}},
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "cart", "namespace": APP},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": labels},
                    "template": {
                        "metadata": {"labels": {**labels, injection.INJECT_KEY: "enabled"}},
                        "spec": {
                            "containers": [
                                {
                                    "name": "app",
                                    "image": "registry.example/cart:1",
                                    "ports": [{"name": "http", "containerPort": 8080}],
                                }
                            ]
                        },
                    },
                },
            },
        ]
        for plane, (fields, _) in PLANES.items():
            spec = {
                "url": path.as_uri(),
                "sha256": hashlib.sha256(module).hexdigest(),
                "selector": {"matchLabels": labels},
            }
            docs.append(
                {
                    "apiVersion": "meshplug.io/v1alpha1",
                    "kind": "WasmPlugin",
                    "metadata": {"name": f"hdr-{plane}", "namespace": APP},
                    "spec": {**spec, **fields},
                }
            )
        lua = f"function envoy_on_response(h) h:headers():add('x-lua', '{len(module)}') end\n"  # changes with it
        docs.append(
            {
                "apiVersion": "meshplug.io/v1alpha1",
                "kind": "TrafficExtension",
                "metadata": {"name": "lua-agent", "namespace": APP},
                "spec": {"lua": {"inlineCode": lua}, "selector": {"matchLabels": labels}, "dataPlane": "agent"},
            }
        )
        (self.dir / "apps.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))

    def operator_writes_to_synced(self, user: str) -> list[str]:
        """Writes by ``user`` to objects of the repository, other than what it owns by design."""
        synced = {
            (
                d["apiVersion"].rpartition("/")[0],  # the group ("" for the core group)
                plural_of(d["kind"]),
                d["metadata"].get("namespace", ""),
                d["metadata"]["name"],
            )
            for d in self.objects()
        }
        found = []
        for e in installed.audit_events(self.audit, user):
            ref = e.get("objectRef") or {}
            if e["verb"] not in ("create", "update", "patch", "delete"):
                continue
            # Istio's WasmPlugin of the same name as the synced meshplug one is the operator's own (native route)
            key = (ref.get("apiGroup", ""), ref.get("resource", ""), ref.get("namespace", ""), ref.get("name", ""))
            if key in synced and (key[1], ref.get("subresource", "")) not in OWNED_BY_DESIGN:
                found.append(f"{e['verb']} {'/'.join(key)} {ref.get('subresource', '')}")
        return found


def kubectl(kube: kube_mod.Kube, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["kubectl", f"--kubeconfig={kube.kubeconfig}", *args], capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, logs_dir: Path) -> Iterator[Repo]:
    work = tmp_path_factory.mktemp("gitops")
    audit = work / "audit.log"
    with kube_mod.control_plane(
        work / "kube", logs_dir / "gitops", controller_manager=True, apiserver_args=installed.audit_policy(audit)
    ) as kube:
        # Istio's kinds, present in the cluster (installed with Istio, not by this repository)
        fixtures_kube.install_crd(kube, fixtures_kube.ENVOYFILTER_CRD)
        for kind, plural in (("WasmPlugin", "wasmplugins"), ("TrafficExtension", "trafficextensions")):
            fixtures_kube.install_crd(kube, fixtures_kube.stand_in_crd("extensions.istio.io", "v1alpha1", kind, plural))
        (work / "repo").mkdir()
        modules = work / "modules"
        modules.mkdir()
        webhook = installed.Webhook.make(work / "webhook")
        values = {
            **webhook.values(),
            "operator": {"fileRoots": [str(modules)]},
            "agent": {"pushPort": procs.free_port()},
        }
        (work / "values.yaml").write_text(yaml.safe_dump(values))
        rendered = helm_mod.helm(
            ["template", RELEASE, str(helm_mod.CHART), "-n", SYSTEM, "-f", str(work / "values.yaml")],
            kubeconfig=None,
            home=work / "helm",
        ).stdout
        namespace = yaml.safe_dump({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": SYSTEM}})
        (work / "repo" / "platform.yaml").write_text(namespace + "---\n" + rendered)
        yield Repo(kube, work / "repo", audit, webhook, modules)


def test_a_second_sync_changes_nothing(repo: Repo, tmp_path: Path) -> None:
    kube = repo.kube
    repo.sync("platform.yaml")  # wave 0: CRDs, RBAC, the operator's Deployment and webhooks
    op = installed.start_operator(kube, SYSTEM, NAMESPACE, tmp_path / "operator", webhook=repo.webhook)
    agents: list[agent_mod.Agent] = []
    try:
        repo.write_apps(MODULE)
        repo.sync("apps.yaml")  # wave 1: the app
        agents.append(run_the_pod(kube, op, tmp_path))
        wait_ready(kube, MODULE)
        before = snapshot(kube)

        repo.sync()
        assert repo.drift() == ""
        assert snapshot(kube) == before, "the second sync rolled the Deployment out"
        user = installed.user(SYSTEM, NAMESPACE)
        assert repo.operator_writes_to_synced(user) == []
        check_managed_fields(kube, repo)

        # a change in Git: another module; synced, Ready, and the next sync finds nothing to do again
        repo.write_apps(MODULE_V2)
        repo.sync("apps.yaml")
        wait_ready(kube, MODULE_V2)
        repo.sync()
        assert repo.drift() == ""
        assert snapshot(kube) == before
        assert repo.operator_writes_to_synced(user) == []
    finally:
        op.stop()
        for a in agents:
            a.stop()
        print(op.proc.log()[-6000:])


def run_the_pod(kube: kube_mod.Kube, op: operator_mod.Operator, work: Path) -> agent_mod.Agent:
    """The Deployment's one pod (made by the controller-manager, injected at admission), its agent running."""
    pods: list[dict[str, Any]] = []

    def made() -> bool:
        pods[:] = kube.request("GET", f"/api/v1/namespaces/{APP}/pods?labelSelector=app=cart")[1]["items"]
        return len(pods) == 1

    procs.wait_until(made, timeout=60, what="the Deployment's pod")
    (pod,) = pods
    assert injection.CONTAINER_NAME in [c["name"] for c in pod["spec"]["containers"]]
    server = f"https://127.0.0.1:{op.module_tls_port}"
    agent = agent_mod.run_pod(kube, APP, pod["metadata"]["name"], work, ip="127.0.0.230", module_server_url=server)

    def settled() -> bool:  # the controller-manager saw the pod Ready: no status write left in flight to race a diff
        status = kube.request("GET", f"/apis/apps/v1/namespaces/{APP}/deployments/cart")[1].get("status") or {}
        return status.get("availableReplicas") == 1 and status.get("readyReplicas") == 1

    procs.wait_until(settled, timeout=60, what="the Deployment available")
    return agent


def wait_ready(kube: kube_mod.Kube, module: bytes) -> None:
    digest = f"sha256:{hashlib.sha256(module).hexdigest()}"
    for plane, (_, reason) in PLANES.items():

        def ready(name: str = f"hdr-{plane}", reason: str = reason) -> bool:
            status = kube.request("GET", f"{PLUGINS}/{name}")[1].get("status") or {}
            cond = next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), {})
            return cond.get("reason") == reason and status.get("digest") == digest

        procs.wait_until(ready, timeout=90, interval=0.2, what=f"hdr-{plane} Ready with {digest}")

    def lua_ready() -> bool:  # Ready for the script Git holds now
        obj = kube.request("GET", f"{EXTENSIONS}/lua-agent")[1]
        cond = next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == "Ready"), {})
        return cond.get("reason") == "Confirmed" and cond.get("observedGeneration") == obj["metadata"]["generation"]

    procs.wait_until(lua_ready, timeout=90, interval=0.2, what="lua-agent Ready")


def snapshot(kube: kube_mod.Kube) -> dict[str, Any]:
    """What a rollout would change: the Deployment's generation, its ReplicaSets, its pods."""
    _, deployment = kube.request("GET", f"/apis/apps/v1/namespaces/{APP}/deployments/cart")
    _, sets = kube.request("GET", f"/apis/apps/v1/namespaces/{APP}/replicasets")
    _, pods = kube.request("GET", f"/api/v1/namespaces/{APP}/pods")
    return {
        "generation": deployment["metadata"]["generation"],
        "replicasets": sorted(r["metadata"]["name"] for r in sets["items"]),
        "pods": sorted(p["metadata"]["uid"] for p in pods["items"]),
    }


#: Kubernetes' own: the apiserver (CRD conditions; a ValidatingAdmissionPolicy's type-checking status), the
#: controller-manager (Deployment status), and the apiserver's name for fields an object had before its first
#: server-side apply (a Namespace's: made without managedFields)
KUBERNETES_MANAGERS = (
    "kube-apiserver",
    "validatingadmissionpolicy-status",
    "kube-controller-manager",
    "before-first-apply",
)
#: field managers of the operator: its API writer, and kopf (the framework it runs on, which adds the finalizer)
OPERATOR_MANAGERS = ("meshplug", "kopf")
FINALIZER = {"f:metadata": {"f:finalizers": {".": {}, 'v:"meshplug.io/cleanup"': {}}}}


def plural_of(kind: str) -> str:
    """The API's resource name of a kind the chart renders (ValidatingAdmissionPolicy -> ...policies)."""
    lower = kind.lower()
    return lower[:-1] + "ies" if lower.endswith("y") else lower + "s"


def check_managed_fields(kube: kube_mod.Kube, repo: Repo) -> None:
    """Who owns which fields of each synced object: the GitOps tool its fields, Kubernetes' controllers their
    status, and the operator exactly what it owns by design (`OWNED_BY_DESIGN`), field by field, or nothing."""
    for doc in repo.objects():
        kind, meta = doc["kind"], doc["metadata"]
        plural = plural_of(kind)
        group = doc["apiVersion"].rpartition("/")[0]
        where = ["-n", meta["namespace"]] if meta.get("namespace") else []
        got = kubectl(
            kube,
            "get",
            f"{plural}.{group}" if group else plural,
            meta["name"],
            *where,
            "-o",
            "json",
            "--show-managed-fields",
        )
        assert got.returncode == 0, got.stderr
        entries = json.loads(got.stdout)["metadata"].get("managedFields") or []
        managers = {m["manager"] for m in entries}
        assert managers <= {MANAGER, *KUBERNETES_MANAGERS, *OPERATOR_MANAGERS}, (kind, meta["name"], entries)
        owned = sorted(
            (m.get("subresource", ""), json.dumps(m["fieldsV1"], sort_keys=True))
            for m in entries
            if m["manager"] in OPERATOR_MANAGERS
        )
        if plural.endswith("webhookconfigurations"):
            want = {f'k:{{"name":"{h["name"]}"}}': {"f:clientConfig": {"f:caBundle": {}}} for h in doc["webhooks"]}
            assert owned == [("", json.dumps({"f:webhooks": want}, sort_keys=True))], (kind, owned)
        elif plural in ("wasmplugins", "trafficextensions"):
            status = [f for sub, f in owned if sub == "status"]
            assert len(status) == 1 and set(json.loads(status[0])) == {"f:status"}, owned
            assert [f for sub, f in owned if sub != "status"] == [json.dumps(FINALIZER, sort_keys=True)], owned
        else:
            assert owned == [], (kind, meta["name"], owned)

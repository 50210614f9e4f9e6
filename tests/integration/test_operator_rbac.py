"""Least privilege, on the RBAC the chart installs (`helm install` of charts/meshplug on a real kube-apiserver):

- `kubectl auth can-i --list` as the operator's ServiceAccount equals the README's "Permissions" table, in the
  operator's namespace, a plugin's namespace and kube-system: cluster-wide, and with ``watchNamespaces`` (Roles in
  those namespaces, and nothing in kube-system or any other namespace). What Kubernetes grants every account is
  measured in the same run (a ServiceAccount with no binding) and set aside;
- the operator, run as that ServiceAccount with the installed Deployment's flags (tests/testbed/installed.py),
  delivers plugins on each data plane the code offers, and the API server's audit log shows no request refused
  and none outside the list (namespaced: none outside its namespaces either), and, over the cluster-wide run
  (which also restarts the operator), every listed rule used: the list holds exactly what the code uses;
- Secrets: get and update only of its own two, by name (can-i shows the resourceNames); its token can mint no
  other account's token (a service-account-token Secret, under any name, is refused in kube-system, a plugin's
  namespace and its own: RBAC, or the chart's ValidatingAdmissionPolicy where RBAC cannot name a create) and
  read no Secret it does not own; a plugin's imagePullSecret is read only once the namespace grants that Secret;
- a rule taken away fails loudly: the plugin's Ready condition and a Warning Event name the refusal, /healthz
  turns 503 and the `meshplug_operator_healthy` gauge 0, and a restarted operator names the missing permission.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshplug import controller, injection
from meshplug.controller import identity
from tests.guests import minimal
from tests.testbed import agent as agent_mod
from tests.testbed import fixtures_kube, installed, procs
from tests.testbed import helm as helm_mod
from tests.testbed import kube as kube_mod
from tests.testbed import operator as operator_mod

README = procs.REPO_ROOT / "README.md"
RBAC = "/apis/rbac.authorization.k8s.io/v1"
API = "/apis/meshplug.io/v1alpha1/namespaces/{ns}/{plural}"
MODULE = minimal.passthrough('(data (i32.const 2048) "rbac")')
MODULE_V2 = minimal.passthrough('(data (i32.const 2048) "rbac-v2")')
TOKEN = "push-token-for-the-rbac-test"
_hosts = itertools.count(120)

WATCHED = ("shop-x", "shop-y")


# --- the documented list and what kubectl shows ------------------------------------------------------------


def _pairs(resource: str, verbs: str) -> set[tuple[str, str]]:
    return {(resource, v) for v in re.split(r"[,\s]+", verbs.strip()) if v}


def documented() -> dict[str, set[tuple[str, str]]]:
    """README's "Permissions" table: scope -> {(resource as kubectl names it, verb)}."""
    text = README.read_text()
    section = text.split("### Permissions", 1)[1].split("\n#", 1)[0]
    out: dict[str, set[tuple[str, str]]] = {scope: set() for scope in controller.SCOPES}
    for line in section.splitlines():
        m = re.match(r"^\| `([^`]+)` \| ([a-z, ]+) \| (\w+) \|", line)
        if m:
            out[m.group(3)] |= _pairs(m.group(1), m.group(2))
    return out


def listed() -> dict[str, set[tuple[str, str]]]:
    """`controller.rbac_rules()` in kubectl's naming (``plural.group``, core: ``plural``)."""
    out: dict[str, set[tuple[str, str]]] = {scope: set() for scope in controller.SCOPES}
    for r in controller.rbac_rules():
        plural, _, sub = r.resource.partition("/")
        name = f"{plural}.{r.api_group}" if r.api_group else plural
        out[r.scope] |= _pairs(name + (f"/{sub}" if sub else ""), ",".join(r.verbs))
    return out


_ROW = re.compile(r"^(\S*)\s+\[(.*?)\]\s+\[(.*?)\]\s+\[(.*?)\]\s*$")


def can_i(kubeconfig: Path, namespace: str) -> set[tuple[str, str, str]]:
    """`kubectl auth can-i --list -n namespace`: (resource or non-resource URL, verb, resource names) per row and
    verb."""
    out = subprocess.run(
        ["kubectl", f"--kubeconfig={kubeconfig}", "auth", "can-i", "--list", "-n", namespace],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    rows: set[tuple[str, str, str]] = set()
    header, *lines = out.stdout.splitlines()
    assert header.split()[0] == "Resources", out.stdout
    for line in lines:
        m = _ROW.match(line)
        assert m is not None, line
        resource, urls, names, verbs = m.groups()
        rows |= {(r, v, names) for r, v in _pairs(resource or urls, verbs)}
    return rows


def ca_bundle_names(fullname: str) -> dict[str, set[str]]:
    """The only objects the names=ca-bundle rules reach: the release's own webhook configurations."""
    group = "admissionregistration.k8s.io"
    return {
        f"mutatingwebhookconfigurations.{group}": {f"{fullname}-inject", f"{fullname}-istio-modules"},
        f"validatingwebhookconfigurations.{group}": {f"{fullname}-validate"},
    }


def test_readme_lists_exactly_the_operators_rules() -> None:
    assert documented() == listed()


AGENT_SECRET = identity.DEFAULT_AGENT_SECRET


def own_secrets(at: Install, *, watched: bool) -> dict[str, set[str]]:
    """What the operator may do with Secrets in its own namespace: create, and get/update its identity Secret
    (and, where the watched rules hold there too, the agent Secret's name)."""
    names = {f"{at.fullname}-identity", *([AGENT_SECRET] if watched else [])}
    return {"create": {"*"}, "get": names, "update": names}


#: a watched namespace: create (RBAC cannot name it; the chart's admission policy does), get/update by name only
WATCHED_SECRETS = {"create": {"*"}, "get": {AGENT_SECRET}, "update": {AGENT_SECRET}}


def token_secret(name: str, account: str = "default") -> dict[str, Any]:
    """A Secret the token controller fills with a token of ``account``: what create + get of Secrets could mint."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "annotations": {"kubernetes.io/service-account.name": account}},
        "type": "kubernetes.io/service-account-token",
    }


def kubectl_as(at: Install, args: list[str], body: dict[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
    """kubectl with the operator's ServiceAccount token (exactly what a thief of it could do)."""
    return subprocess.run(
        ["kubectl", f"--kubeconfig={at.sa}", *args],
        input=yaml.safe_dump(body) if body is not None else None,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def can_i_as(plane: Plane, at: Install, verb: str, what: str, namespace: str) -> bool:
    """`kubectl auth can-i VERB WHAT -n NAMESPACE --as system:serviceaccount:...` (an admin impersonating it)."""
    out = subprocess.run(
        [
            "kubectl",
            f"--kubeconfig={plane.kube.kubeconfig}",
            "auth",
            "can-i",
            verb,
            what,
            "-n",
            namespace,
            "--as",
            at.user,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.stdout.strip() in ("yes", "no"), out
    return out.stdout.strip() == "yes"


def assert_no_token_minting(plane: Plane, at: Install, namespaces: tuple[str, ...]) -> None:
    """The operator's ServiceAccount can neither make a ServiceAccount-token Secret (under any name, its agent
    Secret's included: it may read that one back) nor read a Secret it does not own, in ``namespaces``
    and in kube-system."""
    other = "registry-creds"
    for ns in dict.fromkeys(("kube-system", *namespaces)):
        body = {"metadata": {"name": other}, "type": "kubernetes.io/dockerconfigjson"}
        body["data"] = {".dockerconfigjson": "e30="}
        status, out = plane.kube.request("POST", f"/api/v1/namespaces/{ns}/secrets", body)
        assert status in (201, 409), out
        for name in (AGENT_SECRET, "minted"):
            made = kubectl_as(at, ["create", "-n", ns, "-f", "-"], token_secret(name))
            assert made.returncode != 0, f"{at.user} created a token Secret {ns}/{name}: {made.stdout}"
            assert "Forbidden" in made.stderr or "forbidden" in made.stderr, made.stderr
            assert plane.kube.request("GET", f"/api/v1/namespaces/{ns}/secrets/{name}")[1].get("type") != (
                "kubernetes.io/service-account-token"
            )
        # nor an Opaque Secret under a name that is not its own
        made = kubectl_as(at, ["create", "secret", "generic", "junk", "-n", ns, "--from-literal=a=b"])
        assert made.returncode != 0 and "forbidden" in made.stderr.lower(), made
        read = kubectl_as(at, ["get", "secret", other, "-n", ns, "-o", "name"])
        assert read.returncode != 0 and "forbidden" in read.stderr.lower(), read
        assert not can_i_as(plane, at, "get", f"secrets/{other}", ns)
        assert not can_i_as(plane, at, "list", "secrets", ns)
        assert not can_i_as(plane, at, "watch", "secrets", ns)


# --- the test bed ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Install:
    """A release of the chart and what a test needs of it."""

    release: str
    namespace: str
    fullname: str
    user: str  # the operator's ServiceAccount as the API names it
    sa: Path  # a kubeconfig of that ServiceAccount
    modules: Path  # the chart's operator.fileRoots
    webhook: installed.Webhook
    work: Path

    def start_operator(self, kube: kube_mod.Kube, **kw: Any) -> operator_mod.Operator:
        return installed.start_operator(kube, self.namespace, self.fullname, self.work, webhook=self.webhook, **kw)


@dataclass
class Plane:
    kube: kube_mod.Kube
    audit: Path
    work: Path
    baseline: Path  # kubeconfig of a ServiceAccount with no binding at all
    agents: list[agent_mod.Agent] = field(default_factory=list)

    def rows(self, at: Install, namespace: str) -> set[tuple[str, str, str]]:
        """`kubectl auth can-i --list` rows of the release's operator in ``namespace`` beyond what every account
        may."""
        return can_i(at.sa, namespace) - can_i(self.baseline, namespace)

    def granted(self, at: Install, namespace: str) -> set[tuple[str, str]]:
        """What the release's operator may do in ``namespace`` beyond what every account may; the rules that name
        webhook configurations name only the release's own (Secrets: `secrets`)."""
        rows = self.rows(at, namespace)
        named: dict[str, set[str]] = {}
        for resource, _, names in rows:
            if names and resource != "secrets":
                named.setdefault(resource, set()).update(names.split())
        assert named == {r: n for r, n in ca_bundle_names(at.fullname).items() if r in named}
        return {(resource, verb) for resource, verb, _ in rows}

    def secrets(self, at: Install, namespace: str) -> dict[str, set[str]]:
        """verb -> the Secrets of ``namespace`` the release's operator may use it on ("*": any)."""
        out: dict[str, set[str]] = {}
        for resource, verb, names in self.rows(at, namespace):
            if resource == "secrets":
                out.setdefault(verb, set()).update(names.split() or ["*"])
        return out

    def install(self, release: str, namespace: str, work: Path, **more: Any) -> Install:
        """`helm install` of the chart (webhooks at a local listener, CRDs left to the fixture), ``more`` values."""
        modules = work / "modules"
        modules.mkdir()
        webhook = installed.Webhook.make(work / "webhook-tls")
        values = {
            **webhook.values(),
            "crds": {"enabled": False, "keep": True},
            "operator": {"fileRoots": [str(modules)]},
            "agent": {"pushPort": procs.free_port()},
            **more,
        }
        path = work / "values.yaml"
        path.write_text(yaml.safe_dump(values))
        helm_mod.helm(
            ["install", release, str(helm_mod.CHART), "-n", namespace, "--create-namespace", "-f", str(path)],
            kubeconfig=self.kube.kubeconfig,
            home=self.work / "helm",
        )
        fullname = f"{release}-meshplug"
        token = self.kube.service_account_token(namespace, installed.service_account(fullname))
        user = installed.user(namespace, fullname)
        sa = self.kube.kubeconfig_for(token, user, work / "sa.kubeconfig")
        return Install(release, namespace, fullname, user, sa, modules, webhook, work)

    def none_refused(self, at: Install) -> set[tuple[str, str, str]]:
        """The operator's requests so far, none refused and none outside the list."""
        used, refused = self.used(at.user)
        assert refused == []
        assert unused_and_unlisted(used, at.namespace)["unlisted"] == set()
        return used

    def all_used(self, at: Install) -> None:
        """Every listed rule was used by the operator (and nothing else)."""
        self.wait_lease_renewed(at.namespace)
        gaps = unused_and_unlisted(self.used(at.user)[0], at.namespace)
        assert gaps == {"unused": set(), "unlisted": set()}, "\n".join(f"{k}: {sorted(v)}" for k, v in gaps.items())

    def used(self, user: str) -> tuple[set[tuple[str, str, str]], list[str]]:
        """(namespace, resource, verb) of every request ``user`` made, and those the API refused."""
        used, refused = set(), []
        for e in installed.audit_events(self.audit, user):
            ref = e.get("objectRef") or {}
            if not ref.get("resource"):
                continue
            name = f"{ref['resource']}.{ref['apiGroup']}" if ref.get("apiGroup") else ref["resource"]
            name += f"/{ref['subresource']}" if ref.get("subresource") else ""
            used.add((ref.get("namespace", ""), name, e["verb"]))
            if e["verb"] == "patch" and e["responseStatus"]["code"] == 201:
                # a server-side apply that creates the object is authorized for create as well (logged as patch)
                used.add((ref.get("namespace", ""), name, "create"))
            if e["responseStatus"]["code"] == 403:
                refused.append(f"{e['verb']} {name} in {ref.get('namespace', '')}: {e['responseStatus']}")
        return used, refused

    def wait_lease_renewed(self, namespace: str) -> None:
        """Until the leader renewed its Lease once (an update, like every renewal after it)."""
        path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/meshplug-operator"

        def renewed() -> bool:
            _, lease = self.kube.request("GET", path)
            spec = (lease or {}).get("spec") or {}
            return bool(spec.get("renewTime")) and spec.get("renewTime") != spec.get("acquireTime")

        procs.wait_until(renewed, timeout=30, what="the leader to renew its Lease")


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory, logs_dir: Path) -> Iterator[Plane]:
    """A control plane of its own (a cluster-wide operator must not see other tests' namespaces), with an audit log
    of every ServiceAccount's requests."""
    work = tmp_path_factory.mktemp("rbac")
    audit = work / "audit.log"
    with kube_mod.control_plane(work / "kube", logs_dir / "rbac", apiserver_args=installed.audit_policy(audit)) as kube:
        for crd in sorted((procs.REPO_ROOT / "crds").glob("*.yaml")):
            fixtures_kube.install_crd(kube, yaml.safe_load(crd.read_text()))
        fixtures_kube.install_crd(kube, fixtures_kube.ENVOYFILTER_CRD)
        fixtures_kube.install_crd(kube, WP_CRD)  # Istio < 1.30: extensions.istio.io serves WasmPlugin only
        for ns in ("shop-a", *WATCHED):
            fixtures_kube.ensure_namespace(kube, ns)
        assert kube.request("POST", "/api/v1/namespaces/default/serviceaccounts", {"metadata": {"name": "nobody"}})[0]
        token = kube.service_account_token("default", "nobody")
        baseline = kube.kubeconfig_for(token, "system:serviceaccount:default:nobody", work / "nobody.kc")
        p = Plane(kube, audit, work, baseline)
        try:
            yield p
        finally:
            for a in p.agents:
                a.stop()


#: Istio's extensions.istio.io kinds as stand-ins (no istiod here: the istio plane's proxies are in test_istio_*)
ISTIO_EXT = "/apis/extensions.istio.io/v1alpha1"
WP_CRD = fixtures_kube.stand_in_crd("extensions.istio.io", "v1alpha1", "WasmPlugin", "wasmplugins")
TE_CRD = fixtures_kube.stand_in_crd("extensions.istio.io", "v1alpha1", "TrafficExtension", "trafficextensions")


# --- what the operator is asked to do: one plugin per data plane ------------------------------------------


@dataclass
class Shop:
    """A namespace with a pod whose agent runs as a local process, a Deployment, and the agents' push token."""

    plane: Plane
    ns: str
    modules: Path

    def module(self, name: str, data: bytes) -> tuple[str, str]:
        (self.modules / name).write_bytes(data)
        return f"file://{self.modules / name}", hashlib.sha256(data).hexdigest()

    def request(self, method: str, path: str, body: Any = None, ok: tuple[int, ...] = (200, 201)) -> Any:
        status, out = self.plane.kube.request(
            method, path, body, content_type="application/merge-patch+json" if method == "PATCH" else "application/json"
        )
        assert status in ok, f"{method} {path}: {status} {out}"
        return out

    def setup(self, op: operator_mod.Operator) -> None:
        """An injected pod (the webhook admits it; the operator makes the namespace's agent Secret) whose agent runs
        as a local process at the pod's IP; a Deployment, a DaemonSet and a StatefulSet selecting it."""
        app = {"name": "app", "image": "registry.example/app:v1", "ports": [{"name": "http", "containerPort": 8080}]}
        spec = {"containers": [app]}
        pod = {"metadata": {"name": "cart-0", "labels": {"app": "cart", injection.INJECT_KEY: "enabled"}}, "spec": spec}
        made = self.request("POST", f"/api/v1/namespaces/{self.ns}/pods", pod)
        assert injection.CONTAINER_NAME in [c["name"] for c in made["spec"]["containers"]]
        ip = f"127.0.0.{next(_hosts)}"
        port = int(made["metadata"]["annotations"][injection.PUSH_PORT_ANNOTATION])
        server = f"https://127.0.0.1:{op.module_tls_port}"
        agent = agent_mod.start_injected(
            self.plane.kube, self.ns, "cart-0", self.plane.work / self.ns, ip=ip, port=port, module_server_url=server
        )
        self.plane.agents.append(agent)
        running = {
            "phase": "Running",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": "True"}],
        }
        self.request("PATCH", f"/api/v1/namespaces/{self.ns}/pods/cart-0/status", {"status": running})
        deployment = {
            "metadata": {"name": "cart"},
            "spec": {
                "selector": {"matchLabels": {"app": "cart"}},
                "template": {"metadata": {"labels": {"app": "cart"}}, "spec": spec},
            },
        }
        self.request("POST", f"/apis/apps/v1/namespaces/{self.ns}/deployments", deployment)
        self.request(
            "POST", f"/apis/apps/v1/namespaces/{self.ns}/daemonsets", {**deployment, "metadata": {"name": "cart-ds"}}
        )
        sts = {**deployment, "metadata": {"name": "cart-sts"}, "spec": {**deployment["spec"], "serviceName": "cart"}}
        self.request("POST", f"/apis/apps/v1/namespaces/{self.ns}/statefulsets", sts)

    def ready(self, plural: str, name: str) -> dict[str, Any]:
        _, obj = self.plane.kube.request("GET", f"{API.format(ns=self.ns, plural=plural)}/{name}")
        return next((c for c in ((obj or {}).get("status") or {}).get("conditions") or [] if c["type"] == "Ready"), {})

    def wait(self, plural: str, name: str, reason: str) -> None:
        procs.wait_until(
            lambda: self.ready(plural, name).get("reason") == reason,
            timeout=90,
            interval=0.2,
            what=f"{self.ns}/{name}: Ready reason {reason} (now {self.ready(plural, name)})",
        )

    def create(self, plural: str, kind: str, name: str, spec: dict[str, Any]) -> None:
        body = {"apiVersion": "meshplug.io/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec}
        self.request("POST", API.format(ns=self.ns, plural=plural), body)

    def delete(self, plural: str, name: str) -> None:
        path = f"{API.format(ns=self.ns, plural=plural)}/{name}"
        self.request("DELETE", path, ok=(200, 202))
        procs.wait_until(
            lambda: self.plane.kube.request("GET", path)[0] == 404, timeout=60, what=f"{name} finalized and gone"
        )

    def injected(self, name: str) -> list[str]:
        """Create a pod that opts in to agent injection; the containers it was admitted with."""
        pod = {
            "metadata": {"name": name, "labels": {"app": "web", injection.INJECT_KEY: "enabled"}},
            "spec": {
                "containers": [
                    {
                        "name": "app",
                        "image": "registry.example/app:v1",
                        "ports": [{"name": "http", "containerPort": 8080}],
                    }
                ]
            },
        }
        out = self.request("POST", f"/api/v1/namespaces/{self.ns}/pods", pod)
        return [c["name"] for c in out["spec"]["containers"]]

    def every_plane(self) -> None:
        """A WasmPlugin per data plane, updated and deleted; a Lua TrafficExtension; an injected pod."""
        assert self.injected("web-0") == ["app", injection.CONTAINER_NAME]
        url, sha = self.module("m.wasm", MODULE)
        selector = {"matchLabels": {"app": "cart"}}
        self.create(
            "wasmplugins",
            "WasmPlugin",
            "agent",
            {"url": url, "sha256": sha, "selector": selector, "dataPlane": "agent"},
        )
        # the istio plane, both routes: native (Istio's own resource of the plugin's kind: Istio's WasmPlugin) and
        # configmap (EnvoyFilter + ConfigMap); no pod here has an Istio proxy: NoProxies
        self.create("wasmplugins", "WasmPlugin", "istio", {"url": url, "sha256": sha, "selector": selector})
        self.create(
            "wasmplugins",
            "WasmPlugin",
            "istio-cm",
            {"url": url, "sha256": sha, "selector": selector, "istioDelivery": "configmap"},
        )
        lua = "function envoy_on_response(h) h:headers():add('x-lua', '1') end\n"
        self.create(
            "trafficextensions",
            "TrafficExtension",
            "lua",
            {"lua": {"inlineCode": lua}, "selector": selector, "dataPlane": "agent"},
        )
        self.wait("wasmplugins", "agent", "Confirmed")
        self.wait("wasmplugins", "istio", "NoProxies")
        self.wait("wasmplugins", "istio-cm", "NoProxies")
        self.wait("trafficextensions", "lua", "Confirmed")
        url2, sha2 = self.module("m2.wasm", MODULE_V2)
        self.new_module("wasmplugins", ("agent", "istio", "istio-cm"), url2, sha2)
        _, wp = self.plane.kube.request("GET", f"{ISTIO_EXT}/namespaces/{self.ns}/wasmplugins/istio")
        assert wp["spec"]["sha256"] == sha2
        # a wasm TrafficExtension: Istio's TrafficExtension where served (Istio >= 1.30), else Istio's WasmPlugin;
        # once Istio serves TrafficExtension, its next change moves it there (and takes its WasmPlugin back)
        served = self.plane.kube.request("GET", f"{ISTIO_EXT}/trafficextensions")[0] == 200
        self.create("trafficextensions", "TrafficExtension", "istio-te", {"selector": selector, "wasm": {"url": url}})
        self.wait("trafficextensions", "istio-te", "NoProxies")
        if not served:
            _, old = self.plane.kube.request("GET", f"{ISTIO_EXT}/namespaces/{self.ns}/wasmplugins/istio-te")
            assert old["metadata"]["ownerReferences"][0]["kind"] == "TrafficExtension"
            fixtures_kube.install_crd(self.plane.kube, TE_CRD)
        self.new_module("trafficextensions", ("istio-te",), url2, sha2)
        _, te = self.plane.kube.request("GET", f"{ISTIO_EXT}/namespaces/{self.ns}/trafficextensions/istio-te")
        assert te["spec"]["wasm"]["sha256"] == sha2
        assert self.plane.kube.request("GET", f"{ISTIO_EXT}/namespaces/{self.ns}/wasmplugins/istio-te")[0] == 404
        self.delete("wasmplugins", "agent")
        self.delete("wasmplugins", "istio")
        self.delete("wasmplugins", "istio-cm")
        self.delete("trafficextensions", "istio-te")
        self.delete("trafficextensions", "lua")
        # a module that is not what its sha256 says: Ready=False and a Warning Event
        self.create(
            "wasmplugins", "WasmPlugin", "bad", {"url": url, "sha256": sha2, "selector": selector, "dataPlane": "agent"}
        )
        procs.wait_until(
            lambda: self.ready("wasmplugins", "bad").get("status") == "False", timeout=60, what="bad: Ready=False"
        )
        procs.wait_until(lambda: self.warnings("bad"), timeout=30, what="a Warning Event on bad")
        self.delete("wasmplugins", "bad")

    def new_module(self, plural: str, names: tuple[str, ...], url: str, sha: str) -> None:
        """Point the plugins ``names`` at another module and wait until each status carries it."""
        path = API.format(ns=self.ns, plural=plural)
        for name in names:
            module = {"url": url, "sha256": sha}
            self.request("PATCH", f"{path}/{name}", {"spec": module if plural == "wasmplugins" else {"wasm": module}})
        procs.wait_until(
            lambda: all(
                self.plane.kube.request("GET", f"{path}/{n}")[1].get("status", {}).get("digest") == f"sha256:{sha}"
                for n in names
            ),
            timeout=90,
            what=f"{', '.join(names)} on module {sha[:12]}",
        )

    def warnings(self, name: str, *, repeated: bool = False) -> list[str]:
        """Reasons of the Warning Events on ``name`` (``repeated``: only series counted more than once)."""
        _, events = self.plane.kube.request("GET", f"/api/v1/namespaces/{self.ns}/events")
        return [
            e["reason"]
            for e in events["items"]
            if e["type"] == "Warning"
            and e["involvedObject"]["name"] == name
            and (e.get("count", 1) > 1 or not repeated)
        ]


def pull_secret_with_consent(plane: Plane, at: Install, shop: Shop) -> None:
    """A plugin's imagePullSecret is read only once the namespace's owner grants that one Secret (a Role naming it,
    bound to the operator's ServiceAccount): before, Ready=False with the reason and the Secret's name."""
    url, sha = shop.module("m.wasm", MODULE)
    body = {"url": url, "sha256": sha, "selector": {"matchLabels": {"app": "cart"}}, "dataPlane": "agent"}
    shop.create("wasmplugins", "WasmPlugin", "pulled", {**body, "imagePullSecret": "registry-creds"})
    shop.wait("wasmplugins", "pulled", "PullSecretForbidden")
    assert "'registry-creds'" in shop.ready("wasmplugins", "pulled")["message"]
    base = f"{RBAC}/namespaces/{shop.ns}"
    role = {
        "metadata": {"name": "meshplug-pull-secret"},
        "rules": [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["registry-creds"], "verbs": ["get"]}],
    }
    shop.request("POST", f"{base}/roles", role)
    account = at.user.rpartition(":")[2]
    binding = {
        "metadata": {"name": "meshplug-pull-secret"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "meshplug-pull-secret"},
        "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": at.namespace}],
    }
    shop.request("POST", f"{base}/rolebindings", binding)
    procs.wait_until(
        lambda: can_i_as(plane, at, "get", "secrets/registry-creds", shop.ns), timeout=30, what="the grant in effect"
    )
    shop.wait("wasmplugins", "pulled", "Confirmed")
    shop.delete("wasmplugins", "pulled")
    shop.request("DELETE", f"{base}/rolebindings/meshplug-pull-secret")
    shop.request("DELETE", f"{base}/roles/meshplug-pull-secret")


def unused_and_unlisted(used: set[tuple[str, str, str]], release_ns: str) -> dict[str, set[tuple[str, str]]]:
    """Listed rules the operator never used, and requests no listed rule covers (both empty when the list is
    exactly what the code uses)."""
    by_scope, docs = rules_used(used, release_ns), documented()
    return {
        "unused": {(scope, *rule) for scope in docs for rule in docs[scope] - by_scope[scope]},
        "unlisted": {(scope, *rule) for scope in docs for rule in by_scope[scope] - docs[scope]},
    }


def rules_used(used: set[tuple[str, str, str]], release_ns: str) -> dict[str, set[tuple[str, str]]]:
    """The audit log's requests sorted into the list's scopes: cluster-scoped (no namespace), the operator's own
    namespace (resources listed as ``own``), the rest ``watched``."""
    own_resources = {r for r, _ in listed()["own"]}
    out: dict[str, set[tuple[str, str]]] = {scope: set() for scope in controller.SCOPES}
    for ns, resource, verb in used:
        if resource.startswith("selfsubject"):
            continue  # every account may (the start-up check; kubectl auth can-i)
        if not ns:
            scope = "watched" if (resource, verb) in listed()["watched"] else "cluster"
        elif ns == release_ns and resource in own_resources:
            scope = "own"
        else:
            scope = "watched"
        out[scope].add((resource, verb))
    return out


# --- the tests -------------------------------------------------------------------------------------------


def test_cluster_wide_install(plane: Plane, tmp_path: Path) -> None:
    at = plane.install("mp", "meshplug-system", tmp_path)
    docs = documented()
    everywhere = docs["watched"] | docs["cluster"]
    assert plane.granted(at, "shop-a") == everywhere
    # RBAC cannot leave a namespace out of a ClusterRoleBinding: the watched rules hold in kube-system too
    assert plane.granted(at, "kube-system") == everywhere
    assert plane.granted(at, at.namespace) == everywhere | docs["own"]
    assert plane.secrets(at, "shop-a") == WATCHED_SECRETS
    assert plane.secrets(at, "kube-system") == WATCHED_SECRETS
    assert plane.secrets(at, at.namespace) == own_secrets(at, watched=True)

    shop = Shop(plane, "shop-a", at.modules)
    op = at.start_operator(plane.kube)
    try:
        shop.setup(op)
        shop.every_plane()
        assert op.healthy()
        plane.none_refused(at)
        # its token cannot mint another account's token (kube-system: no agents there, the policy refuses even
        # its agent Secret's name), nor read the plugin namespace's other Secrets
        assert_no_token_minting(plane, at, ("shop-a", at.namespace))
        pull_secret_with_consent(plane, at, shop)

        # one rule fewer in the installed ClusterRole (secrets get): the next reconcile is refused, loudly
        path = f"{RBAC}/clusterroles/{at.fullname}-operator"
        _, role = plane.kube.request("GET", path)
        role["rules"] = [rule for rule in role["rules"] if rule["resources"] != ["secrets"]]
        assert plane.kube.request("PUT", path, role)[0] == 200
        url, sha = shop.module("m.wasm", MODULE)
        selector = {"matchLabels": {"app": "cart"}}
        shop.create(
            "wasmplugins",
            "WasmPlugin",
            "denied",
            {"url": url, "sha256": sha, "selector": selector, "dataPlane": "agent"},
        )
        shop.wait("wasmplugins", "denied", "Forbidden")
        assert 'cannot get resource "secrets"' in shop.ready("wasmplugins", "denied")["message"]
        assert "Forbidden" in shop.warnings("denied")
        procs.wait_until(lambda: not op.healthy(), timeout=30, what="/healthz to turn 503")
        assert op.metrics()["meshplug_operator_healthy"] == 0
        op.stop()

        # restarted: it names the missing permission; it finds its Event series again (get, then patch the
        # count) and fills its identity Secret, which someone emptied meanwhile (update)
        identity = f"/api/v1/namespaces/{at.namespace}/secrets/{at.fullname}-identity"
        _, secret = plane.kube.request("GET", identity)
        assert plane.kube.request("PUT", identity, {**secret, "data": {}})[0] == 200
        again = at.start_operator(plane.kube, name="restarted", wait_healthy=False)
        try:
            procs.wait_until(
                lambda: f"missing RBAC permission: get secrets {AGENT_SECRET} cluster-wide" in again.proc.log(),
                timeout=60,
                what="the start-up check to name the missing permission",
            )
            assert not again.healthy()
            procs.wait_until(lambda: shop.warnings("denied", repeated=True), timeout=60, what="the series counted")
            procs.wait_until(
                lambda: plane.kube.request("GET", identity)[1].get("data"), timeout=30, what="the identity refilled"
            )
            plane.all_used(at)
        finally:
            again.stop()
    finally:
        op.stop()
        print(op.proc.log()[-6000:])
        # its webhooks (failurePolicy Fail) would refuse every plugin once it is gone
        helm_mod.helm(
            ["uninstall", at.release, "-n", at.namespace], kubeconfig=plane.kube.kubeconfig, home=plane.work / "helm"
        )


def test_namespaced_install(plane: Plane, tmp_path: Path) -> None:
    at = plane.install("mpns", "meshplug-ns", tmp_path, watchNamespaces=list(WATCHED))
    docs = documented()
    for watched in WATCHED:
        assert plane.granted(at, watched) == docs["watched"] | docs["cluster"]
    # nothing in kube-system, nor in a namespace it does not watch: only cluster-scoped rules, if any
    assert plane.granted(at, "kube-system") == docs["cluster"]
    assert plane.granted(at, "shop-a") == docs["cluster"]
    assert plane.granted(at, at.namespace) == docs["own"] | docs["cluster"]
    for watched in WATCHED:
        assert plane.secrets(at, watched) == WATCHED_SECRETS
    assert plane.secrets(at, "kube-system") == {}
    assert plane.secrets(at, "shop-a") == {}
    assert plane.secrets(at, at.namespace) == own_secrets(at, watched=False)
    _, roles = plane.kube.request("GET", f"{RBAC}/clusterroles?labelSelector=app.kubernetes.io/instance={at.release}")
    expected = [f"{at.fullname}-operator-cluster"] if docs["cluster"] else []
    assert [r["metadata"]["name"] for r in roles["items"]] == expected

    shop = Shop(plane, WATCHED[0], at.modules)
    op = at.start_operator(plane.kube)
    try:
        shop.setup(op)
        assert f"--namespace={WATCHED[0]}" in op.proc.argv and f"--namespace={WATCHED[1]}" in op.proc.argv
        # outside the watched namespaces neither the webhooks nor the operator act
        elsewhere = Shop(plane, "shop-a", at.modules)
        assert elsewhere.injected("web-1") == ["app"]
        url, sha = elsewhere.module("m.wasm", MODULE)
        elsewhere.create("wasmplugins", "WasmPlugin", "elsewhere", {"url": url, "sha256": sha, "dataPlane": "agent"})
        shop.every_plane()
        assert op.healthy()
        assert {ns for ns, _, _ in plane.none_refused(at)} <= {at.namespace, *WATCHED, ""}
        _, untouched = plane.kube.request("GET", f"{API.format(ns='shop-a', plural='wasmplugins')}/elsewhere")
        assert "status" not in untouched and not untouched["metadata"].get("finalizers")
        assert_no_token_minting(plane, at, (WATCHED[0], "shop-a", at.namespace))
    finally:
        op.stop()
        print(op.proc.log()[-6000:])

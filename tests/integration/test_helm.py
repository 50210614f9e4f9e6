"""`helm install` of charts/meshplug into a real kube-apiserver (a control plane of its own): CRD, least-privilege
RBAC, Services, the operator Deployment with secure defaults, webhook configurations without caBundle by default
(the operator sets its own CA) or, with tls.mode=helm, whose caBundle signs the serving certificate (upgrades keep
it); uninstall keeps the CRD; a values typo fails the install; `helm template` renders the same bytes every time."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from meshplug import controller
from tests.testbed import helm as helm_mod
from tests.testbed import kube as kube_mod

NS = "meshplug-system"
CRD = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/wasmplugins.meshplug.io"
RBAC = "/apis/rbac.authorization.k8s.io/v1"
ADMISSION = "/apis/admissionregistration.k8s.io/v1"


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory, logs_dir: Path) -> Iterator[kube_mod.Kube]:
    with kube_mod.control_plane(tmp_path_factory.mktemp("helm-kube"), logs_dir / "helm") as kube:
        yield kube


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("helm-home")


def _get(kube: kube_mod.Kube, path: str) -> dict[str, Any]:
    status, body = kube.request("GET", path)
    assert status == 200, f"GET {path}: {status} {body}"
    return dict(body)


def _rules(role: dict[str, Any], scope: str) -> set[tuple[str, str, str, tuple[str, ...]]]:
    return {
        (scope, group, resource, tuple(sorted(rule["verbs"])))
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }


def test_install_upgrade_uninstall(plane: kube_mod.Kube, home: Path) -> None:  # noqa: PLR0915 - install, upgrade and uninstall: one story, read top to bottom
    out = helm_mod.helm(
        ["install", "mp", str(helm_mod.CHART), "--namespace", NS, "--create-namespace"],
        kubeconfig=plane.kubeconfig,
        home=home,
    )
    assert "STATUS: deployed" in out.stdout

    crd = _get(plane, CRD)
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    conds = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conds.get("Established") == "True"
    source = yaml.safe_load((helm_mod.procs.REPO_ROOT / "crds" / "wasmplugins.meshplug.io.yaml").read_text())
    assert crd["spec"]["versions"][0]["schema"] == source["spec"]["versions"][0]["schema"]

    # RBAC: exactly the operator's listed rules (cluster-wide install: the watched ones in a ClusterRole)
    installed = _rules(_get(plane, f"{RBAC}/clusterroles/mp-meshplug-operator"), "watched")
    installed |= _rules(_get(plane, f"{RBAC}/namespaces/{NS}/roles/mp-meshplug-operator-own"), "own")
    if any(r.scope == "cluster" for r in controller.rbac_rules()):
        installed |= _rules(_get(plane, f"{RBAC}/clusterroles/mp-meshplug-operator-cluster"), "cluster")
    listed = {(r.scope, r.api_group, r.resource, tuple(sorted(r.verbs))) for r in controller.rbac_rules()}
    assert installed == listed
    binding = _get(plane, f"{RBAC}/clusterrolebindings/mp-meshplug-operator")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "mp-meshplug-operator", "namespace": NS}]
    _get(plane, f"/api/v1/namespaces/{NS}/serviceaccounts/mp-meshplug-operator")

    # the operator Deployment: `meshplug operator`, secure defaults, ports named as the Services target them
    deploy = _get(plane, f"/apis/apps/v1/namespaces/{NS}/deployments/mp-meshplug-operator")
    pod = deploy["spec"]["template"]["spec"]
    (ctr,) = pod["containers"]
    assert ctr["args"][0] == "operator" and ctr["image"] == "ghcr.io/meshplug/meshplug:0.1.0"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = ctr["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    ports = {p["name"] for p in ctr["ports"]}
    for svc, target in (("mp-meshplug-modules", "modules"), ("mp-meshplug-webhook", "webhook")):
        service = _get(plane, f"/api/v1/namespaces/{NS}/services/{svc}")
        assert service["spec"]["ports"][0]["targetPort"] == target and target in ports

    # webhooks, default TLS (the operator's own CA): no Secret and no caBundle from the chart (the operator sets it)
    assert plane.request("GET", f"/api/v1/namespaces/{NS}/secrets/mp-meshplug-webhook-tls")[0] == 404
    for kind, name in (("mutating", "inject"), ("validating", "validate")):
        config = _get(plane, f"{ADMISSION}/{kind}webhookconfigurations/mp-meshplug-{name}")
        assert all("caBundle" not in hook["clientConfig"] for hook in config["webhooks"])
    assert "webhook-tls" not in {v["name"] for v in pod["volumes"]}

    # tls.mode=helm: both configurations trust the CA in the Secret, which signed the serving certificate
    helm_tls = ["--set", "webhook.tls.mode=helm"]
    helm_mod.helm(["upgrade", "mp", str(helm_mod.CHART), "-n", NS, *helm_tls], kubeconfig=plane.kubeconfig, home=home)
    secret = _get(plane, f"/api/v1/namespaces/{NS}/secrets/mp-meshplug-webhook-tls")
    ca_b64 = secret["data"]["ca.crt"]
    ca = x509.load_pem_x509_certificate(base64.b64decode(ca_b64))
    cert = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    cert.verify_directly_issued_by(ca)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert f"mp-meshplug-webhook.{NS}.svc" in sans
    mutating = _get(plane, f"{ADMISSION}/mutatingwebhookconfigurations/mp-meshplug-inject")
    validating = _get(plane, f"{ADMISSION}/validatingwebhookconfigurations/mp-meshplug-validate")
    hooks = [(h, "NoneOnDryRun") for h in mutating["webhooks"]] + [(h, "None") for h in validating["webhooks"]]
    paths = [h["clientConfig"]["service"]["path"] for h, _ in hooks]
    assert paths == ["/inject-agent", "/inject-agent-namespace", "/validate-wasmplugin", "/validate-trafficextension"]
    for hook, side_effects in hooks:
        assert hook["clientConfig"]["caBundle"] == ca_b64
        assert hook["clientConfig"]["service"]["name"] == "mp-meshplug-webhook"
        assert (hook["clientConfig"]["service"]["namespace"], hook["clientConfig"]["service"]["port"]) == (NS, 443)
        # injection makes the namespace's agent Secret before admitting a pod (never on a dry run)
        assert hook["sideEffects"] == side_effects and hook["failurePolicy"] == "Fail"
    by_pod, by_namespace = mutating["webhooks"]
    assert by_pod["objectSelector"]["matchExpressions"][0]["key"] == "meshplug.io/inject"
    assert by_namespace["namespaceSelector"]["matchExpressions"][1]["key"] == "meshplug.io/inject"
    for hook in (by_pod, by_namespace):
        excluded = hook["namespaceSelector"]["matchExpressions"][0]["values"]
        assert NS in excluded and "kube-system" in excluded

    # an upgrade keeps the generated certificate (lookup of the existing Secret)
    helm_mod.helm(["upgrade", "mp", str(helm_mod.CHART), "-n", NS, *helm_tls], kubeconfig=plane.kubeconfig, home=home)
    again = _get(plane, f"/api/v1/namespaces/{NS}/secrets/mp-meshplug-webhook-tls")
    assert again["data"] == secret["data"]

    # uninstall removes everything but the CRD (crds.keep)
    helm_mod.helm(["uninstall", "mp", "--namespace", NS], kubeconfig=plane.kubeconfig, home=home)
    assert plane.request("GET", CRD)[0] == 200
    for path in (
        f"{RBAC}/clusterroles/mp-meshplug-operator",
        f"{ADMISSION}/mutatingwebhookconfigurations/mp-meshplug-inject",
        f"/apis/apps/v1/namespaces/{NS}/deployments/mp-meshplug-operator",
    ):
        assert plane.request("GET", path)[0] == 404, path


@pytest.mark.parametrize(
    ("case", "args", "message"),
    [
        ("top-level typo", ["--set", "operater.replicas=2"], "operater"),
        ("nested typo", ["--set", "crds.enable=false"], "enable"),
        ("security context typo", ["--set", "securityContext.runAsNonroot=true"], "runAsNonroot"),
        ("unknown enum", ["--set", "webhook.tls.mode=selfSigned"], "mode"),
        ("wrong type", ["--set-string", "operator.replicas=two"], "replicas"),
    ],
)
def test_values_typo_fails_the_install(
    plane: kube_mod.Kube, home: Path, case: str, args: list[str], message: str
) -> None:
    release = "typo"
    out = helm_mod.helm(
        ["install", release, str(helm_mod.CHART), "--namespace", "typo", "--create-namespace", *args],
        kubeconfig=plane.kubeconfig,
        home=home,
        check=False,
    )
    assert out.returncode != 0, case
    assert "values don't meet the specifications of the schema" in out.stderr, out.stderr
    assert message in out.stderr, out.stderr
    listed = helm_mod.helm(["list", "--all", "--namespace", "typo", "-q"], kubeconfig=plane.kubeconfig, home=home)
    assert release not in listed.stdout.split()
    assert plane.request("GET", f"{RBAC}/clusterroles/typo-meshplug-operator")[0] == 404


@pytest.mark.parametrize(
    ("case", "args", "kinds_absent", "kinds_present"),
    [
        ("no CRDs", ["--set", "crds.enabled=false"], {"CustomResourceDefinition"}, {"Deployment"}),
        (
            "no webhooks",
            ["--set", "webhook.enabled=false"],
            {"MutatingWebhookConfiguration", "ValidatingWebhookConfiguration", "Secret"},
            {"CustomResourceDefinition", "ClusterRole"},
        ),
        (
            "validation only",
            ["--set", "injection.enabled=false", "--set", "istio.moduleMounts.enabled=false"],
            {"MutatingWebhookConfiguration"},
            {"ValidatingWebhookConfiguration"},
        ),
        ("cert-manager", ["--set", "webhook.tls.mode=certManager"], {"Secret"}, {"Certificate", "Issuer"}),
        ("the operator's CA (default)", [], {"Secret", "Certificate", "Issuer"}, {"ValidatingWebhookConfiguration"}),
    ],
)
def test_switches(home: Path, case: str, args: list[str], kinds_absent: set[str], kinds_present: set[str]) -> None:
    out = helm_mod.helm(["template", "mp", str(helm_mod.CHART), "--namespace", NS, *args], kubeconfig=None, home=home)
    kinds = {d["kind"] for d in yaml.safe_load_all(out.stdout) if d}
    assert not kinds & kinds_absent, case
    assert kinds_present <= kinds, case


def test_webhook_url_needs_tls_valid_for_it(home: Path) -> None:
    url = ["--set", "webhook.url=https://127.0.0.1:9443"]
    for mode in ("helm", "certManager"):
        out = helm_mod.helm(
            ["template", "mp", str(helm_mod.CHART), *url, "--set", f"webhook.tls.mode={mode}"],
            kubeconfig=None,
            home=home,
            check=False,
        )
        assert out.returncode != 0 and "webhook.tls.mode=operator or provided" in out.stderr, mode
    # the operator's CA issues for the url's host
    out = helm_mod.helm(["template", "mp", str(helm_mod.CHART), *url], kubeconfig=None, home=home)
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "mp-meshplug-webhook"]
    assert yaml.safe_load(cm["data"]["webhook.yaml"])["tls"]["issue"] == {"dnsNames": [], "ipAddresses": ["127.0.0.1"]}


@pytest.mark.parametrize(
    ("case", "args"),
    [
        ("defaults", []),
        ("namespaced", ["--set", "watchNamespaces={shop-a,shop-b}"]),
        ("webhook url", ["--set", "webhook.url=https://hooks.example.com:9443"]),
        ("cert-manager", ["--set", "webhook.tls.mode=certManager"]),
        ("provided", ["--set", "webhook.tls.mode=provided", "--set", "webhook.tls.caBundle=QUJD"]),
    ],
)
def test_template_renders_the_same_bytes_every_time(home: Path, case: str, args: list[str]) -> None:
    """What a GitOps tool renders from the same values never changes (no CA made per render): no sync drift."""
    render = ["template", "mp", str(helm_mod.CHART), "--namespace", NS, *args]
    first, second = (helm_mod.helm(render, kubeconfig=None, home=home).stdout for _ in range(2))
    assert first == second, case


def test_helm_tls_mode_renders_a_new_ca_every_time(home: Path) -> None:
    """Why tls.mode=helm is no longer the default: each render makes another CA (the check above can fail)."""
    render = ["template", "mp", str(helm_mod.CHART), "--set", "webhook.tls.mode=helm"]
    first, second = (helm_mod.helm(render, kubeconfig=None, home=home).stdout for _ in range(2))
    assert first != second


def test_metrics_service_and_service_monitor(home: Path) -> None:
    def render(*args: str) -> list[dict[str, Any]]:
        out = helm_mod.helm(
            ["template", "mp", str(helm_mod.CHART), "--namespace", NS, *args], kubeconfig=None, home=home
        )
        return [d for d in yaml.safe_load_all(out.stdout) if d]

    docs = render()
    (service,) = [d for d in docs if d["kind"] == "Service" and d["metadata"]["name"].endswith("-metrics")]
    (port,) = service["spec"]["ports"]
    assert port["name"] == "http-metrics" and port["targetPort"] == "metrics" and port["port"] == 9090
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    container_ports = {p["name"] for c in deployment["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
    assert "metrics" in container_ports
    assert not [d for d in docs if d["kind"] == "ServiceMonitor"]

    docs = render("--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.serviceMonitor.labels.release=prom")
    (monitor,) = [d for d in docs if d["kind"] == "ServiceMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1" and monitor["metadata"]["labels"]["release"] == "prom"
    selected = monitor["spec"]["selector"]["matchLabels"]
    service = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"].endswith("-metrics"))
    assert selected.items() <= service["metadata"]["labels"].items()
    others = [d for d in docs if d["kind"] == "Service" and d is not service]
    assert all(not selected.items() <= (d["metadata"].get("labels") or {}).items() for d in others)
    assert monitor["spec"]["endpoints"] == [
        {"port": "http-metrics", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s"}
    ]

    out = helm_mod.helm(
        [
            "template",
            "mp",
            str(helm_mod.CHART),
            "--set",
            "metrics.service.enabled=false",
            "--set",
            "metrics.serviceMonitor.enabled=true",
        ],
        kubeconfig=None,
        home=home,
        check=False,
    )
    assert out.returncode != 0 and "needs metrics.service.enabled" in out.stderr

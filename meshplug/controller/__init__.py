"""The operator: kopf handlers, the only Kubernetes API writer, status and events.

The only package that imports kopf. Drives spec -> fetch -> validate -> render -> apply.

RBAC: the operator needs exactly these rules, no more. This block is their single source: `rbac_rules()` parses
it, scripts/render-manifests.sh copies it into the chart (charts/meshplug/files/rbac.yaml, rendered by
templates/rbac.yaml), the operator checks each at start (SelfSubjectAccessReviews) and the README's "Permissions"
table lists them; tests/integration/test_operator_rbac.py compares `kubectl auth can-i --list` of the chart-installed
ServiceAccount with that table and the requests the operator made (the API server's audit log) with these rules.
Each line is ``<scope> <apiGroup or "core"> <resource> <verb,verb,...> [names=<set>]``. Scopes:

- ``watched``: namespaced rules needed in every namespace the operator watches. Cluster-wide (no ``--namespace``):
  a ClusterRole bound by a ClusterRoleBinding, so they hold in every namespace, kube-system included (RBAC has no
  exceptions). With ``--namespace`` (the chart's ``watchNamespaces``): a Role + RoleBinding in each of those
  namespaces and nothing anywhere else.
- ``cluster``: cluster-scoped resources only (a ClusterRole in either install).
- ``own``: a Role in the operator's own namespace.

``names=<set>`` restricts a rule to named objects (RBAC resourceNames): ``ca-bundle``, the webhook configurations
whose caBundle the operator keeps (`meshplug.controller.webhook_tls`; ``webhook.tls.mode=operator``, the chart's
default; no rule at all in the other TLS modes); ``agent-secret``, the agent Secret (``--agent-secret``, the chart's
``agent.secretName``); ``identity-secret``, the identity Secret (``--identity-secret``, ``<fullname>-identity``).

    watched  meshplug.io          wasmplugins         list,watch,patch
    watched  meshplug.io          wasmplugins/status  patch
    watched  meshplug.io          trafficextensions         list,watch,patch
    watched  meshplug.io          trafficextensions/status  patch
    watched  core                 pods                list,watch
    watched  core                 configmaps          list,watch,create,patch,delete
    watched  core                 secrets             create
    watched  core                 secrets             get,update  names=agent-secret
    watched  core                 events              create,get,patch
    watched  networking.istio.io  envoyfilters        list,watch,create,patch,delete
    watched  extensions.istio.io  trafficextensions   list,watch,create,patch,delete
    watched  extensions.istio.io  wasmplugins         list,watch,create,patch,delete
    cluster  authentication.k8s.io  tokenreviews      create
    cluster  admissionregistration.k8s.io  mutatingwebhookconfigurations    get,patch  names=ca-bundle
    cluster  admissionregistration.k8s.io  validatingwebhookconfigurations  get,patch  names=ca-bundle
    own      coordination.k8s.io  leases              get,create,update
    own      core                 secrets             create
    own      core                 secrets             get,update  names=identity-secret
    own      apps                 deployments         get

Why: wasmplugins and trafficextensions (kopf lists and watches them and patches its finalizer; a reconcile starts
from the newest version the watch or its own status write brought: it reads none), their status (conditions, digest,
pod counts); pods (the selection, agents' addresses, re-reconcile on pods appearing or going); configmaps (modules
of the istio plane's ConfigMap route, copied into the namespaces a root-namespace plugin reaches; the module-mount
webhook lists them; the operator lists and watches those it rendered, a cache its reconciles read; ``create``
because a server-side apply that creates an object is authorized as a create); secrets (the agent Secret of each
namespace with agents, which the operator creates and then reads and updates by name only:
`meshplug.controller.identity`; no ``get`` of any other Secret, so no ``imagePullSecret`` is read unless the
namespace's owner grants it (a Role naming that Secret, bound to the operator's ServiceAccount: README
"imagePullSecret"); ``create`` cannot be restricted by name in RBAC: the chart's ValidatingAdmissionPolicy
``<fullname>-operator-secrets`` lets the operator create only Opaque Secrets of its own names, and no agent Secret
in a namespace the injection webhook skips, kube-system included); events (Warning/Normal Events on plugins, one
series per reason: read and patched on repeats); envoyfilters (the istio plane's ConfigMap route); trafficextensions
and wasmplugins of extensions.istio.io (the istio plane's native route: Istio's own resource, owned by the meshplug
one; listed and watched, every one in the watched namespaces, into a cache the reconciles read, so one meshplug does
not own is never overwritten; discovery of which kind the cluster serves needs no rule); no workload (Deployment,
StatefulSet, DaemonSet) is read or written in watched namespaces: modules reach pods at admission; tokenreviews
(the module server checks the agents' ServiceAccount tokens); its own webhook configurations (their caBundle: the
CA of the webhooks' serving certificate); in its own namespace: leases (one active replica: the
``meshplug-operator`` Lease), secrets and its Deployment (the identity Secret, created once, then read and updated
by name; owned by the operator's Deployment).
"""

from __future__ import annotations

from dataclasses import dataclass

SCOPES = ("watched", "cluster", "own")
#: named sets a rule may be restricted to (``names=<set>``): the webhook configurations whose caBundle it keeps, its
#: agent Secret and its identity Secret
NAME_SETS = ("ca-bundle", "agent-secret", "identity-secret")


@dataclass(frozen=True)
class Rule:
    """One RBAC rule the operator needs; ``scope`` is one of `SCOPES` (see this module's docstring); ``names``, when
    set, one of `NAME_SETS`: the rule holds for those objects only."""

    scope: str
    api_group: str  # "" for the core group
    resource: str
    verbs: tuple[str, ...]
    names: str = ""


def rbac_rules() -> tuple[Rule, ...]:
    """The rules listed in this module's docstring (the single source of the operator's RBAC)."""
    out: list[Rule] = []
    for line in (__doc__ or "").splitlines():
        parts = line.split()
        if len(parts) not in (4, 5) or parts[0] not in SCOPES or not parts[3].replace(",", "").isalpha():
            continue
        names = parts[4].removeprefix("names=") if len(parts) == 5 else ""
        if len(parts) == 5 and (not parts[4].startswith("names=") or names not in NAME_SETS):
            raise ValueError(f"RBAC rule {line.strip()!r}: the fifth column must be names=<one of {NAME_SETS}>")
        group = "" if parts[1] == "core" else parts[1]
        out.append(Rule(parts[0], group, parts[2], tuple(parts[3].split(",")), names))
    return tuple(out)

"""The operator: kopf handlers, the only Kubernetes API writer, status and events.

The only package that imports kopf. Drives spec -> fetch -> validate -> render -> apply.

RBAC: the operator needs exactly these rules, no more (the chart's RBAC copies them; `rbac_rules()` parses this
block and tests/integration/test_operator_rbac.py runs the operator under a ServiceAccount holding exactly them).
Each line is ``<scope> <apiGroup or "core"> <resource> <verb,verb,...>``; scope ``cluster`` rules go in the
operator's ClusterRole (or, for a namespace-scoped install, a Role in each watched namespace), scope ``own``
rules in a Role in the operator's own namespace.

    cluster  meshplug.io          wasmplugins         get,list,watch,patch,update
    cluster  meshplug.io          wasmplugins/status  get,patch,update
    cluster  meshplug.io          trafficextensions         get,list,watch,patch,update
    cluster  meshplug.io          trafficextensions/status  get,patch,update
    cluster  core                 pods                get,list,watch
    cluster  core                 configmaps          get,list,create,patch,delete
    cluster  core                 secrets             get,create,update
    cluster  core                 events              create,get,patch
    cluster  apps                 deployments         get,list,watch,patch
    cluster  apps                 statefulsets        get,list,watch,patch
    cluster  apps                 daemonsets          get,list,watch,patch
    cluster  networking.istio.io  envoyfilters        get,list,create,patch,delete
    cluster  authentication.k8s.io  tokenreviews      create
    own      coordination.k8s.io  leases              get,create,update
    own      core                 secrets             get,create,update
    own      apps                 deployments         get

Why: wasmplugins and trafficextensions (kopf watches them and patches finalizers/progress annotations), their
status (conditions);
pods (the selection, pod IPs of agents, re-reconcile on pods appearing or going); configmaps (modules for the
istio plane); secrets (imagePullSecret; the agent Secret of each namespace with agents, which the operator
creates and updates: `meshplug.controller.identity`); tokenreviews (the module server checks the agents'
ServiceAccount tokens); events (Warning/Normal Events on plugins); apps workloads (pod-template volume
annotations for the istio plane; watched for template label changes); envoyfilters (the istio plane); in its own
namespace: leases (one active replica: the ``meshplug-operator`` Lease), secrets and its Deployment (the identity
Secret, owned by the operator's Deployment; listed again for a namespace-scoped install).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rule:
    """One RBAC rule the operator needs; ``scope`` is ``cluster`` or ``own`` (the operator's namespace)."""

    scope: str
    api_group: str  # "" for the core group
    resource: str
    verbs: tuple[str, ...]


def rbac_rules() -> tuple[Rule, ...]:
    """The rules listed in this module's docstring (the single source of the operator's RBAC)."""
    out: list[Rule] = []
    for line in (__doc__ or "").splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0] in ("cluster", "own") and parts[3].replace(",", "").isalpha():
            group = "" if parts[1] == "core" else parts[1]
            out.append(Rule(parts[0], group, parts[2], tuple(parts[3].split(","))))
    return tuple(out)

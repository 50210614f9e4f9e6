"""charts/meshplug without Helm: values.schema.json closes every object, values.yaml satisfies it and typos fail
it, secure defaults, the CRD copy matches crds/, and the chart's RBAC rules equal the operator's listed rules."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from meshplug import controller

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "meshplug"
SCHEMA = json.loads((CHART / "values.schema.json").read_text())
VALUES: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())


def _objects(schema: Any, where: str = "$") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(schema, dict):
        if schema.get("type") == "object" or "properties" in schema:
            yield where, schema
        for key, sub in schema.get("properties", {}).items():
            yield from _objects(sub, f"{where}.{key}")
        for key in ("items", "additionalProperties"):
            if isinstance(schema.get(key), dict):
                yield from _objects(schema[key], f"{where}[{key}]")


def test_every_object_in_the_schema_is_closed() -> None:
    found = list(_objects(SCHEMA))
    assert len(found) > 20
    open_objects = [
        w for w, s in found if "additionalProperties" not in s and "Kubernetes API" not in s.get("description", "")
    ]
    assert open_objects == []
    # objects with named properties reject unknown keys; free-form maps say what their values are
    for where, s in found:
        if "properties" in s:
            assert s["additionalProperties"] is False, where


def test_values_yaml_satisfies_the_schema() -> None:
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    jsonschema.Draft7Validator(SCHEMA).validate(VALUES)


def _with(path: str, value: Any) -> dict[str, Any]:
    values = copy.deepcopy(VALUES)
    *parents, last = path.split(".")
    node = values
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return values


@pytest.mark.parametrize(
    ("case", "values"),
    [
        ("top-level typo", _with("operater", {"replicas": 2})),
        ("nested typo", _with("crds.enable", True)),
        ("security typo", _with("securityContext.runAsNonroot", True)),
        ("deep typo", _with("agent.resources.request", {"cpu": "1"})),
        ("unknown tls mode", _with("webhook.tls.mode", "selfSigned")),
        ("port out of range", _with("agent.listenPort", 70000)),
        ("wrong type", _with("operator.replicas", "two")),
        ("plain http webhook url", _with("webhook.url", "http://127.0.0.1:9443")),
        ("bad failure policy", _with("validation.failurePolicy", "Open")),
        ("signature key not PEM", _with("signatures.trustedKeys", ["cosign.pub"])),
        ("signature policy typo", _with("signatures.required", True)),
    ],
)
def test_values_typos_fail_the_schema(case: str, values: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(SCHEMA).validate(values)


def test_secure_defaults_are_values() -> None:
    pod, ctr = VALUES["podSecurityContext"], VALUES["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] > 0
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    assert ctr["runAsNonRoot"] is True and ctr["readOnlyRootFilesystem"] is True
    assert ctr["allowPrivilegeEscalation"] is False
    assert ctr["capabilities"] == {"drop": ["ALL"]}
    assert ctr["seccompProfile"] == {"type": "RuntimeDefault"}
    assert VALUES["crds"] == {"enabled": True, "keep": True}
    assert VALUES["injection"]["failurePolicy"] == "Fail" and VALUES["validation"]["failurePolicy"] == "Fail"
    # the SSRF guard refuses loopback in a cluster (only a local test bed turns it on)
    assert VALUES["ssrf"] == {"allowLoopback": False, "blockCIDRs": []}
    # a verificationKey is enforced always; the policy for plugins without one is opt-in
    assert VALUES["signatures"] == {"require": False, "trustedKeys": []}


def test_chart_crds_are_a_verbatim_copy_of_crds_dir() -> None:
    source = {p.name: p.read_bytes() for p in (REPO / "crds").glob("*.yaml")}
    copied = {p.name: p.read_bytes() for p in (CHART / "files" / "crds").glob("*.yaml")}
    assert source, "crds/ is empty"
    assert copied == source, "charts/meshplug/files/crds is stale: run scripts/render-manifests.sh"


def test_rbac_equals_the_operators_listed_rules() -> None:
    """files/rbac.yaml (what templates/rbac.yaml renders) is the operator's rule list, scope by scope."""
    copied = yaml.safe_load((CHART / "files" / "rbac.yaml").read_text())
    assert set(copied) == set(controller.SCOPES)
    chart: set[tuple[str, str, str, tuple[str, ...], str]] = set()
    for scope, rules in copied.items():
        for rule in rules:
            assert set(rule) <= {"apiGroups", "resources", "verbs", "names"}, rule
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    chart.add((scope, group, resource, tuple(sorted(rule["verbs"])), rule.get("names", "")))
    listed = {(r.scope, r.api_group, r.resource, tuple(sorted(r.verbs)), r.names) for r in controller.rbac_rules()}
    assert listed, "meshplug/controller/__init__.py lists no RBAC rules"
    assert chart == listed, "charts/meshplug/files/rbac.yaml is stale: run scripts/render-manifests.sh"

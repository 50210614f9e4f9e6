"""meshplug.injection: opt-in rules, the app port, the JSON patch and the pod it produces (port takeover, probes,
volumes, the agent's config accepted by the agent's own config parser)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pytest

from meshplug import errors, injection
from meshplug.agent import config as agent_config
from meshplug.commands import agent as agent_command

SETTINGS = injection.InjectionSettings(image="ghcr.io/meshplug/meshplug:0.1.0", module_server_url="https://mods:8443")


def pod(
    *,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    containers: list[dict[str, Any]] | None = None,
    volumes: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"generateName": "web-", "namespace": "shop"}
    if labels is not None:
        meta["labels"] = labels
    if annotations is not None:
        meta["annotations"] = annotations
    spec: dict[str, Any] = {
        "containers": containers
        if containers is not None
        else [{"name": "app", "image": "nginx", "ports": [{"name": "http", "containerPort": 8080}]}]
    }
    if volumes is not None:
        spec["volumes"] = volumes
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


ON = {injection.INJECT_KEY: "enabled"}


@pytest.mark.parametrize(
    ("case", "body", "wanted"),
    [
        ("label enabled", pod(labels=ON), True),
        ("label true", pod(labels={injection.INJECT_KEY: "true"}), True),
        ("annotation enabled", pod(annotations=ON), True),
        ("annotation disabled wins over label", pod(labels=ON, annotations={injection.INJECT_KEY: "disabled"}), False),
        ("no opt-in", pod(labels={"app": "web"}), False),
        ("other value", pod(labels={injection.INJECT_KEY: "yes-please"}), False),
        (
            "already injected",
            pod(labels=ON, containers=[{"name": "app"}, {"name": injection.CONTAINER_NAME}]),
            False,
        ),
    ],
)
def test_wants_injection(case: str, body: dict[str, Any], wanted: bool) -> None:
    assert injection.wants_injection(body) is wanted, case
    assert (injection.patch(body, SETTINGS) != ()) is wanted, case


@pytest.mark.parametrize(
    ("case", "containers", "annotation", "expected"),
    [
        ("first TCP port", [{"name": "a", "ports": [{"containerPort": 9000}]}], None, (0, 0, 9000, "")),
        (
            "UDP skipped",
            [{"name": "a", "ports": [{"containerPort": 53, "protocol": "UDP"}, {"containerPort": 80, "name": "web"}]}],
            None,
            (0, 1, 80, "web"),
        ),
        (
            "first container with ports",
            [{"name": "init-ish"}, {"name": "b", "ports": [{"containerPort": 81, "name": "http"}]}],
            None,
            (1, 0, 81, "http"),
        ),
        (
            "annotation by name",
            [
                {
                    "name": "a",
                    "ports": [{"containerPort": 80, "name": "web"}, {"containerPort": 9090, "name": "metrics"}],
                }
            ],
            "metrics",
            (0, 1, 9090, "metrics"),
        ),
        (
            "annotation by number",
            [
                {
                    "name": "a",
                    "ports": [{"containerPort": 80, "name": "web"}, {"containerPort": 9090, "name": "metrics"}],
                }
            ],
            "9090",
            (0, 1, 9090, "metrics"),
        ),
        ("annotation undeclared number", [{"name": "a"}], "7000", (0, -1, 7000, "")),
    ],
)
def test_find_app_port(
    case: str, containers: list[dict[str, Any]], annotation: str | None, expected: tuple[int, int, int, str]
) -> None:
    annotations = {injection.APP_PORT_ANNOTATION: annotation} if annotation else None
    app = injection.find_app_port(pod(labels=ON, annotations=annotations, containers=containers))
    assert (app.container, app.port, app.number, app.name) == expected, case


@pytest.mark.parametrize(
    ("case", "containers", "annotation"),
    [
        ("no ports", [{"name": "a"}], None),
        ("only UDP", [{"name": "a", "ports": [{"containerPort": 53, "protocol": "UDP"}]}], None),
        ("unknown port name", [{"name": "a", "ports": [{"containerPort": 80}]}], "grpc"),
        ("port out of range", [{"name": "a"}], "70000"),
    ],
)
def test_no_app_port_is_refused(case: str, containers: list[dict[str, Any]], annotation: str | None) -> None:
    annotations = {injection.APP_PORT_ANNOTATION: annotation} if annotation else None
    with pytest.raises(errors.ConfigError) as info:
        injection.patch(pod(labels=ON, annotations=annotations, containers=containers), SETTINGS)
    assert info.value.reason == "NoAppPort", case
    assert injection.APP_PORT_ANNOTATION in info.value.message, case


def _injected(body: dict[str, Any]) -> dict[str, Any]:
    return injection.apply_patch(body, injection.patch(body, SETTINGS))


def _agent(result: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in result["spec"]["containers"] if c["name"] == injection.CONTAINER_NAME)


def test_port_takeover_moves_the_name_and_rewrites_probes() -> None:
    app = {
        "name": "app",
        "image": "nginx",
        "ports": [{"name": "http", "containerPort": 8080}, {"name": "metrics", "containerPort": 9090}],
        "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}},
        "livenessProbe": {"tcpSocket": {"port": "http"}},
        "startupProbe": {"httpGet": {"path": "/m", "port": "metrics"}},
        "lifecycle": {"preStop": {"httpGet": {"path": "/stop", "port": "http"}}},
    }
    result = _injected(pod(labels=ON, containers=[app]))
    new_app = result["spec"]["containers"][0]
    assert new_app["ports"] == [{"containerPort": 8080}, {"name": "metrics", "containerPort": 9090}]
    assert new_app["readinessProbe"]["httpGet"]["port"] == 8080
    assert new_app["livenessProbe"]["tcpSocket"]["port"] == 8080
    assert new_app["lifecycle"]["preStop"]["httpGet"]["port"] == 8080
    assert new_app["startupProbe"]["httpGet"]["port"] == "metrics"  # not the moved port: untouched
    agent = _agent(result)
    assert agent["ports"][0] == {"name": "http", "containerPort": SETTINGS.listen_port, "protocol": "TCP"}


@pytest.mark.parametrize(
    ("case", "annotations", "volumes"),
    [
        ("no annotations, no volumes", None, None),
        ("existing annotations and volumes", {"team": "shop"}, [{"name": "data", "emptyDir": {}}]),
        ("empty annotations and volumes", {}, []),
    ],
)
def test_patch_adds_container_volumes_and_annotations(
    case: str, annotations: dict[str, str] | None, volumes: list[dict[str, Any]] | None
) -> None:
    body = pod(labels=ON, annotations=annotations, volumes=volumes)
    result = _injected(body)
    meta = result["metadata"]
    for key, value in (annotations or {}).items():
        assert meta["annotations"][key] == value, case
    assert meta["annotations"][injection.PUSH_PORT_ANNOTATION] == str(SETTINGS.push_port)
    assert meta["annotations"][injection.STATUS_ANNOTATION] == SETTINGS.image
    names = [v["name"] for v in result["spec"]["volumes"]]
    assert names == [v["name"] for v in volumes or []] + [injection.CONFIG_VOLUME, injection.STATE_VOLUME], case
    agent = _agent(result)
    assert agent["args"][:3] == ["agent", "--config", f"{injection.CONFIG_DIR}/{injection.CONFIG_FILE}"]
    assert agent["image"] == SETTINGS.image
    sc = agent["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "NET_ADMIN" not in json.dumps(result)
    assert body == pod(labels=ON, annotations=annotations, volumes=volumes), "the input is not modified"


def test_config_volume_projects_the_annotation_the_agent_secret_and_a_service_account_token() -> None:
    result = _injected(pod(labels=ON))
    volume = next(v for v in result["spec"]["volumes"] if v["name"] == injection.CONFIG_VOLUME)
    sources = volume["projected"]["sources"]
    field = sources[0]["downwardAPI"]["items"][0]
    assert field["path"] == injection.CONFIG_FILE
    assert field["fieldRef"]["fieldPath"] == f"metadata.annotations['{injection.CONFIG_ANNOTATION}']"
    assert sources[1] == {"secret": {"name": SETTINGS.secret_name}}
    token = {"path": "sa-token", "audience": SETTINGS.token_audience, "expirationSeconds": SETTINGS.token_expiration_s}
    assert sources[2] == {"serviceAccountToken": token}


@pytest.mark.parametrize(
    ("case", "settings", "app_port"),
    [
        ("with module server", SETTINGS, 8080),
        ("without module server", injection.InjectionSettings(image="img:1", listen_port=16000), 8080),
    ],
)
def test_agent_config_is_accepted_by_the_agent(
    case: str, settings: injection.InjectionSettings, app_port: int, tmp_path: Path
) -> None:
    body = pod(labels=ON)
    result = injection.apply_patch(body, injection.patch(body, settings))
    raw = json.loads(result["metadata"]["annotations"][injection.CONFIG_ANNOTATION])
    cfg = agent_config.parse(raw, base=tmp_path)
    assert [(lst.port, lst.cluster) for lst in cfg.listeners] == [(settings.listen_port, "app")], case
    assert cfg.cluster("app").address == "127.0.0.1" and cfg.cluster("app").port == app_port
    assert cfg.admin.address == "127.0.0.1", "the admin endpoint stays inside the pod"
    assert cfg.push is not None and cfg.push.port == settings.push_port
    assert cfg.push.token_file == Path(injection.CONFIG_DIR) / injection.PUSH_TOKEN_KEY
    assert cfg.push.tls is not None, "pushes to an injected agent are always mutual TLS"
    assert cfg.push.tls.cert_file == Path(injection.CONFIG_DIR) / "tls.crt"
    assert cfg.push.tls.client_ca_file == Path(injection.CONFIG_DIR) / "ca.crt"
    assert (cfg.modules.server is not None) is bool(settings.module_server_url), case
    assert cfg.modules.allow_loopback is False and cfg.modules.block_cidrs == (), "the SSRF guard's defaults"
    if cfg.modules.server is not None:  # the projected ServiceAccount token, the server checked against the CA
        assert cfg.modules.server.token_file == Path(injection.CONFIG_DIR) / "sa-token"
        assert cfg.modules.server.ca_file == Path(injection.CONFIG_DIR) / "ca.crt"


def test_injected_pod_has_valid_unique_port_names() -> None:
    containers = [
        {"name": "app", "ports": [{"name": "http", "containerPort": 8080}]},
        {"name": "side", "ports": [{"name": "admin", "containerPort": 9000}]},
    ]
    for body in (
        pod(labels=ON, containers=containers),
        pod(labels=ON, containers=[{"name": "a", "ports": [{"containerPort": 1}]}]),
    ):
        result = _injected(body)
        names = [p["name"] for c in result["spec"]["containers"] for p in c.get("ports", []) if "name" in p]
        assert len(names) == len(set(names))
        assert all(re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", n) and len(n) <= 15 for n in names), names


def test_resources_render_only_what_is_set() -> None:
    assert injection.Resources(cpu_request="", memory_request="", cpu_limit="", memory_limit="").as_k8s() == {}
    assert injection.Resources().as_k8s() == {
        "requests": {"cpu": "50m", "memory": "64Mi"},
        "limits": {"memory": "256Mi"},
    }


@pytest.mark.parametrize(
    ("case", "op"),
    [
        ("missing parent", {"op": "add", "path": "/spec/nothing/here", "value": 1}),
        ("replace missing key", {"op": "replace", "path": "/metadata/absent", "value": 1}),
        ("index out of range", {"op": "remove", "path": "/spec/containers/5"}),
        ("non-numeric index", {"op": "add", "path": "/spec/containers/x", "value": {}}),
    ],
)
def test_apply_patch_refuses_bad_locations(case: str, op: dict[str, Any]) -> None:
    with pytest.raises(errors.ConfigError):
        injection.apply_patch(pod(labels=ON), (op,))


def test_json_pointer_escapes_annotation_keys() -> None:
    ops = injection.patch(pod(labels=ON), SETTINGS)
    paths = [op["path"] for op in ops]
    assert "/metadata/annotations/meshplug.io~1agent-config" in paths


KEYS = Path(injection.CONFIG_DIR) / injection.TRUSTED_KEYS_KEY


@pytest.mark.parametrize(
    ("case", "trusted", "required", "wanted"),
    [
        ("no operator identity: the agent trusts the push's key", False, False, None),
        ("the operator's keys (or its 'none'): read from the agent Secret", True, False, KEYS),
        ("signatures required too", True, True, KEYS),
    ],
)
def test_agent_args_name_the_trusted_keys_and_whether_signatures_are_required(
    case: str, trusted: bool, required: bool, wanted: Path | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(agent_command.TRUSTED_KEYS_ENV, raising=False)
    monkeypatch.delenv(agent_command.REQUIRE_SIGNATURES_ENV, raising=False)
    settings = dataclasses.replace(SETTINGS, trusted_keys=trusted, require_signatures=required)
    body = pod(labels=ON)
    container = _agent(injection.apply_patch(body, injection.patch(body, settings)))
    parser = argparse.ArgumentParser()
    agent_command.add_arguments(parser)
    args = parser.parse_args(container["args"][1:])  # as `meshplug agent` parses them
    assert (args.trusted_keys, args.require_signatures) == (wanted, required), case

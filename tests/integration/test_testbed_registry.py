"""The registry test bed: every variant starts, refuses anonymous pushes where it has auth, and holds pushes."""

from __future__ import annotations

import hashlib

import pytest
import requests

from tests.testbed.fixtures_registry import REGISTRY_VARIANTS
from tests.testbed.origin import wasm_module
from tests.testbed.registry import DOCKER_MANIFEST, LAYOUTS, OCI_MANIFEST, Registry

ACCEPT = f"{OCI_MANIFEST}, {DOCKER_MANIFEST}"


@pytest.mark.parametrize("variant", REGISTRY_VARIANTS)
def test_registry_variant_serves_the_api(registries: dict[str, Registry], variant: str) -> None:
    registry = registries[variant]
    anonymous = requests.get(
        f"{registry.scheme}://{registry.host}/v2/", verify=str(registry.ca_file or True), timeout=10
    )
    assert anonymous.status_code == (401 if registry.username else 200)
    if registry.username:
        scheme = anonymous.headers["WWW-Authenticate"].split(" ")[0]
        assert scheme == ("Bearer" if variant == "token" else "Basic")
    assert registry.api("GET", "/v2/").status_code == 200


@pytest.mark.parametrize("layout", LAYOUTS)
def test_pushed_layout_is_served_back(registries: dict[str, Registry], layout: str) -> None:
    registry = registries["token"]
    digest = registry.push_layout(layout, "testbed/layouts", layout, wasm_module(7))
    head = registry.api("HEAD", f"/v2/testbed/layouts/manifests/{layout}", headers={"Accept": ACCEPT})
    assert head.headers["Docker-Content-Digest"] == digest
    body = registry.api("GET", f"/v2/testbed/layouts/manifests/{digest}", headers={"Accept": ACCEPT}).content
    assert "sha256:" + hashlib.sha256(body).hexdigest() == digest

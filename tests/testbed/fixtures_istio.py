"""Pytest fixtures for the real Istio test bed (helpers: tests/testbed/istio.py). Auto-loaded by tests/conftest.py.

- `istio_mesh` (session): its own kube-apiserver with Istio's and the Gateway API's CRDs, a host bridge, istiod;
  one per test session, shared by every istio-plane test (pods are started by the tests that need them, through
  `Mesh.sidecar()` / `Mesh.gateway()`, and stopped by them or at the end of the session).
- `mesh_operator` (session): meshplug's operator on that mesh, its webhook registered, the test CA trusted for
  module sources (tests/testbed/mesh_operator.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.testbed import istio
from tests.testbed import mesh_operator as mesh_operator_mod

if TYPE_CHECKING:  # a fixture module imported before pytest registers it cannot be rewritten: the type only
    from tests.testbed.fixtures_origin import TestCA


@pytest.fixture(scope="session")
def istio_mesh(tmp_path_factory: pytest.TempPathFactory, logs_dir: Path) -> Iterator[istio.Mesh]:
    with istio.mesh(tmp_path_factory.mktemp("istio"), logs_dir / "istio") as mesh:
        yield mesh


@pytest.fixture(scope="session")
def mesh_operator(
    istio_mesh: istio.Mesh, tmp_path_factory: pytest.TempPathFactory, test_ca: TestCA
) -> Iterator[mesh_operator_mod.MeshOperator]:
    work = tmp_path_factory.mktemp("mesh-operator")
    with mesh_operator_mod.running(istio_mesh, work, trusted_ca=test_ca.ca_file) as op:
        try:
            yield op
        finally:
            print(op.log()[-6000:])

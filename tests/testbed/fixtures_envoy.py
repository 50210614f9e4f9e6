"""Pytest fixtures for Envoy and the upstream services (helpers: tests/testbed/envoy.py, upstream.py).

`upstream_service(kind)` starts an echo/auth/counter/tcp_echo service; `envoy_runner(config)` validates and
starts Envoy on a bootstrap dict; `envoy_plane` is the corpus runner's Envoy data plane. Everything started
through these fixtures is stopped by pid at teardown. Auto-loaded by tests/conftest.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.corpus.planes.envoy import EnvoyPlane
from tests.testbed import envoy, procs, upstream


@pytest.fixture
def upstream_service(tmp_path: Path) -> Iterator[Callable[[str], upstream.Service]]:
    started: list[upstream.Service] = []

    def start(kind: str) -> upstream.Service:
        svc = upstream.start_service(kind, log_dir=tmp_path / "logs")
        started.append(svc)
        return svc

    yield start
    for svc in started:
        svc.stop()


@pytest.fixture
def envoy_runner(tmp_path: Path) -> Iterator[Callable[[Mapping[str, Any]], envoy.Envoy]]:
    """Validate and start Envoy on a bootstrap; the admin port must be free (use procs.free_port())."""
    started: list[envoy.Envoy] = []

    def start(config: Mapping[str, Any]) -> envoy.Envoy:
        n = len(started)
        path = envoy.write_config(config, tmp_path / f"envoy-{n}")
        envoy.validate_config(path)
        admin_port = int(config["admin"]["address"]["socket_address"]["port_value"])
        proxy = envoy.start_envoy(path, admin_port=admin_port, log_dir=tmp_path / "logs", name=f"envoy-{n}")
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


@pytest.fixture(scope="session")
def envoy_plane() -> EnvoyPlane:
    envoy.envoy_binary()  # fail early and clearly when the dev extras are missing
    return EnvoyPlane()


@pytest.fixture
def free_ports() -> Callable[[int], list[int]]:
    return lambda n: [procs.free_port() for _ in range(n)]

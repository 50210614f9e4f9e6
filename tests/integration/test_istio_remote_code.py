"""Remote code on the istio plane's ConfigMap route (a module over the ConfigMap limit: the EnvoyFilter names it by
``code.remote`` and Envoy fetches it from meshplug's module server) on the real istiod + istio-agent + Envoy.

Envoy fetches remote code once per Wasm filter config it builds (each listener, each filter chain), unless its code
cache (by sha256) has the module already; a fetch that gives up after its retries leaves that filter without a VM
(503 to every request, fail closed) until its listener is built again, however many other fetches of the module
succeed later. The status must say so from Envoy's own account (its ``wasm.remote_load_fetch_failures`` and
``listener_manager.total_listeners_warming``, read from istio-agent's ``/stats/prometheus`` as Prometheus does), not
from the module server having served the module once, and the operator delivers the module again (a new url:
Envoy builds those listeners again and takes the module from its code cache)."""

from __future__ import annotations

import contextlib
import http.client
import json
from collections.abc import Iterator
from typing import Any

import pytest

from meshplug import limits
from tests.corpus import modules as corpus
from tests.integration.test_istio_configmap import GO_HEADERS, REMOTE_FETCH, listeners_carrying, stop
from tests.testbed import istio, istiopod
from tests.testbed.mesh_operator import MeshOperator

SECOND_PORT = 9081  # a second inbound listener of the pod (its Sidecar's second ingress port)
#: Envoy's log line for each remote fetch given up after its retries
GAVE_UP = "Retry limit exceeded for fetching data from remote data source"


@pytest.fixture(scope="module")
def ns(istio_mesh: istio.Mesh) -> Iterator[str]:
    name = istio_mesh.namespace("remote-shop")
    yield name
    for pod in [p for p in istio_mesh.pods if p.namespace == name]:
        pod.stop()
        istio_mesh.pods.remove(pod)


def envoy_stats(pod: istiopod.Pod) -> dict[str, int]:
    """Envoy's remote code and listener counters, from its own admin endpoint (the test's view)."""
    out = {}
    for wanted in ("remote_load", "total_listeners_warming"):
        for line in pod.admin(f"/stats?filter={wanted}").splitlines():
            name, _, value = line.partition(": ")
            if value.strip().isdigit():
                out[name.strip()] = int(value)
    return out


def on_port(pod: istiopod.Pod, port: int) -> tuple[int, str | None]:
    """(status, x-race) of a GET to the pod's inbound listener on ``port``."""
    conn = http.client.HTTPConnection(pod.ip, port, timeout=10)
    with contextlib.closing(conn):
        conn.request("GET", "/")
        resp = conn.getresponse()
        resp.read()
        return resp.status, resp.getheader("x-race")


def with_second_listener(sidecar: dict[str, Any], pod: istiopod.Pod) -> dict[str, Any]:
    out = json.loads(json.dumps(sidecar))
    out["spec"]["ingress"].append(
        {
            "port": {"number": SECOND_PORT, "protocol": "HTTP", "name": "http-second"},
            "bind": pod.ip,
            "defaultEndpoint": f"127.0.0.1:{istiopod.APP_PORT}",
        }
    )
    return out


def ready_of(obj: dict[str, Any] | None) -> tuple[str, list[tuple[str, str]]]:
    """(Ready's reason, [(pod, reason)] failing) of a plugin as the API has it."""
    st = (obj or {}).get("status") or {}
    ready = next((c for c in st.get("conditions") or [] if c.get("type") == "Ready"), {})
    return str(ready.get("reason")), [(f["name"], f["reason"]) for f in st.get("failingPods") or []]


def remote_plugin(op: MeshOperator) -> tuple[dict[str, Any], str]:
    """A plugin of a module over the ConfigMap limit (remote code) adding ``x-race: 1``, for pods ``app: race``."""
    url, sha = op.module_url(corpus.with_custom_section(GO_HEADERS, b"race"), "go_headers_race.wasm")
    return {
        "url": url,
        "sha256": sha,
        "istioDelivery": "configmap",
        "selector": {"matchLabels": {"app": "race"}},
        "match": [{"mode": "SERVER"}],
        "pluginConfig": {"response": {"add": {"x-race": "1"}}},
    }, sha


def test_a_listener_whose_fetch_gave_up_is_not_loaded_and_gets_the_module_again(
    mesh_operator: MeshOperator, istio_mesh: istio.Mesh, ns: str
) -> None:
    """The pod cannot reach the module server when the plugin arrives: every fetch of its inbound listener gives up
    (503, fail closed). Reachable again, a second inbound listener is added: its filters fetch the module and run
    it (200), the module server serves the pod, and Envoy's cache has the module -- while the first listener still
    answers 503 (Envoy builds a listener again only when its config changes). The plugin is never Loaded while that
    listener answers 503 (the pod is FetchGaveUp, from Envoy's stats); the operator delivers the module again, and
    both listeners run it (the first one's filters built again, from Envoy's code cache); then Loaded."""
    pod = istio_mesh.sidecar(ns, "race-0", {"app": "race"})
    sidecar = pod.sidecar_resource()
    sidecar["spec"]["egress"][0]["hosts"].append(f"{istio.MODULES_NS}/*")  # the module server's Istio cluster
    istio_mesh.apply(sidecar)
    race, sha = remote_plugin(mesh_operator)
    try:
        with mesh_operator.unreachable_from(pod):
            mesh_operator.plugin(ns, "race", race)
            stats = istio.poll(
                lambda: (pod.agent_log().count(REMOTE_FETCH), envoy_stats(pod)),
                lambda s: 0 < s[0] <= s[1].get("wasm.remote_load_fetch_failures", 0),
                "Envoy giving up every fetch it started",
                timeout=120,
            )[1]
            assert on_port(pod, istiopod.INBOUND_PORT)[0] == 503  # fail closed
        gave_up = pod.agent_log().count(GAVE_UP)
        assert gave_up == stats["wasm.remote_load_fetch_failures"], pod.agent_log()[-4000:]
        istio_mesh.apply(with_second_listener(sidecar, pod))
        istio.poll(lambda: on_port(pod, SECOND_PORT), lambda r: r == (200, "1"), "the second listener running it")
        stats = envoy_stats(pod)
        assert stats["wasm.remote_load_fetch_successes"] >= 1, stats  # Envoy's cache has the module now
        carried = listeners_carrying(pod, sha)
        assert len(carried) == 2 and len({u for _, urls in carried.values() for u in urls}) == 1, carried

        # from here the first listener answers 503 until the operator delivers the module again; the status is
        # read before each request: a 503 after it means the listener was failing when the status was read
        seen: list[tuple[tuple[str, list[tuple[str, str]]], int]] = []

        def look() -> tuple[tuple[str, list[tuple[str, str]]], int]:
            status = ready_of(mesh_operator.get(ns, "race"))
            seen.append((status, on_port(pod, istiopod.INBOUND_PORT)[0]))
            return seen[-1]

        istio.poll(
            look,
            lambda s: s[1] == 200,
            "the first listener running the module again",
            timeout=4 * limits.REDELIVERY_AFTER_S,
            show=lambda _: ([x for i, x in enumerate(seen) if not i or seen[i - 1] != x], envoy_stats(pod)),
        )
        broken = [status for status, code in seen if code == 503]
        assert broken and not [s for s in broken if s[0] == "Loaded"], seen  # never Loaded while it answered 503
        assert ("race-0", "FetchGaveUp") in {f for s in broken for f in s[1]}, seen
        assert on_port(pod, istiopod.INBOUND_PORT) == (200, "1") and on_port(pod, SECOND_PORT) == (200, "1")
        # nothing given up since (Envoy's remote_load counters live in the scope of the first listener that built
        # remote code and still exists: they may have started again with the listeners built anew; its log stays)
        assert pod.agent_log().count(GAVE_UP) == gave_up, pod.agent_log()[-4000:]
        assert all(u.endswith("&redelivery=1") for _, urls in listeners_carrying(pod, sha).values() for u in urls)
        obj = mesh_operator.wait(ns, "race", reason="Loaded")
        assert obj["status"]["loadedPods"] == ["race-0"]
    finally:
        mesh_operator.delete(ns, "race")
        stop(istio_mesh, pod)
        istio_mesh.delete(sidecar)

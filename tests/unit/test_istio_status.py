"""The istio plane's status from the proxies (meshplug.controller.delivery.proxies, .istio_pods): each selected pod
is judged loaded, failed or pending from what istiod and the module server report, and Ready follows from all of
them. The inputs mirror what the real istiod answers (seen in tests/integration/test_istio_*.py)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from meshplug import spec
from meshplug.controller import delivery
from meshplug.controller.delivery import istio_pods, proxies

NAME = "shop.hdr"
ECDS = proxies.ECDS_TYPE


def sync(sent: str = "n1", acked: str = "n1", error: str = "") -> proxies.ProxySync:
    return proxies.ProxySync("cart-0.shop", "sidecar", {ECDS: proxies.TypeSync(sent, acked, error)}, "http://istiod")


def evidence(**fields: Any) -> proxies.Evidence:
    base: dict[str, Any] = {
        "pod": "cart-0",
        "ready": True,
        "sync": sync(),
        "type_url": ECDS,
        "pushed": True,
        "envoy_name": NAME,
        "fetched": 200,
        "needs_download": True,
        "confirmed": False,
    }
    return proxies.Evidence(**{**base, **fields})


@pytest.mark.parametrize(
    ("fields", "state", "reason"),
    [
        ({}, proxies.LOADED, "Loaded"),
        ({"blocked": "RestartNeeded: recreate it"}, proxies.FAILED, "RestartNeeded"),
        ({"ready": False}, proxies.PENDING, "PodNotReady"),
        ({"sync": None}, proxies.PENDING, "ProxyNotConnected"),
        ({"sync": sync("n2", "n1", f"Unable to create Wasm plugin {NAME}")}, proxies.FAILED, "ProxyNACK"),
        # a NACK naming another extension does not fail this plugin; the proxy is waiting to ACK
        ({"sync": sync("n2", "n1", "Unable to create Wasm plugin shop.other")}, proxies.PENDING, "AwaitingACK"),
        ({"pushed": False}, proxies.PENDING, "NotPushed"),
        ({"sync": sync("n2", "n1")}, proxies.PENDING, "AwaitingACK"),
        # istio-agent ACKs what it could not download (it serves a deny-all filter): only the module server knows
        ({"fetched": 404}, proxies.FAILED, "DownloadFailed"),
        ({"fetched": None}, proxies.PENDING, "NotDownloaded"),
        ({"fetched": None, "confirmed": True}, proxies.LOADED, "Loaded"),  # downloaded before an operator restart
        ({"fetched": None, "needs_download": False}, proxies.LOADED, "Loaded"),  # a file the proxy has
        # a NACK seen earlier stays: a later ACK of another push cleared istiod's error, Envoy still lacks it
        ({"nacked": f"Unable to create Wasm plugin {NAME}"}, proxies.FAILED, "ProxyNACK"),
    ],
)
def test_judge(fields: dict[str, Any], state: str, reason: str) -> None:
    verdict = proxies.judge(evidence(**fields))
    assert (verdict.state, verdict.reason) == (state, reason)


def request(**status: Any) -> delivery.Request:
    body = {"metadata": {"name": "hdr", "namespace": "shop"}, "spec": {"url": "oci://r/h:v1"}, "status": status}
    return delivery.Request(body=body, plugin=spec.parse(body), module=None, retry=2)


def verdict(pod: str, state: str, reason: str = "r") -> proxies.Verdict:
    return proxies.Verdict(pod, state, reason, "m")


@pytest.mark.parametrize(
    ("verdicts", "tracked", "ready", "reason", "recheck", "retry"),
    [
        ([], True, "False", "NoProxies", False, False),
        ([verdict("a", proxies.LOADED), verdict("b", proxies.LOADED)], True, "True", "Loaded", False, False),
        ([verdict("a", proxies.LOADED), verdict("b", proxies.PENDING)], True, "False", "ProxiesPending", True, False),
        (
            [verdict("a", proxies.PENDING), verdict("b", proxies.FAILED, "ProxyNACK")],
            True,
            "False",
            "ProxyNACK",
            False,
            True,
        ),
        ([verdict("a", proxies.LOADED)], False, "Unknown", "ProxiesNotTracked", False, False),
    ],
)
def test_report(  # noqa: PLR0917 (pytest parameters)
    verdicts: list[proxies.Verdict], tracked: bool, ready: str, reason: str, recheck: bool, retry: bool
) -> None:
    out = istio_pods.report(verdicts, request(), tracked=tracked, what="TrafficExtension shop/hdr")
    assert (out.ready.status, out.ready.reason) == (ready, reason)
    assert (out.recheck_s is not None, bool(out.retry)) == (recheck, retry)
    assert out.loaded == tuple(sorted(v.pod for v in verdicts if v.state == proxies.LOADED))
    failed = [v.pod for v in verdicts if v.state == proxies.FAILED]
    assert [f["name"] for f in out.failing][: len(failed)] == failed  # failed pods are listed first


def test_a_failure_event_only_when_ready_changes() -> None:
    failed = [verdict("a", proxies.FAILED, "DownloadFailed")]
    first = istio_pods.report(failed, request(), tracked=True, what="x")
    assert first.event is not None and first.event[1] == "DownloadFailed"
    again = request(conditions=[{"type": "Ready", "status": "False", "reason": "DownloadFailed"}])
    assert istio_pods.report(failed, again, tracked=True, what="x").event is None


def test_confirmations_count_only_for_the_same_digest() -> None:
    body = {"status": {"digest": "sha256:aa", "loadedPods": ["cart-0", "other/x"]}}
    assert istio_pods.confirmed_before(body, "sha256:aa") == {"cart-0", "other/x"}
    assert istio_pods.confirmed_before(body, "sha256:bb") == frozenset()


def test_nack_memory() -> None:
    memory = proxies.NackMemory(capacity=1)
    memory.note(("p.ns", NAME, "sha256:aa/1"), "refused")
    assert memory.get(("p.ns", NAME, "sha256:aa/1")) == "refused"
    assert memory.get(("p.ns", NAME, "sha256:aa/2")) == ""  # a new generation starts clean
    memory.note(("q.ns", NAME, "sha256:aa/1"), "refused")
    assert memory.get(("p.ns", NAME, "sha256:aa/1")) == ""


def test_fetch_log_keeps_the_last_answer_and_forgets_the_oldest() -> None:
    log = proxies.FetchLog(capacity=2)
    log.record("10.0.0.1", "aa", 404)
    log.record("10.0.0.1", "aa", 200)
    assert log.status("10.0.0.1", "aa") == 200
    log.record("10.0.0.2", "aa", 200)
    log.record("10.0.0.3", "aa", 200)
    assert log.status("10.0.0.1", "aa") is None and log.status("10.0.0.3", "aa") == 200


@pytest.mark.parametrize(
    ("pod", "gateway"),
    [
        ({"spec": {"containers": [{"name": "istio-proxy", "args": ["proxy", "router"]}]}}, True),
        ({"spec": {"containers": [{"name": "istio-proxy", "args": ["proxy", "sidecar"]}]}}, False),
        ({"spec": {"containers": [{"name": "app"}]}}, False),
    ],
)
def test_gateway_pods(pod: dict[str, Any], gateway: bool) -> None:
    assert proxies.is_gateway(pod) is gateway


def test_a_change_counts_once_istiod_pushed_the_proxy_since() -> None:
    """istiod's views show what it would send now: a proxy has meshplug's change once its nonce moved (a proxy
    istiod had sent nothing of the type, or did not know, needs no wait; nothing new within the grace: nothing to
    send)."""
    change = proxies.Change(at=time.monotonic(), sent={"cart-0.shop": {ECDS: "n1"}})
    moved = sync(sent="n2", acked="n1")
    assert change.sent_since(moved, ECDS, grace=1e9)
    assert not change.sent_since(sync(sent="n1"), ECDS, grace=1e9)
    assert change.sent_since(sync(sent="n1"), proxies.LDS_TYPE, grace=1e9)
    other = proxies.ProxySync("web-0.shop", "sidecar", {ECDS: proxies.TypeSync("n1", "n1", "")}, "http://istiod")
    assert change.sent_since(other, ECDS, grace=1e9)
    assert not change.sent_since(sync(sent="n1"), ECDS, grace=60)
    assert change.sent_since(sync(sent="n1"), ECDS, grace=-1)  # the grace is over: nothing was to be sent


class FakeIstiod(proxies.Istiod):
    def __init__(self, answers: dict[str, Any]) -> None:
        super().__init__(["http://istiod"])
        self.answers = answers

    def _get(self, base: str, path: str) -> Any:
        return self.answers[path.partition("?")[0]]


def test_change_before_records_every_proxys_nonces() -> None:
    entry = {"proxy": "cart-0.shop", "proxy_type": "sidecar", "resources": {ECDS: {"sent": "n7", "acked": "n6"}}}
    change = proxies.Change.before(FakeIstiod({"/debug/syncz": [entry]}))
    assert change.sent == {"cart-0.shop": {ECDS: "n7"}}


LISTENER = {
    "name": "virtualInbound",
    "filterChains": [
        {
            "filters": [
                {
                    "name": "envoy.filters.network.http_connection_manager",
                    "typedConfig": {"httpFilters": [{"name": "extensions.istio.io/trafficextension/shop.hdr"}]},
                }
            ]
        }
    ],
}


@pytest.mark.parametrize(
    "dump",
    [  # istiod's typed answer (types=lds,cds: the resources themselves) and Envoy's admin shape
        {
            "configs": [
                {"@type": "type.googleapis.com/envoy.config.listener.v3.Listener", **LISTENER},
                {"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster", "name": "outbound|80||m.svc"},
            ]
        },
        {
            "configs": [
                {
                    "@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
                    "dynamicListeners": [{"activeState": {"listener": LISTENER}}],
                },
                {
                    "@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
                    "dynamicActiveClusters": [{"cluster": {"name": "outbound|80||m.svc"}}],
                },
            ]
        },
    ],
    ids=["typed", "admin"],
)
def test_config_dump_shapes(dump: dict[str, Any]) -> None:
    names = [f.get("name") for f in proxies.listener_filters(dump)]
    assert names == ["envoy.filters.network.http_connection_manager", "extensions.istio.io/trafficextension/shop.hdr"]
    assert proxies.clusters(dump) == {"outbound|80||m.svc"}

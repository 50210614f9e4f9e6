"""The istio plane's status from the proxies (meshplug.controller.delivery.proxies, .istio_pods): each selected pod
is judged loaded, failed or pending from what istiod and the module server report, and Ready follows from all of
them. The inputs mirror what the real istiod answers (seen in tests/integration/test_istio_*.py)."""

from __future__ import annotations

import copy
import time
from typing import Any

import pytest

from meshplug import spec
from meshplug.controller import delivery
from meshplug.controller.delivery import istio_configmap, istio_native, istio_pods, nacks, proxies
from meshplug.render import istio, model

NAME = "shop.hdr"
REFUSED = f"Unable to create Wasm plugin {NAME}"
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
        # a NACK seen earlier stays: a later ACK (of another push, or of the same config sent again, which Envoy
        # ACKs unchanged) cleared istiod's error; Envoy still has no running filter for it
        ({"nacked": f"Unable to create Wasm plugin {NAME}"}, proxies.FAILED, "ProxyNACK"),
        # istiod counted a rejection no reading showed while this proxy was sent this version: not known to run
        ({"unseen": True}, proxies.FAILED, "RejectionUnseen"),
        # ... and its Envoy runs no plugin of the name (istio-agent's stats): refused for sure; with one running (this
        # version or an earlier one), or its stats not read, still not known
        ({"unseen": True, "running": False}, proxies.FAILED, "ProxyNACK"),
        ({"unseen": True, "running": True}, proxies.FAILED, "RejectionUnseen"),
        ({"unseen": False, "running": False}, proxies.LOADED, "Loaded"),
        ({"unseen": True, "nacked": "Unable to create Wasm plugin shop.hdr"}, proxies.FAILED, "ProxyNACK"),
        ({"unseen": True, "sync": sync("n2", "n1")}, proxies.PENDING, "AwaitingACK"),
        # remote code Envoy fetches itself: a fetch it gave up since the url was delivered leaves a filter without
        # its module (503) whatever the module server served; a warming listener may still be fetching
        ({"envoy_fetches": proxies.RemoteFetches(failures=1, warming=0)}, proxies.PENDING, "FetchGaveUp"),
        ({"envoy_fetches": proxies.RemoteFetches(failures=1, warming=1)}, proxies.PENDING, "FetchGaveUp"),
        ({"envoy_fetches": proxies.RemoteFetches(failures=0, warming=2)}, proxies.PENDING, "FetchInProgress"),
        ({"envoy_fetches": proxies.RemoteFetches(failures=0, warming=0)}, proxies.LOADED, "Loaded"),
        ({"envoy_fetches": proxies.RemoteFetches(0, 0), "fetched": None}, proxies.PENDING, "NotDownloaded"),
        ({"envoy_fetches": proxies.RemoteFetches(3, 0), "confirmed": True}, proxies.PENDING, "FetchGaveUp"),
        ({"envoy_fetches": proxies.RemoteFetches(3, 0), "needs_download": False}, proxies.LOADED, "Loaded"),
        # Envoy's stats not read (its admin busy, a NetworkPolicy): not known, never Loaded on the download alone
        ({"envoy_stats_unread": "stats at http://10.0.0.2:15020 did not answer"}, proxies.PENDING, "EnvoyStatsUnread"),
        ({"envoy_stats_unread": "x", "confirmed": True, "fetched": None}, proxies.PENDING, "EnvoyStatsUnread"),
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
    memory = nacks.NackMemory(capacity=1)
    memory.note(("p.ns", NAME, "sha256:aa/1"), "refused")
    assert memory.get(("p.ns", NAME, "sha256:aa/1")) == "refused"
    assert memory.get(("p.ns", NAME, "sha256:aa/2")) == ""  # a new generation starts clean
    memory.note(("q.ns", NAME, "sha256:aa/1"), "refused")
    assert memory.get(("p.ns", NAME, "sha256:aa/1")) == ""


def test_nack_memory_forgets_a_removed_plugin() -> None:
    memory = nacks.NackMemory()
    memory.note(("p.ns", NAME, "sha256:aa/1"), "refused")
    memory.note(("p.ns", "shop.other", "sha256:aa/1"), "refused")
    memory.forget(NAME)
    assert (memory.get(("p.ns", NAME, "sha256:aa/1")), memory.get(("p.ns", "shop.other", "sha256:aa/1"))) == (
        "",
        "refused",
    )


LDS = proxies.LDS_TYPE
KEY = ("cart-0.shop", NAME, "WasmPlugin/EnvoyFilter:sha256:aa/1")


def lds(sent: str, acked: str, error: str = "") -> proxies.ProxySync:
    return proxies.ProxySync("cart-0.shop", "sidecar", {LDS: proxies.TypeSync(sent, acked, error)}, "http://istiod")


@pytest.mark.parametrize(
    ("type_url", "later", "healed"),
    [
        # istiod sends every listener on each listener push and Envoy tries the refused one again: an ACK at a later
        # nonce than the NACK's, no error, is the listener taken (a module file mounted since)
        (LDS, lds("l3", "l3"), True),
        (LDS, lds("l3", "l1", f"Error adding/updating listener(s) x: {REFUSED}"), False),  # refused again
        (LDS, lds("l3", "l1"), False),  # the push after the NACK not answered yet
        (LDS, lds("l1", "l1"), False),  # nothing ACKed since the NACK was noted
        (ECDS, lds("l3", "l3"), False),  # an extension config NACK: Envoy ACKs the refused config sent again
    ],
)
def test_a_listener_nack_heals_once_a_later_listener_push_is_acked(
    type_url: str, later: proxies.ProxySync, healed: bool
) -> None:
    memory = nacks.NackMemory()
    memory.note(KEY, REFUSED, type_url=type_url, acked="l1")  # sent l2, NACKed: istiod's last ACKed is l1
    assert memory.heal(KEY, later) is healed
    assert (memory.get(KEY), memory.last("cart-0.shop", NAME)) == (("", "") if healed else (REFUSED, REFUSED))


def test_the_last_refusal_of_a_plugin_at_a_proxy_is_kept_until_the_proxy_runs_it() -> None:
    memory = nacks.NackMemory()
    memory.note(("cart-0.shop", NAME, "sha256:aa/1"), "first")
    memory.note(("cart-0.shop", NAME, "sha256:bb/2"), "second")
    assert (memory.last("cart-0.shop", NAME), memory.last("cart-1.shop", NAME)) == ("second", "")
    memory.loaded("cart-0.shop", NAME)
    assert memory.last("cart-0.shop", NAME) == ""
    assert memory.get(("cart-0.shop", NAME, "sha256:bb/2")) == "second"  # that version's refusal stays


def test_forgetting_one_routes_versions_keeps_the_others() -> None:
    memory = nacks.NackMemory()
    memory.note(("p.ns", NAME, "sha256:aa/1"), "native")
    memory.note(("p.ns", NAME, "WasmPlugin/EnvoyFilter:sha256:aa/1"), "configmap")
    memory.forget(NAME, "WasmPlugin/EnvoyFilter:")
    assert (
        memory.get(("p.ns", NAME, "sha256:aa/1")),
        memory.get(("p.ns", NAME, "WasmPlugin/EnvoyFilter:sha256:aa/1")),
    ) == (
        "native",
        "",
    )


def test_both_routes_share_istiods_one_watch() -> None:
    istiod, other = proxies.Istiod(["http://istiod:15014"]), proxies.Istiod(["http://istiod-2:15014"])
    assert nacks.watch_of(istiod) is nacks.watch_of(istiod) is not nacks.watch_of(other)
    assert nacks.watch_of(istiod).memory is nacks.watch_of(istiod).memory


@pytest.mark.parametrize(
    ("spent", "pause"),
    [
        (0.01, 0.2),  # a quick reading: the interval
        (0.05, 0.2),  # a quarter of the time exactly
        (0.2, 0.6),  # a slow one: reading at most a quarter of the time
        (2.0, 6.0),
    ],
)
def test_the_watch_reads_istiod_at_most_its_share_of_the_time(spent: float, pause: float) -> None:
    assert nacks.pause(spent, 0.2, 0.25) == pytest.approx(pause)


@pytest.mark.parametrize(
    ("status", "refused"),
    [
        (
            {
                "digest": "sha256:aa",
                "observedGeneration": 3,
                "failingPods": [
                    {"name": "cart-0", "reason": "ProxyNACK", "message": f"the proxy rejected the config: {REFUSED}"},
                    {"name": "cart-1", "reason": "RejectionUnseen", "message": "istiod counted ..."},
                    {"name": "cart-2", "reason": "AwaitingACK", "message": "not yet"},
                ],
            },
            {"cart-0": ("ProxyNACK", REFUSED), "cart-1": ("RejectionUnseen", "istiod counted ...")},
        ),
        # another version's refusals are not this one's
        (
            {
                "digest": "sha256:bb",
                "observedGeneration": 3,
                "failingPods": [{"name": "cart-0", "reason": "ProxyNACK"}],
            },
            {},
        ),
        (
            {
                "digest": "sha256:aa",
                "observedGeneration": 2,
                "failingPods": [{"name": "cart-0", "reason": "ProxyNACK"}],
            },
            {},
        ),
        ({}, {}),
    ],
)
def test_refusals_the_status_reported_for_this_version(status: dict[str, Any], refused: dict[str, Any]) -> None:
    assert istio_pods.refused_before({"status": status}, "sha256:aa", 3) == refused


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


class WatchedIstiod(FakeIstiod):
    """syncz answers in turn, and istiod's reject count beside each."""

    def __init__(self, readings: list[tuple[int, list[dict[str, Any]]]]) -> None:
        super().__init__({})
        self.readings = readings

    def rejects(self, xds: str = "ecds") -> int | None:
        return self.readings[0][0]

    def syncz(self, namespaces: Any = ()) -> tuple[dict[str, proxies.ProxySync], str]:
        self.answers["/debug/syncz"] = self.readings.pop(0)[1]
        return super().syncz(namespaces)


def entry(proxy: str, sent: str, acked: str, error: str = "", xds: str = ECDS) -> dict[str, Any]:
    return {"proxy": proxy, "resources": {xds: {"sent": sent, "acked": acked, "lastError": error}}}


@pytest.mark.parametrize(
    ("readings", "noted"),
    [
        # the NACK, then the ACK of the same config sent again (Envoy ACKs it unchanged): still refused
        ([entry("cart-0.shop", "n2", "n1", REFUSED)], REFUSED),
        # a listener naming the refused extension is refused too
        (
            [entry("cart-0.shop", "l2", "l1", f"Error adding/updating listener(s) x: {REFUSED}", proxies.LDS_TYPE)],
            REFUSED,
        ),
        ([entry("cart-0.shop", "n2", "n1", "Unable to create Wasm plugin shop.other")], ""),  # another plugin's
        ([entry("cart-0.shop", "n2", "n1", f"{REFUSED}~istio-translated-wasmplugin")], ""),  # a longer name
        ([entry("cart-0.shop", "n2", "n2")], ""),  # ACKed
    ],
)
def test_nack_watch_keeps_a_nack_the_next_ack_clears_in_istiod(readings: list[dict[str, Any]], noted: str) -> None:
    istiod = WatchedIstiod([(0, readings), (0, [entry("cart-0.shop", "n3", "n3")])])
    memory = nacks.NackMemory()
    watch = nacks.NackWatch(istiod, memory)
    watch._watched[((NAME,), "sha256:aa/1")] = time.monotonic() + 60  # as watch() records it, without the thread
    assert watch.look() and watch.look()
    assert noted in memory.get(("cart-0.shop", NAME, "sha256:aa/1")) and bool(noted) == bool(
        memory.get(("cart-0.shop", NAME, "sha256:aa/1"))
    )


def test_nack_watch_stops_when_its_versions_are_old() -> None:
    watch = nacks.NackWatch(WatchedIstiod([]), nacks.NackMemory())
    watch._watched[((NAME,), "v/1")] = time.monotonic() - 1
    assert not watch.look()


def sightings(*proxies_sent: tuple[str, str, str, str]) -> dict[str, proxies.ProxySync]:
    """syncz as `Istiod.syncz` returns it: proxy -> its extension configs' (sent, ACKed, error)."""
    return {
        p: proxies.ProxySync(p, "sidecar", {ECDS: proxies.TypeSync(sent, acked, err)}, "http://istiod")
        for p, sent, acked, err in proxies_sent
    }


@pytest.mark.parametrize(
    ("readings", "marked"),
    [
        # istiod counted one rejection, the reading showed it: nothing unseen
        ([(3, [("a", "n1", "n1", "")]), (4, [("a", "n2", "n1", REFUSED)]), (4, [("a", "n3", "n3", "")])], set()),
        # counted, never shown (an ACK cleared it between two readings): the proxies pushed meanwhile are marked
        (
            [(3, [("a", "n1", "n1", ""), ("b", "m1", "m1", "")]), (4, [("a", "n2", "n2", ""), ("b", "m1", "m1", "")])],
            {"a"},
        ),
        # the refused config went out before the reading before (unanswered there), a later push was ACKed: the
        # nonce did not move between the last two readings, the proxy is marked all the same
        ([(3, [("a", "n1", "n1", "")]), (3, [("a", "n3", "n1", "")]), (4, [("a", "n3", "n3", "")])], {"a"}),
        # refused and cleared after the count was read but before the syncz of the same reading: counted one reading
        # late, the proxy's push two readings back still marks it
        ([(3, [("a", "n1", "n1", "")]), (3, [("a", "n2", "n2", "")]), (4, [("a", "n2", "n2", "")])], {"a"}),
        # shown before it was counted (the count is read first): no mark, then or later
        ([(3, [("a", "n1", "n1", "")]), (3, [("a", "n2", "n1", REFUSED)]), (4, [("a", "n3", "n3", "")])], set()),
        # an error already shown when the accounting started was counted before it
        (
            [(3, [("a", "n1", "n0", REFUSED)]), (3, [("a", "n1", "n0", REFUSED)]), (4, [("a", "n2", "n0", REFUSED)])],
            set(),
        ),
        # istiod restarted (its count fell): the accounting starts over
        ([(9, [("a", "n1", "n1", "")]), (1, [("a", "n2", "n2", "")]), (1, [("a", "n3", "n3", "")])], set()),
        ([(3, [("a", "n1", "n1", "")]), (None, [("a", "n2", "n2", "")]), (4, [("a", "n3", "n3", "")])], set()),
    ],
)
def test_rejections_istiod_counted_but_no_reading_showed(
    readings: list[tuple[int | None, list[tuple[str, str, str, str]]]], marked: set[str]
) -> None:
    accounts = nacks.RejectAccounts()
    since = time.monotonic()
    for rejects, seen in readings:
        accounts.account(rejects, sightings(*seen), time.monotonic())
    assert {p for p in ("a", "b") if accounts.unseen((p, NAME, "v/1"), since)} == marked
    assert not accounts.unseen(("a", NAME, "v/1"), time.monotonic() + 1)  # a version first sent after the mark


def test_a_version_the_proxy_acked_before_a_missed_rejection_is_not_its_refusal() -> None:
    """Envoy rebuilds only an extension config that changed: a version ACKed before the count that missed the
    rejection was read is not the one refused; one ACKed after may be (Envoy ACKs a refused config sent again)."""
    accounts = nacks.RejectAccounts()
    since = time.monotonic()
    accounts.account(3, sightings(("a", "n1", "n1", "")), time.monotonic())
    accounts.accept(("a", "shop.before", "v/1"))
    accounts.account(3, sightings(("a", "n2", "n2", "")), time.monotonic())  # the count the rejection came after
    accounts.accept(("a", "shop.after", "v/1"))
    accounts.account(4, sightings(("a", "n3", "n3", "")), time.monotonic())
    assert not accounts.unseen(("a", "shop.before", "v/1"), since)
    assert accounts.unseen(("a", "shop.after", "v/1"), since)
    assert accounts.unseen(("a", "shop.never", "v/1"), since)
    accounts.forget("shop.before")  # removed: a plugin made again under the name starts unaccepted
    assert accounts.unseen(("a", "shop.before", "v/1"), since)


#: istio-agent's /stats/prometheus of the test bed's sidecar (Envoy 1.40) with one plugin built and one refused
#: (native-shop.bad: no stats), the wasm lines
AGENT_STATS = """# TYPE envoy_wasm_envoy_wasm_runtime_v8_created counter
envoy_wasm_envoy_wasm_runtime_v8_created{} 5
# TYPE envoy_wasm_native_shop_good_istio_translated_wasmplugin_vm_reload counter
envoy_wasm_native_shop_good_istio_translated_wasmplugin_vm_reload{} 0
# TYPE envoy_wasm_native_shop_good_istio_translated_wasmplugin_vm_reload_backoff counter
envoy_wasm_native_shop_good_istio_translated_wasmplugin_vm_reload_backoff{} 0
envoy_wasm_native_shop_good_istio_translated_wasmplugin_vm_reload_failure{} 0
envoy_wasm_remote_load_cache_hits{} 0
envoy_wasm_wasm_vm_count{} 3
"""


@pytest.mark.parametrize(
    ("names", "running"),
    [
        (("native-shop.good~istio-translated-wasmplugin", "native-shop.good"), True),
        (("native-shop.bad~istio-translated-wasmplugin", "native-shop.bad"), False),
        (("native-shop.good",), False),  # the TrafficExtension of the name: another plugin
        (("envoy.wasm.runtime",), False),  # Envoy's own wasm stats are no plugin's
    ],
)
def test_the_wasm_plugins_an_envoy_runs_from_its_stats(names: tuple[str, ...], running: bool) -> None:
    assert any(proxies.stat_name(n) in proxies.wasm_plugins(AGENT_STATS) for n in names) is running


#: the same page's remote code and listener lines (Envoy 1.40 behind istio-agent: two fetches given up)
REMOTE_STATS = """# TYPE envoy_wasm_remote_load_fetch_failures counter
envoy_wasm_remote_load_fetch_failures{} 2
# TYPE envoy_wasm_remote_load_fetch_successes counter
envoy_wasm_remote_load_fetch_successes{} 2
# TYPE envoy_listener_manager_total_listeners_warming gauge
envoy_listener_manager_total_listeners_warming{} 1
"""


@pytest.mark.parametrize(
    ("page", "fetches"),
    [
        (REMOTE_STATS, proxies.RemoteFetches(failures=2, warming=1)),
        # an Envoy that never built remote code has no remote_load stats: none given up
        ("envoy_listener_manager_total_listeners_warming 0\n", proxies.RemoteFetches(failures=0, warming=0)),
        (AGENT_STATS, None),  # no listener stats: not Envoy's page as istio-agent serves it
        ("", None),
    ],
)
def test_envoys_remote_fetches_from_its_stats(page: str, fetches: proxies.RemoteFetches | None) -> None:
    assert proxies.remote_fetches(page) == fetches


URI = "http://modules/sha256/aa?sig=1"


def given_up(failures: int) -> proxies.RemoteFetches:
    return proxies.RemoteFetches(failures=failures, warming=0)


@pytest.mark.parametrize(
    ("delivered", "uri", "now", "confirmed", "since"),
    [
        (3, URI, 3, False, 0),  # nothing given up since the url's push
        (3, URI, 5, False, 2),
        (None, URI, 5, False, 5),  # not read at the push: every fetch of the Envoy's life counts
        (7, URI, 2, False, 2),  # the Envoy restarted (its counters start again): all after the push
        # no mark for this url (a pod created later, or the operator restarted): from 0, unless the status counted
        # the pod loaded with this module (then from now)
        ("none", URI, 4, False, 4),
        ("none", URI, 4, True, 0),
        (3, f"{URI}&redelivery=1", 4, False, 4),
    ],
)
def test_fetches_given_up_count_from_the_push_of_the_url(
    delivered: int | str | None, uri: str, now: int, confirmed: bool, since: int
) -> None:
    marks = istio_configmap.FetchMarks()
    key = ("shop", "big")
    if delivered != "none":
        marks.delivering(key, URI, {"cart-0": given_up(delivered) if isinstance(delivered, int) else None})
    assert marks.since(key, "cart-0", uri, given_up(now), confirmed=confirmed).failures == since
    assert marks.since(key, "cart-0", uri, given_up(now), confirmed=False).failures == since  # the mark stays


def test_fetch_marks_are_per_plugin_and_forgotten_with_it() -> None:
    marks = istio_configmap.FetchMarks()
    marks.delivering(("shop", "a"), URI, {"cart-0": given_up(2)})
    marks.delivering(("shop", "b"), URI, {"cart-0": given_up(5)})
    assert marks.since(("shop", "a"), "cart-0", URI, given_up(6), confirmed=False).failures == 4
    marks.forget(("shop", "a"))
    assert marks.since(("shop", "a"), "cart-0", URI, given_up(6), confirmed=False).failures == 6
    assert marks.since(("shop", "b"), "cart-0", URI, given_up(6), confirmed=False).failures == 1


@pytest.mark.parametrize(
    ("pod", "url"),
    [
        ({"status": {"podIP": "10.1.2.3"}}, "http://10.1.2.3:15020/stats/prometheus"),
        ({"status": {"podIP": "fd00::5"}}, "http://[fd00::5]:15020/stats/prometheus"),
        (
            {"metadata": {"annotations": {proxies.STATUS_PORT_ANNOTATION: "15090"}}, "status": {"podIP": "10.1.2.3"}},
            "http://10.1.2.3:15090/stats/prometheus",
        ),
        ({"metadata": {"annotations": {proxies.STATUS_PORT_ANNOTATION: "0"}}, "status": {"podIP": "10.1.2.3"}}, ""),
        ({"metadata": {"annotations": {proxies.STATUS_PORT_ANNOTATION: "x"}}, "status": {"podIP": "10.1.2.3"}}, ""),
        ({"status": {}}, ""),
    ],
)
def test_istio_agent_stats_url(pod: dict[str, Any], url: str) -> None:
    assert proxies.agent_stats_url(pod) == url


@pytest.mark.parametrize(
    ("page", "ecds"),
    [
        ('pilot_total_xds_rejects{type="ecds"} 2\npilot_total_xds_rejects{type="lds"} 5\n', 2),
        ('# TYPE pilot_total_xds_rejects counter\npilot_total_xds_rejects{cluster="c",type="ecds"} 1e+00\n', 1),
        ("pilot_xds_pushes_total 4\n", 0),  # nothing rejected yet: istiod exports no series
    ],
)
def test_count_rejects(page: str, ecds: int) -> None:
    assert proxies.count_rejects(page, "ecds") == ecds


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


@pytest.mark.parametrize(
    ("last", "quoted"),
    [(REFUSED, f"the last rejection this proxy gave the plugin (an earlier version): {REFUSED}"), ("", "")],
)
def test_a_rejection_no_reading_showed_quotes_the_last_one_seen(last: str, quoted: str) -> None:
    verdict = proxies.judge(evidence(unseen=True, running=True, last_nack=last))
    assert (verdict.state, verdict.reason) == (proxies.FAILED, "RejectionUnseen")
    assert verdict.message.endswith(quoted) and ("earlier version" in verdict.message) == bool(last)


UNMOUNTED = proxies.Verdict("lag-0", proxies.PENDING, "ModuleNotMounted", "Invalid path: /x.wasm")
LOADED = proxies.Verdict("lag-0", proxies.LOADED, "Loaded", "")


@pytest.mark.parametrize(
    ("most", "rounds", "attempts"),
    [
        (3, [[UNMOUNTED]] * 5, [1, 2, 3, None, None]),  # bounded: no more than `most` pushes per module
        (None, [[UNMOUNTED]] * 4, [1, 2, 3, 4]),
        (3, [[LOADED], [UNMOUNTED], [LOADED]], [None, 1, None]),  # only while a pod waits for the file
    ],
)
def test_a_listener_refused_for_its_missing_file_is_pushed_again_a_bounded_number_of_times(
    most: int | None, rounds: list[list[proxies.Verdict]], attempts: list[int | None]
) -> None:
    repush = istio_pods.Redelivery(istio_configmap.UNMOUNTED, after_s=0.0, max_s=0.0, most=most)
    assert repush.attempt(("shop", "lag"), "sha256:a") == 0
    assert [repush.due(("shop", "lag"), "sha256:a", verdicts) for verdicts in rounds] == attempts
    assert repush.attempt(("shop", "lag"), "sha256:b") == 0  # a new module starts afresh


def test_the_waits_between_pushes_again_double_up_to_the_cap() -> None:
    repush = istio_pods.Redelivery(istio_configmap.UNMOUNTED, after_s=3600.0, max_s=3600.0, most=3)
    repush.attempt(("shop", "lag"), "sha256:a")
    assert repush.due(("shop", "lag"), "sha256:a", [UNMOUNTED]) is None  # not before the first wait


@pytest.mark.parametrize(
    ("existing_spec", "mark", "step", "marked"),
    [
        (None, None, "keep", None),  # a new resource
        (None, None, "bump", "1"),
        ({"p": 1}, None, "keep", None),
        ({"p": 1}, "3", "keep", "3"),  # a reconcile keeps the mark (no write, no push)
        ({"p": 1}, "3", "bump", "4"),  # counted on from the object's own (an operator restart included)
        ({"p": 1}, "3", "drop", None),  # the proxies settled: it goes
        ({"p": 0}, "3", "keep", None),  # a new spec goes unmarked (istiod pushes it anyway)
        ({"p": 0}, "3", "bump", "1"),
        ({"p": 1}, "x", "bump", "1"),  # an edited value is counted afresh
    ],
)
@pytest.mark.parametrize("push_mark", [istio_configmap.REPUSH, istio_native.REDELIVERY], ids=["repush", "redelivery"])
def test_the_push_mark_is_what_istiod_pushes_for(
    push_mark: istio_pods.PushMark,
    existing_spec: dict[str, Any] | None,
    mark: str | None,
    step: str,
    marked: str | None,
) -> None:
    """istiod (pilot/pkg/model/config_compare.go NeedsPush) skips an update of an Istio resource whose spec is the
    same unless a label or annotation key contains "istio.io": the mark's key does, and it is all that changes."""
    plain = {"metadata": {"name": "meshplug-lag", "annotations": {"meshplug.io/digest": "sha256:a"}}, "spec": {"p": 1}}
    existing = None
    if existing_spec is not None:
        notes = {push_mark.key: mark} if mark is not None else {}
        existing = {"metadata": {"annotations": notes}, "spec": existing_spec}
    before = copy.deepcopy(plain)
    obj = push_mark.kept(plain, existing)
    obj = {"keep": obj, "bump": push_mark.bumped(obj), "drop": push_mark.put(obj, None)}[step]
    assert plain == before  # copies: the rendered object is left as it was
    assert push_mark.of(obj) == marked
    assert obj["metadata"]["annotations"] == {
        **plain["metadata"]["annotations"],
        **({push_mark.key: marked} if marked else {}),
    }
    assert obj["spec"] == plain["spec"]


def test_a_push_mark_without_an_istio_io_key_is_refused() -> None:
    with pytest.raises(ValueError, match=r"istio\.io"):
        istio_pods.PushMark("meshplug.io/redelivery")


@pytest.mark.parametrize(
    ("verdicts", "settled"),
    [
        ([LOADED], True),
        ([], True),
        ([LOADED, proxies.Verdict("b", proxies.FAILED, "ProxyNACK", "")], True),  # a mark does not help there
        ([LOADED, proxies.Verdict("b", proxies.FAILED, "DownloadFailed", "")], False),
        ([LOADED, proxies.Verdict("b", proxies.PENDING, "NotDownloaded", "")], False),
        ([LOADED, proxies.Verdict("b", proxies.PENDING, "NotPushed", "")], False),  # the mark's push on its way
        ([UNMOUNTED], False),  # the ConfigMap route's (pending until the file is in the pod)
    ],
)
def test_a_push_mark_goes_once_the_proxies_settled(verdicts: list[proxies.Verdict], settled: bool) -> None:
    """While an istio.io key stays on an Istio resource istiod pushes every metadata-only update of it: the mark goes
    once no selected proxy is pending or stuck in a way a new push helps (test_istio_native shows both on istiod)."""
    assert istio_pods.Redelivery().settled(verdicts) is settled


@pytest.mark.parametrize(
    "mark",
    [istio_native.REDELIVERY_ANNOTATION, istio_configmap.REPUSH_ANNOTATION],
    ids=["native route redelivery", "ConfigMap route push again"],
)
def test_a_mark_meant_to_make_istiod_push_has_a_key_istiod_pushes_for(mark: str) -> None:
    """istiod's NeedsPush (pilot/pkg/model/config_compare.go, the pinned revision) pushes a metadata-only update of
    an Istio resource only when a label or annotation key contains "istio.io"; test_istio_configmap's
    ModuleNotMounted test shows it on the real istiod for the ConfigMap route's mark."""
    assert "istio.io" in mark


REMOTE = model.RemoteCode(
    uri="http://modules.meshplug-system:8080/modules/sha256/" + "a" * 64 + "?sig=s1",
    cluster="outbound|8080||modules.meshplug-system",
    sha256="a" * 64,
)
OTHER = model.RemoteCode(uri=REMOTE.uri.replace("a" * 64, "b" * 64), cluster=REMOTE.cluster, sha256="b" * 64)


def remote_envoy_filter(code: model.RemoteCode) -> dict[str, Any]:
    body = {"metadata": {"name": "big", "namespace": "shop"}, "spec": {"url": "oci://r/big:v1"}}
    return istio.envoy_filter(spec.parse(body), code)


@pytest.mark.parametrize(
    ("written", "delivered"),
    [
        (None, 0),  # no EnvoyFilter yet
        (REMOTE, 0),  # first delivered: the url as rendered
        (istio_configmap._redelivered(REMOTE, 1), 1),
        (istio_configmap._redelivered(REMOTE, 12), 12),
        (OTHER, 0),  # another module's url: this one counts afresh
        (istio_configmap._redelivered(OTHER, 3), 0),
    ],
)
def test_a_restarted_operator_renders_the_url_the_envoy_filter_carries(
    written: model.RemoteCode | None, delivered: int
) -> None:
    """The url's redelivery number is read back from the EnvoyFilter the operator wrote (`_delivered_attempt`):
    counted on from it, a new Redelivery (what an operator restart leaves) renders the very url written, and its next
    redelivery is a url the proxies have not had."""
    existing = remote_envoy_filter(written) if written is not None else None
    assert istio_configmap._delivered_attempt(existing, REMOTE) == delivered
    fresh = istio_pods.Redelivery(after_s=0.0, max_s=0.0)
    attempt = fresh.attempt(("shop", "big"), "sha256:" + "a" * 64, delivered)
    rendered = remote_envoy_filter(istio_configmap._redelivered(REMOTE, attempt))
    if written is not None and written.sha256 == REMOTE.sha256:
        assert rendered == existing  # nothing to write, nothing for istiod to push
    stuck = [proxies.Verdict("big-0", proxies.PENDING, "NotDownloaded", "")]
    assert fresh.due(("shop", "big"), "sha256:" + "a" * 64, stuck) == delivered + 1

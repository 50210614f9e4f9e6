"""meshplug.controller.informer's caches in process (pods; the objects the operator renders; the plugins): watch
events, listings and the operator's own writes in, selected objects out, and the changes its consumers see (a
listing after a lost watch reports the pods that went meanwhile)."""

from __future__ import annotations

import time
from typing import Any, cast

import pytest

from meshplug.controller import apply, informer
from meshplug.controller.delivery import istio_configmap


def pod(name: str, version: int, namespace: str = "shop", **labels: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": namespace,
            "resourceVersion": str(version),
            "labels": labels,
            "managedFields": [{"manager": "kubelet"}],
        },
        "status": {"phase": "Running"},
    }


def cache(seen: list[tuple[str, str]]) -> informer.PodCache:
    def changed(kind: str, old: informer.Pod | None, new: informer.Pod | None) -> None:
        body = new if new is not None else old
        assert body is not None
        seen.append((kind, body["metadata"]["name"]))

    return informer.PodCache(cast(apply.Writer, None), (), changed)


@pytest.mark.parametrize(
    ("namespace", "selector", "has_label", "expected"),
    [
        ("shop", {"app": "a"}, "", ["a-1", "a-2"]),
        ("shop", {"app": "a", "track": "canary"}, "", ["a-2"]),
        ("shop", {}, "", ["a-1", "a-2", "b-1", "gw"]),
        ("shop", {}, "gateway.networking.k8s.io/gateway-name", ["gw"]),
        ("shop", {"app": "nope"}, "", []),
        ("", {"app": "a"}, "", ["a-1", "a-2", "a-9"]),  # every namespace
        ("other", {"app": "a"}, "", ["a-9"]),
    ],
)
def test_reads_select_by_namespace_and_labels(
    namespace: str, selector: dict[str, str], has_label: str, expected: list[str]
) -> None:
    c = cache([])
    c.replace(
        "",
        [
            pod("a-1", 1, app="a"),
            pod("a-2", 2, app="a", track="canary"),
            pod("b-1", 3, app="b"),
            pod("gw", 4, **{"gateway.networking.k8s.io/gateway-name": "edge"}),
            pod("a-9", 5, namespace="other", app="a"),
        ],
    )
    assert c.synced()
    got = [p["metadata"]["name"] for p in c.pods(namespace, selector, has_label=has_label)]
    assert sorted(got) == expected
    assert all("managedFields" not in p["metadata"] for p in c.pods(namespace, selector, has_label=has_label))


@pytest.mark.parametrize(
    ("events", "selector", "expected", "changes"),
    [
        # a relabelled pod leaves the old label's set and joins the new one's
        (
            [("MODIFIED", pod("a-1", 7, app="b"))],
            {"app": "b"},
            ["a-1", "b-1"],
            [("MODIFIED", "a-1")],
        ),
        ([("DELETED", pod("a-1", 8, app="a"))], {"app": "a"}, [], [("DELETED", "a-1")]),
        ([("ADDED", pod("a-3", 9, app="a"))], {"app": "a"}, ["a-1", "a-3"], [("ADDED", "a-3")]),
        # a bookmark only moves the version; a delete of a pod never seen changes nothing
        ([("BOOKMARK", {"metadata": {"resourceVersion": "10"}})], {"app": "a"}, ["a-1"], []),
        ([("DELETED", pod("zz", 11))], {}, ["a-1", "b-1"], [("DELETED", "zz")]),
    ],
)
def test_watch_events_keep_the_cache_and_report_each_change(
    events: list[tuple[str, dict[str, Any]]],
    selector: dict[str, str],
    expected: list[str],
    changes: list[tuple[str, str]],
) -> None:
    seen: list[tuple[str, str]] = []
    c = cache(seen)
    c.replace("", [pod("a-1", 1, app="a"), pod("b-1", 2, app="b")])
    seen.clear()
    for kind, obj in events:
        version = c.apply_event({"type": kind, "object": obj})
        assert version == obj["metadata"]["resourceVersion"]
    assert sorted(p["metadata"]["name"] for p in c.pods("shop", selector)) == expected
    assert seen == changes


def test_a_listing_replaces_the_cache_and_reports_what_went_while_unwatched() -> None:
    seen: list[tuple[str, str]] = []
    c = cache(seen)
    c.replace("", [pod("a-1", 1, app="a"), pod("a-2", 2, app="a"), pod("b-1", 3, app="b")])
    assert sorted(seen) == [("ADDED", "a-1"), ("ADDED", "a-2"), ("ADDED", "b-1")]
    seen.clear()
    # the watch was lost: a-2 went, b-1 changed, a-1 did not, c-1 came
    c.replace("", [pod("a-1", 1, app="a"), pod("b-1", 6, app="a"), pod("c-1", 7, app="c")])
    assert sorted(seen) == [("ADDED", "c-1"), ("DELETED", "a-2"), ("MODIFIED", "b-1")]
    assert sorted(p["metadata"]["name"] for p in c.pods("shop", {"app": "a"})) == ["a-1", "b-1"]
    assert len(c) == 3
    assert c.relists == 1


def test_reads_wait_for_every_scope_before_answering_from_memory() -> None:
    c = informer.PodCache(cast(apply.Writer, None), ("shop", "other"))
    c.replace("shop", [pod("a-1", 1, app="a")])
    assert not c.synced()  # "other" not listed yet: reads still go to the API
    c.replace("other", [])
    assert c.synced()
    assert [p["metadata"]["name"] for p in c.pods("shop", {"app": "a"})] == ["a-1"]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/api/v1/namespaces/shop/pods", "pods"),
        ("/api/v1/pods?limit=500", "pods"),
        ("/apis/meshplug.io/v1alpha1/namespaces/shop/wasmplugins/hdr/status", "wasmplugins/status"),
        ("/apis/meshplug.io/v1alpha1/namespaces/shop/wasmplugins/hdr", "wasmplugins"),
        ("/apis/extensions.istio.io/v1alpha1", "discovery"),
        ("/api/v1/namespaces/shop", "namespaces"),
    ],
)
def test_api_requests_are_counted_by_resource(path: str, expected: str) -> None:
    assert apply._resource_of(path) == expected


def owned(name: str, version: int, namespace: str = "shop", **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": namespace, "resourceVersion": str(version), "labels": labels}}


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        # a write of ours is seen at once; the watch's older event for it does not take it back, its own does
        ([("note", owned("ef", 5, app="a")), ("MODIFIED", owned("ef", 4, app="b"))], {"ef": "5"}),
        ([("note", owned("ef", 5, app="a")), ("MODIFIED", owned("ef", 6, app="a"))], {"ef": "6"}),
        # a note older than what the watch brought is not kept
        ([("MODIFIED", owned("ef", 7, app="a")), ("note", owned("ef", 5, app="a"))], {"ef": "7"}),
        # a delete of ours is gone at once; the watch's DELETED changes nothing more
        ([("forget", owned("ef", 3)), ("DELETED", owned("ef", 8))], {}),
        ([("ADDED", owned("other", 9, namespace="else"))], {"ef": "3", "other": "9"}),
    ],
)
def test_owned_cache_holds_the_newest_of_the_watch_and_our_writes(
    steps: list[tuple[str, dict[str, Any]]], expected: dict[str, str]
) -> None:
    c = informer.OwnedCache(cast(apply.Writer, None), "v1", "ConfigMap", (), label_selector="x=y")
    c.replace("", [owned("ef", 3, app="a")])
    for step, obj in steps:
        if step == "note":
            c.note(obj)
        elif step == "forget":
            c.forget(obj["metadata"]["namespace"], obj["metadata"]["name"])
        else:
            c.apply_event({"type": step, "object": obj})
    got = {o["metadata"]["name"]: o["metadata"]["resourceVersion"] for o in c.objects("", {})}
    assert got == expected


@pytest.mark.parametrize(
    ("namespace", "selector", "name", "expected"),
    [
        ("shop", {"app": "a"}, "", ["a-1", "a-2"]),
        ("shop", {"app": "a"}, "a-2", ["a-2"]),
        ("shop", {}, "b-1", ["b-1"]),
        ("shop", {"app": "b"}, "a-1", []),
        ("", {"app": "a"}, "", ["a-1", "a-2", "a-9"]),
    ],
)
def test_owned_cache_reads_by_namespace_labels_and_name(
    namespace: str, selector: dict[str, str], name: str, expected: list[str]
) -> None:
    c = informer.OwnedCache(cast(apply.Writer, None), "v1", "ConfigMap", (), label_selector="x=y")
    c.replace("", [owned("a-1", 1, app="a"), owned("a-2", 2, app="a"), owned("b-1", 3, app="b")])
    c.replace("", [*c.objects("", {}), owned("a-9", 4, namespace="other", app="a")])
    got = sorted(o["metadata"]["name"] for o in c.objects(namespace, selector, name=name))
    assert got == expected


@pytest.mark.parametrize(
    ("puts", "expected"),
    [
        (["3", "5"], "5"),
        (["5", "3"], "5"),  # a watch event behind a status write of ours
        (["5", "5"], "5"),
        (["x", "3"], "3"),  # not a number: the latest put wins
    ],
)
def test_latest_keeps_the_newest_version(puts: list[str], expected: str) -> None:
    store = informer.Latest()
    for version in puts:
        store.put(("shop", "p"), {"metadata": {"name": "p", "resourceVersion": version}})
    held = store.get(("shop", "p"))
    assert held is not None and held["metadata"]["resourceVersion"] == expected
    store.drop(("shop", "p"))
    assert store.get(("shop", "p")) is None


def config_map(modules: dict[str, str], **annotations: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "m", "namespace": "shop", "annotations": annotations, "managedFields": [{"m": 1}]},
        "binaryData": modules,
    }


@pytest.mark.parametrize(
    ("existing", "desired", "same"),
    [
        (config_map({"a.wasm": "QUJD"}, d="a"), config_map({"a.wasm": "QUJD"}, d="a"), True),
        (config_map({"a.wasm": "QUJD"}, d="a"), config_map({"a.wasm": "QUJE"}, d="a"), False),  # other bytes
        (config_map({"a.wasm": "QUJD"}, d="a"), config_map({"a.wasm": "QUJD", "b.wasm": "QQ=="}, d="a"), False),
        (config_map({"a.wasm": "QUJD"}, d="a"), config_map({"a.wasm": "QUJD"}, d="b"), False),  # an annotation
    ],
)
def test_a_cached_config_map_keeps_its_modules_digests_and_compares_as_the_whole(
    existing: dict[str, Any], desired: dict[str, Any], same: bool
) -> None:
    cached = istio_configmap.trimmed(existing)
    assert "binaryData" not in cached and "managedFields" not in cached["metadata"]
    assert istio_configmap.trimmed(cached) == cached  # trimming what the cache holds changes nothing
    assert istio_configmap.same(cached, desired) is same
    assert istio_configmap.same(existing, desired) is same  # as read from the API: the same answer


class _Discovery(apply.Writer):
    """The writer's discovery memory over a counted answer (no API server: what is under test is the memory)."""

    def __init__(self) -> None:
        super().__init__(cast(Any, None))
        self.asked = 0

    def _served(self, api_version: str) -> frozenset[str]:
        self.asked += 1
        return frozenset({f"answer-{self.asked}"})


@pytest.mark.parametrize(
    ("calls", "asked", "last"),
    [
        # remembered: later calls without `since` are answered from memory
        ([None, None, None], 1, "answer-1"),
        # a change seen after the last answer asks again; one seen before it does not
        (["after", "before"], 2, "answer-2"),
        (["before", "before"], 1, "answer-1"),
    ],
)
def test_api_discovery_is_asked_again_only_for_a_change_seen_after_the_last_answer(
    calls: list[str | None], asked: int, last: str
) -> None:
    writer = _Discovery()
    before = time.monotonic()
    writer.served("x.io/v1")  # the first answer, sent after `before`
    answer: frozenset[str] = frozenset()
    for call in calls:
        since = None if call is None else (before if call == "before" else time.monotonic())
        answer = writer.served("x.io/v1", since=since)
    assert writer.asked == asked
    assert answer == {last}

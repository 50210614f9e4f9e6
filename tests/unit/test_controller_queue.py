"""meshplug.controller's kopf-free parts in process: the work queue, the watch index, agent targets, RBAC rules."""

from __future__ import annotations

import functools
import random
import threading
from types import SimpleNamespace
from typing import Any, cast

import pytest

from meshplug import controller, errors
from meshplug.controller import agents, handlers, index, webhooks, workqueue


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("adds", "expected"),
    [
        ([("a", 0.0), ("a", 0.0)], [("ns", "a")]),  # de-duplicated
        ([("a", 5.0), ("b", 0.0)], [("ns", "b")]),  # a is not due yet
        ([("a", 5.0), ("a", 0.0)], [("ns", "a")]),  # the earlier due time wins
        ([("a", 0.0), ("a", 5.0)], [("ns", "a")]),  # a later add does not delay it
    ],
)
def test_queue_dedupes_and_delays(adds: list[tuple[str, float]], expected: list[tuple[str, str]]) -> None:
    clock = Clock()
    q = workqueue.WorkQueue(clock=clock)
    for name, after in adds:
        q.add(("ns", name), after=after)
    got = []
    for _ in expected:
        key = q.get()
        assert key is not None
        got.append(key)
        q.done(key)
    assert got == expected
    assert q.pending() == len({n for n, _ in adds}) - len(expected)


def test_key_added_while_running_runs_again_afterwards_never_twice_at_once() -> None:
    q = workqueue.WorkQueue()
    q.add(("ns", "a"))
    assert q.get() == ("ns", "a")
    q.add(("ns", "a"))  # while it runs: dirty, not handed out
    assert q.pending() == 1
    q.done(("ns", "a"))
    assert q.get() == ("ns", "a")
    q.done(("ns", "a"))
    assert q.pending() == 0


def test_hold_waits_for_the_running_worker_and_shutdown_releases_get() -> None:
    q = workqueue.WorkQueue()
    q.add(("ns", "a"))
    key = q.get()
    assert key is not None
    assert q.hold(key, timeout=0.05) is False  # a worker runs it
    threading.Timer(0.05, q.done, args=(key,)).start()
    assert q.hold(key, timeout=10) is True
    q.done(key)
    threading.Timer(0.05, q.shutdown).start()
    assert q.get() is None


def test_hold_returns_false_at_once_on_shutdown() -> None:
    q = workqueue.WorkQueue()
    q.add(("ns", "a"))
    key = q.get()
    assert key is not None
    entered = threading.Event()
    result: list[bool] = []

    def holder() -> None:
        entered.set()
        result.append(q.hold(key, timeout=3600))

    t = threading.Thread(target=holder, daemon=True)
    t.start()
    entered.wait()
    q.shutdown()
    t.join()  # a delete handler holding a key does not keep a stopping operator for the hold's timeout
    assert result == [False]


def test_pool_maps_in_order_and_reraises() -> None:
    pool = workqueue.Pool(3, "t")
    try:
        assert pool.map(lambda x: x * 2, range(10)) == [x * 2 for x in range(10)]
        with pytest.raises(ZeroDivisionError):
            pool.map(lambda x: 1 // x, [1, 0, 2])
        assert all(t.daemon for t in pool._threads) and len(pool._threads) <= 3
    finally:
        pool.close()


def _meet(barrier: threading.Barrier, item: int) -> int:
    barrier.wait()
    return item


@pytest.mark.parametrize("rounds", [1, 3])
def test_pool_runs_a_burst_at_once(rounds: int) -> None:
    # pushes to several pods go out together: each call waits for all the others (a barrier), which only
    # completes when they run at once -- also on threads left idle by an earlier burst
    pool = workqueue.Pool(4, "t")
    try:
        for _ in range(rounds):
            barrier = threading.Barrier(3, timeout=30)
            assert pool.map(functools.partial(_meet, barrier), [1, 2, 3]) == [1, 2, 3]
        assert len(pool._threads) == 3
    finally:
        pool.close()


def test_pool_close_abandons_a_blocked_call_and_refuses_new_work() -> None:
    pool = workqueue.Pool(2, "t")
    started, never = threading.Event(), threading.Event()
    raised: list[BaseException] = []

    def blocked(_: int) -> int:
        started.set()
        never.wait()  # an agent that does not answer
        return 1

    def caller() -> None:
        try:
            pool.map(blocked, [1, 2, 3])
        except workqueue.ShuttingDown as exc:
            raised.append(exc)

    t = threading.Thread(target=caller, daemon=True)
    t.start()
    started.wait()
    pool.close()
    t.join()  # the waiting caller is released although the call still blocks
    assert len(raised) == 1
    with pytest.raises(workqueue.ShuttingDown):
        pool.map(lambda x: x, [1])
    never.set()


def pod(name: str, labels: dict[str, str], ns: str = "ns", **status: Any) -> dict[str, Any]:
    return {"metadata": {"namespace": ns, "name": name, "labels": labels}, "status": status}


def plugin(
    name: str, selector: dict[str, str] | None, generation: int = 1, plane: str = "agent", ns: str = "ns", **more: Any
) -> dict[str, Any]:
    spec: dict[str, Any] = {"url": "oci://reg/p:v1", "dataPlane": plane, **more}
    if selector is not None:
        spec["selector"] = {"matchLabels": selector}
    return {"metadata": {"namespace": ns, "name": name, "generation": generation}, "spec": spec}


def test_index_maps_events_to_the_plugins_they_concern() -> None:
    idx = index.Index()
    assert idx.plugin_event(None, plugin("cart", {"app": "cart"})) == [("ns", "cart")]  # new: reconcile
    assert idx.plugin_event("MODIFIED", plugin("cart", {"app": "cart"})) == []  # status write: same generation
    assert idx.plugin_event("MODIFIED", plugin("cart", {"app": "cart"}, generation=2)) == [("ns", "cart")]
    assert idx.plugin_event(None, plugin("all", None)) == [("ns", "all")]
    # pods: appear, unchanged, get an IP, change labels (old and new selectors both count), go
    assert idx.pod_event("ADDED", pod("p", {"app": "cart"})) == [("ns", "all"), ("ns", "cart")]
    assert idx.pod_event("MODIFIED", pod("p", {"app": "cart"})) == []
    assert idx.pod_event("MODIFIED", pod("p", {"app": "cart"}, podIP="10.0.0.9")) == [("ns", "all"), ("ns", "cart")]
    moved = pod("p", {"app": "other"}, podIP="10.0.0.9")
    assert idx.pod_event("MODIFIED", moved) == [("ns", "all"), ("ns", "cart")]
    assert idx.pod_event("MODIFIED", moved) == []
    assert idx.pod_event("DELETED", moved) == [("ns", "all")]
    assert idx.plugin_event("DELETED", plugin("cart", {"app": "cart"})) == []
    assert idx.plugin("ns", "cart") is None


def test_index_root_namespace_plugins_and_gateway_targets() -> None:
    idx = index.Index("istio-system")
    idx.plugin_event(None, plugin("mesh", {"app": "cart"}, plane="istio", ns="istio-system"))
    idx.plugin_event(None, plugin("mesh-agent", {"app": "cart"}, plane="agent", ns="istio-system"))
    idx.plugin_event(None, plugin("gw", None, plane="istio", targetRefs=[{"kind": "Gateway", "name": "ingress"}]))
    # an istio-plane plugin of the root namespace selects pods of every namespace (the agent plane's does not)
    assert idx.pod_event("ADDED", pod("p", {"app": "cart"}, ns="shop")) == [("istio-system", "mesh")]
    gateway = pod("g", {"gateway.networking.k8s.io/gateway-name": "ingress"})
    assert idx.pod_event("ADDED", gateway) == [("ns", "gw")]
    assert idx.pod_event("ADDED", pod("g", {"gateway.networking.k8s.io/gateway-name": "ingress"}, ns="x")) == []


def test_index_queues_a_plugin_for_its_rollout_annotation_not_for_its_status_or_other_annotations() -> None:
    idx = index.Index()
    body = plugin("hdr", {"app": "cart"})
    assert idx.plugin_event(None, body) == [("ns", "hdr")]
    noted = {**body, "metadata": {**body["metadata"], "annotations": {"owner": "team-a"}}, "status": {"x": 1}}
    assert idx.plugin_event("MODIFIED", noted) == []
    for action, queued in (("abort", True), ("abort", False), ("promote", True), ("", True)):
        notes = {"meshplug.io/rollout": action} if action else {}
        changed = {**body, "metadata": {**body["metadata"], "annotations": notes}}
        assert idx.plugin_event("MODIFIED", changed) == ([("ns", "hdr")] if queued else []), action


def _every_plugin(idx: index.Index, ns: str, labels: list[dict[str, str]]) -> list[Any]:
    """Which plugins select a pod, by looking at every plugin the index holds (what it must answer)."""
    out = []
    for pns, refs in idx._plugins.items():
        for name, ref in refs.items():
            if pns != ns and not (pns == idx.root_namespace and ref.data_plane == "istio"):
                continue
            selected = ref.selects_pods and any(all(lab.get(k) == v for k, v in ref.selector) for lab in labels)
            targeted = pns == ns and any(lab.get(index.GATEWAY_NAME_LABEL) in ref.gateways for lab in labels)
            if selected or targeted:
                out.append((pns, name))
    return sorted(out)


@pytest.mark.parametrize("seed", range(6))
def test_index_answers_as_a_look_at_every_plugin(seed: int) -> None:
    """Random plugins (selectors over a few labels, none, targetRefs; root namespace ones; some changed or deleted
    on the way) and pods: the candidates the index looks at give the same plugins as checking every one."""
    rng = random.Random(seed)
    namespaces = ("istio-system", "a", "b")
    pairs = [("app", "cart"), ("app", "web"), ("tier", "1"), ("tier", "2"), ("zone", "x")]
    idx, bodies = index.Index("istio-system"), {}
    for i in range(60):
        ns, name = rng.choice(namespaces), f"p{i % 40}"
        if rng.random() < 0.1 and (ns, name) in bodies:
            idx.plugin_event("DELETED", bodies.pop((ns, name)))
            continue
        more: dict[str, Any] = {}
        selector: dict[str, str] | None = dict(rng.sample(pairs, rng.randint(0, 2))) or None
        if rng.random() < 0.2:
            more["targetRefs"] = [{"kind": "Gateway", "name": rng.choice(["gw1", "gw2"])}]
            selector = None
        plane = rng.choice(["istio", "agent"])
        body = plugin(name, selector, generation=i, plane=plane, ns=ns, **more)
        idx.plugin_event("MODIFIED", body)
        bodies[(ns, name)] = body
    found = 0
    for j in range(200):
        ns = rng.choice(namespaces)
        labels = [dict(rng.sample([*pairs, (index.GATEWAY_NAME_LABEL, "gw1")], rng.randint(0, 3))) for _ in "ab"]
        expected = _every_plugin(idx, ns, labels)
        assert idx._selecting(ns, labels) == expected, (j, ns, labels)
        found += len(expected)
    assert found > 100  # the draw selects something


@pytest.mark.parametrize(
    ("annotations", "status", "expected"),
    [
        ({}, {}, None),  # no IP yet
        ({}, {"podIP": "10.0.0.5"}, ("10.0.0.5", agents.DEFAULT_PUSH_PORT)),
        ({agents.PUSH_PORT_ANNOTATION: "9911"}, {"podIP": "10.0.0.5"}, ("10.0.0.5", 9911)),
        ({agents.PUSH_PORT_ANNOTATION: "x"}, {"podIP": "10.0.0.5"}, errors.ConfigError),
        ({agents.PUSH_PORT_ANNOTATION: "70000"}, {"podIP": "10.0.0.5"}, errors.ConfigError),
    ],
)
def test_agent_target(annotations: dict[str, str], status: dict[str, str], expected: Any) -> None:
    body = {"metadata": {"namespace": "ns", "name": "p", "annotations": annotations}, "status": status}
    if isinstance(expected, type):
        with pytest.raises(expected):
            agents.target_of(body)
        return
    target = agents.target_of(body)
    assert (None if target is None else (target.ip, target.port)) == expected


def test_rbac_rules_parse_from_the_docstring() -> None:
    rules = {(r.scope, r.api_group, r.resource): r.verbs for r in controller.rbac_rules()}
    assert rules[("watched", "", "pods")] == ("list", "watch")
    assert rules[("own", "coordination.k8s.io", "leases")] == ("get", "create", "update")
    assert {scope for scope, _, _ in rules} <= set(controller.SCOPES)
    assert rules[("cluster", "authentication.k8s.io", "tokenreviews")] == ("create",)
    # each line of the block is a rule: none is skipped by the parser
    block = [line for line in (controller.__doc__ or "").splitlines() if line.startswith("    ") and "  " in line[4:]]
    assert len(block) == len(controller.rbac_rules())


def test_permission_check_reviews_secrets_by_their_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """The start-up check asks for get/update of the operator's two Secrets by name (what the chart grants by
    resourceNames) and for create unnamed; a refusal names the Secret."""
    monkeypatch.delenv(webhooks.CONFIG_ENV, raising=False)  # no caBundle rules to review
    asked: list[tuple[str, str, str, str]] = []

    class Writer:
        def access_review(self, verb: str, group: str, resource: str, namespace: str = "", name: str = "") -> Any:
            asked.append((verb, resource, namespace, name))
            return (resource, verb, name) != ("secrets", "get", "meshplug-agent"), ""

    ident = SimpleNamespace(agent_secret_name="meshplug-agent", secret="mp-meshplug-identity")
    reconciler = SimpleNamespace(writer=Writer(), identity=ident)
    opts = handlers.Options(
        namespaces=(), liveness_endpoint=None, reresolve_s=None, lease_namespace="ops", identity="x"
    )
    missing = handlers.check_permissions(cast(Any, reconciler), opts)
    secrets = {a for a in asked if a[1] == "secrets"}
    assert secrets == {
        ("create", "secrets", "", ""),
        ("get", "secrets", "", "meshplug-agent"),
        ("update", "secrets", "", "meshplug-agent"),
        ("create", "secrets", "ops", ""),
        ("get", "secrets", "ops", "mp-meshplug-identity"),
        ("update", "secrets", "ops", "mp-meshplug-identity"),
    }
    assert missing == ["get secrets meshplug-agent cluster-wide"]

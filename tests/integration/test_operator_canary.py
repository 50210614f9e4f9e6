"""Canary rollouts on the agent plane, end to end and under load: `meshplug operator` (a process) against the real
kube-apiserver, four pods whose agents are real processes (at 127.0.0.x, as in test_operator_agent) in front of one
echo app, and a client sending a steady stream of requests round-robin over the pods' agents on keep-alive
connections, counting every answer per pod.

A good update (v1 -> v2) goes through both steps (25 %, then 50 % of the pods) and is promoted; a bad one (answers
503 itself) and another bad one (traps: FAIL_CLOSE answers 503) are rolled back to v2 by the operator alone. The
client must see 0 failed requests but the bad versions' own 503s, and those only from the pods the status named as
canaries, at most the requests those pods got. Status and Events show each step. A slow version (the corpus'
rust/auth_call, whose new pluginConfig sends its HTTP call to a dependency that answers after 1.5 s: it waits,
burning no CPU) goes first to the pod labelled for it and is rolled back by its request time alone, with every
request answered 200. An operator restart in
the middle of a step goes on with the same step's window of stats (status.rollout.window). An istio-plane plugin
with ``rollout`` is told that rollout applies to the agent plane only.
"""

from __future__ import annotations

import hashlib
import http.client
import itertools
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import wasmtime

from tests.corpus import modules as corpus_modules
from tests.guests import minimal
from tests.testbed import agentplane, procs
from tests.testbed import kube as kube_mod
from tests.testbed import operator as operator_mod
from tests.testbed import upstream as upstream_mod

pytestmark = pytest.mark.integration

V1 = minimal.passthrough('(data (i32.const 2048) "v1")')
V2 = minimal.passthrough('(data (i32.const 2048) "v2")')
_HOSTS = itertools.count(150)
PODS = ("a", "b", "c", "d")
ROLLOUT = {
    "steps": [{"percent": 25}, {"percent": 50}],
    "holdSeconds": 4,
    # the request time bound has room for this shared machine's noise (its comparison is unit-tested)
    "analysis": {"minRequests": 15, "maxFailureRatioIncrease": 0.02, "latencySlackMs": 250},
}


def _guest(request_headers: str, imports: str = "") -> bytes:
    """A module that starts and configures, with ``request_headers`` as its proxy_on_request_headers body."""
    wat = f"""(module
 {imports}
 (memory (export "memory") 1)
 (data (i32.const 2048) "bad-canary")
 (func (export "proxy_abi_version_0_2_1"))
 (func (export "malloc") (param i32) (result i32) i32.const 4096)
 (func (export "proxy_on_context_create") (param i32 i32))
 (func (export "proxy_on_vm_start") (param i32 i32) (result i32) i32.const 1)
 (func (export "proxy_on_configure") (param i32 i32) (result i32) i32.const 1)
 (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) {request_headers})
 (func (export "proxy_on_done") (param i32) (result i32) i32.const 1)
 (func (export "proxy_on_delete") (param i32)))"""
    return bytes(wasmtime.wat2wasm(wat))


#: answers every request 503 "bad-canary" itself (a local reply)
BAD_5XX = _guest(
    "(drop (call $reply (i32.const 503) (i32.const 0) (i32.const 0) (i32.const 2048) (i32.const 10)"
    " (i32.const 0) (i32.const 0) (i32.const -1))) (i32.const 1)",
    '(import "env" "proxy_send_local_response" (func $reply (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))',
)
#: traps on every request (FAIL_CLOSE: the agent answers 503)
BAD_TRAP = _guest("unreachable")


@dataclass
class Tally:
    """What the client saw, per pod: answers by status, and every failure with its detail."""

    sent: dict[str, int] = field(default_factory=dict)
    ok: dict[str, int] = field(default_factory=dict)
    bad_canary: dict[str, int] = field(default_factory=dict)  # 503s of the bad versions
    failures: list[tuple[str, str]] = field(default_factory=list)  # (pod, what): anything else
    bad_bodies: dict[str, bytes] = field(default_factory=dict)  # the first bad-canary answer's body per pod
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, table: dict[str, int], pod: str) -> None:
        with self.lock:
            table[pod] = table.get(pod, 0) + 1

    def total(self, table: dict[str, int]) -> int:
        with self.lock:
            return sum(table.values())


class Load:
    """A steady client: ``connections`` threads per pod, each on a keep-alive connection to that pod's agent, at a
    fixed rate (``rate_per_pod`` over them); every answer is counted. A 503 counts as the bad canary's only while
    ``bad`` is set (a bad version is being rolled out); otherwise, and any other status or error, it is a failure of
    the rollout. ``answered``: per connection, the requests it got an answer to (each connection waits for an answer
    before it sends again)."""

    def __init__(self, ports: dict[str, int], rate_per_pod: float, connections: int = 1) -> None:
        self.ports = ports
        self.interval = connections / rate_per_pod
        self.tally = Tally()
        self.bad = threading.Event()
        self.stop = threading.Event()
        self.answered = [0] * (len(ports) * connections)
        self.threads = [
            threading.Thread(target=self._run, args=(pod, i * connections + c), daemon=True)
            for i, pod in enumerate(ports)
            for c in range(connections)
        ]

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)

    def after_now(self, answers: int) -> Callable[[], bool]:
        """A predicate: every connection got ``answers`` more answers since this call (with 2, at least one to a
        request it sent after this call)."""
        marks = list(self.answered)
        return lambda: all(now >= then + answers for now, then in zip(self.answered, marks, strict=True))

    def _run(self, pod: str, slot: int) -> None:
        conn: http.client.HTTPConnection | None = None
        next_at = time.monotonic()
        while not self.stop.is_set():
            next_at += self.interval
            self.stop.wait(max(0.0, next_at - time.monotonic()))  # the rate, not a synchronisation
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.ports[pod], timeout=10)
            self.tally.add(self.tally.sent, pod)
            try:
                conn.request("GET", f"/load/{pod}", headers={"host": "app"})
                resp = conn.getresponse()
                body = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                self.tally.failures.append((pod, f"{type(exc).__name__}: {exc}"))
                conn.close()
                conn = None
                continue
            finally:
                self.answered[slot] += 1
            if resp.status == 200:
                self.tally.add(self.tally.ok, pod)
            elif resp.status == 503 and self.bad.is_set():
                self.tally.add(self.tally.bad_canary, pod)
                self.tally.bad_bodies.setdefault(pod, body[:100])
            else:
                self.tally.failures.append((pod, f"HTTP {resp.status}: {body[:80]!r}"))
            if resp.will_close:
                conn.close()
                conn = None
        if conn is not None:
            conn.close()


@dataclass
class Bed(agentplane.AgentPlane):
    """The agent plane of these tests: pods at 127.0.0.150 and up in front of one echo app (also the plugins' HTTP
    calls' cluster ``upstream``)."""

    app: upstream_mod.Service | None = None

    def running(self, pod: str) -> str:
        """The sha256 of plugin hdr the pod's agent runs ("" if none)."""
        plugins = self.agents[pod].config_dump()["plugins"]
        return next((p["sha256"] for p in plugins if p["name"] == f"{self.ns}.hdr"), "")


def condition(st: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in st.get("conditions") or [] if c["type"] == kind), {})


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def bed(kube: kube_mod.Kube, wasmplugin_crd: str, kube_namespace: str, tmp_path: Path) -> Iterator[Bed]:
    app = upstream_mod.start_service("echo", log_dir=tmp_path / "logs", name="app")
    b = Bed.start(kube, kube_namespace, tmp_path, _HOSTS, app_port=app.port, app=app, log_level="info")
    try:
        yield b
    finally:
        b.stop()
        app.stop()
        print(b.op.proc.log()[-12000:])


def roll(bed: Bed, name: str, data: bytes, *, until: str, canaries: set[str], timeout: float = 120) -> dict[str, Any]:
    """Point hdr at module ``data``; wait until status.rollout.phase is ``until`` for it (noting every pod named a
    canary on the way)."""
    return update(bed, {"url": bed.module(name, data)}, sha(data), until=until, canaries=canaries, timeout=timeout)


def update(
    bed: Bed,
    patch: dict[str, Any],
    digest: str,
    *,
    until: str,
    canaries: set[str],
    timeout: float = 120,
    seen: list[tuple[str, int, str]] | None = None,
) -> dict[str, Any]:
    """Patch hdr's spec with ``patch`` (a version of module ``digest``, hex); wait until status.rollout.phase is
    ``until`` for it (noting every pod named a canary on the way, and in ``seen`` each (phase, step, verdict) the
    status showed, once per change)."""
    before = (bed.status("hdr").get("rollout") or {}).get("history") or []
    bed.patch_plugin("hdr", patch)
    digest = f"sha256:{digest}"
    st: dict[str, Any] = {}

    def done() -> bool:
        nonlocal st
        st = bed.status("hdr")
        rollout = st.get("rollout") or {}
        canaries.update(rollout.get("canaryPods") or [])
        verdict = str((rollout.get("analysis") or {}).get("verdict"))
        look = (str(rollout.get("phase")), int(rollout.get("step") or 0), verdict)
        if seen is not None and (not seen or seen[-1] != look):
            seen.append(look)
        return (rollout.get("canary") or {}).get("digest") == digest and rollout.get("phase") == until

    try:
        procs.wait_until(done, timeout=timeout, interval=0.2, what=f"rollout of {digest[:19]} to reach {until}")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; status: {json.dumps(st)[:3000]}") from None
    # the status' history names each step's pods (a bad version may be rolled back between two looks)
    since = len(before)
    canaries.update(p for h in st["rollout"]["history"][since:] for p in h.get("canaryPods") or [])
    return st


def rollout_annotation(bed: Bed, name: str, verb: str) -> None:
    """Set the plugin's meshplug.io/rollout annotation (abort, promote) as a user's kubectl annotate does."""
    status, out = bed.kube.request(
        "PATCH",
        f"{agentplane.PLUGINS.format(ns=bed.ns)}/{name}",
        {"metadata": {"annotations": {"meshplug.io/rollout": verb}}},
        content_type="application/merge-patch+json",
    )
    assert status == 200, out


def test_a_good_version_rolls_through_and_bad_ones_roll_back_under_load(bed: Bed) -> None:
    for name in PODS:
        bed.pod(name, {"app": "cart"})
    bed.apply(
        "hdr",
        {
            "url": bed.module("v1.wasm", V1),
            "selector": {"matchLabels": {"app": "cart"}},
            "dataPlane": "agent",
            "rollout": ROLLOUT,
        },
    )
    procs.wait_until(
        lambda: condition(bed.status("hdr"), "Ready").get("reason") == "Confirmed", timeout=90, what="v1 Ready"
    )
    st = bed.status("hdr")
    assert st["rollout"]["phase"] == "Initialized" and st["rollout"]["stable"]["digest"] == f"sha256:{sha(V1)}"
    assert condition(st, "RolledOut")["status"] == "True"

    ports = {name: bed.agents[name].port for name in PODS}
    canaries: dict[str, set[str]] = {"good": set(), "5xx": set(), "trap": set()}
    with Load(ports, rate_per_pod=25) as load:
        # a good version: both steps, then every pod
        st = roll(bed, "v2.wasm", V2, until="Promoted", canaries=canaries["good"])
        assert condition(st, "Ready")["status"] == "True" and condition(st, "RolledOut")["reason"] == "Promoted"
        assert st["rollout"]["stable"]["digest"] == f"sha256:{sha(V2)}" and st["rollout"]["canaryPods"] == []
        assert [h["result"] for h in st["rollout"]["history"][-2:]] == ["Passed", "Promoted"]
        assert all(bed.running(p) == sha(V2) for p in PODS)
        before_bad = load.tally.total(load.tally.ok)

        # bad versions: the operator rolls each back to v2 by itself
        load.bad.set()
        for label, bad in (("5xx", BAD_5XX), ("trap", BAD_TRAP)):
            st = roll(bed, f"bad-{label}.wasm", bad, until="RolledBack", canaries=canaries[label])
            ready = condition(st, "Ready")
            assert (ready["status"], ready["reason"]) == ("False", "RolledBack"), st
            assert "failure ratio" in st["rollout"]["message"] and st["rollout"]["canaryPods"] == []
            assert st["rollout"]["analysis"]["verdict"] == "Failed"
            assert st["rollout"]["stable"]["digest"] == f"sha256:{sha(V2)}"
            procs.wait_until(lambda: all(bed.running(p) == sha(V2) for p in PODS), timeout=30, what="v2 everywhere")
        load.bad.clear()
        # the stable version keeps serving, with no failure, after the rollbacks
        served = load.tally.total(load.tally.ok)
        procs.wait_until(lambda: load.tally.total(load.tally.ok) > served + 100, timeout=60, what="more requests")

    tally = load.tally
    print(f"sent {tally.total(tally.sent)}, ok {tally.total(tally.ok)}, bad canary {tally.bad_canary}")
    assert tally.failures == [], tally.failures[:10]  # 0 failed requests attributable to the rollout
    assert tally.total(tally.ok) > before_bad > 0
    # the bad versions' own 503s came only from pods the status named as their canaries (one of four: 25 %),
    # and never more than those pods were sent
    bad_pods = canaries["5xx"] | canaries["trap"]
    assert tally.bad_canary and set(tally.bad_canary) <= bad_pods, (tally.bad_canary, canaries, tally.bad_bodies)
    assert len(canaries["5xx"]) == len(canaries["trap"]) == 1 and len(canaries["good"]) == 2
    for pod, count in tally.bad_canary.items():
        assert count <= tally.sent[pod]
    assert tally.total(tally.bad_canary) < tally.total(tally.sent) * 0.25

    # `meshplug status`, as a kubectl user runs it: the rollout, and each pod on the stable version it runs
    argv = [sys.executable, "-m", "meshplug", "status", "hdr", "-n", bed.ns, "-o", "json"]
    shown = subprocess.run(
        [*argv, "--kubeconfig", str(bed.kube.kubeconfig)], capture_output=True, text=True, timeout=60, check=False
    )
    assert shown.returncode == 1, shown.stderr  # not Ready: rolled back
    report = json.loads(shown.stdout)
    assert report["rollout"]["phase"] == "RolledBack" and report["reason"] == "RolledBack"
    assert {p["pod"]: p["digest"] for p in report["podStatus"]} == {p: f"sha256:{sha(V2)}" for p in PODS}
    # the operator wrote the status only: no drift for a GitOps tool owning the object
    managed = bed.get("hdr")["metadata"]["managedFields"]
    assert {m.get("subresource", "") for m in managed if m["manager"] == "meshplug"} == {"status"}, managed

    events = {(t, r): count for t, r, _, count in bed.events("hdr")}
    assert events[("Normal", "RolloutStarted")] == 3 and events[("Normal", "RolloutStep")] == 1, events
    assert events[("Normal", "RolloutPromoted")] == 1 and events[("Warning", "RolloutRolledBack")] == 2, events


#: the slow dependency's delay: the new version's request time lands in the 1000-2500 ms bucket, far past the bound
SLOW_MS = 1500
#: latency judged on p90 (10 requests a side make one; p99 needs 100 through the slow canary pod)
SLOW_ROLLOUT = {
    "steps": [{"selector": {"matchLabels": {"track": "canary"}}}, {"percent": 50}],  # first the pods so labelled
    "holdSeconds": 120,  # a step cannot pass before its latency is judged
    "analysis": {"minRequests": 10, "latencyPercentile": 90, "maxLatencyRatio": 2, "latencySlackMs": 250},
}


def auth_call(path: str) -> dict[str, Any]:
    """rust/auth_call's pluginConfig: each request waits for an HTTP call to ``path`` of cluster upstream (the echo
    app; `/__slow/MS` answers after MS ms), then goes on (the echo answers 200)."""
    return {"cluster": "upstream", "path": path, "timeout_ms": 10_000}


def test_a_slower_version_is_rolled_back_by_its_request_time_under_load(bed: Bed) -> None:
    module = corpus_modules.module("rust/auth_call")
    for name in PODS:
        bed.pod(name, {"app": "cart", **({"track": "canary"} if name == "c" else {})})
    bed.apply(
        "hdr",
        {
            "url": bed.module("auth_call.wasm", module.path.read_bytes()),
            "pluginConfig": auth_call("/__health"),
            "selector": {"matchLabels": {"app": "cart"}},
            "dataPlane": "agent",
            "rollout": SLOW_ROLLOUT,
        },
    )
    procs.wait_until(
        lambda: condition(bed.status("hdr"), "Ready").get("reason") == "Confirmed", timeout=90, what="v1 Ready"
    )
    assert bed.app is not None

    def slow_calls() -> int:
        """The HTTP calls the slow dependency answered (its access log; written before the answer is sent)."""
        assert bed.app is not None
        return bed.app.proc.log().count(f"GET /__slow/{SLOW_MS} ")

    ports = {name: bed.agents[name].port for name in PODS}
    canaries: set[str] = set()
    seen: list[tuple[str, int, str]] = []
    with Load(ports, rate_per_pod=20, connections=4) as load:
        procs.wait_until(load.after_now(2), timeout=60, what="the client's first answers")
        # the new version: the same module, whose call now goes to a dependency that answers after SLOW_MS
        st = update(
            bed,
            {"pluginConfig": auth_call(f"/__slow/{SLOW_MS}")},
            module.sha256,
            until="RolledBack",
            canaries=canaries,
            seen=seen,
        )
        procs.wait_until(
            lambda: (
                condition(bed.status("hdr"), "Ready").get("reason") == "RolledBack"
                and (bed.status("hdr").get("pods") or {}).get("summary") == "4/4"
            ),
            timeout=60,
            what="every pod's agent confirmed the stable version again",
        )
        # every connection got an answer to a request it sent after that: none of them still waits on the slow
        # dependency; from then on nothing calls it
        procs.wait_until(load.after_now(2), timeout=60, what="answers after the rollback")
        calls = slow_calls()
        procs.wait_until(load.after_now(5), timeout=60, what="more answers")
        assert slow_calls() == calls > 0

    tally, rollout = load.tally, st["rollout"]
    print(f"sent {tally.total(tally.sent)}, ok {tally.total(tally.ok)}, slow calls {calls}, seen {seen}")
    print(f"rolled back: {rollout['message']}")
    assert tally.failures == [], tally.failures[:10]  # slow, but not one request failed
    assert tally.total(tally.ok) == tally.total(tally.sent) > 0
    assert canaries == {"c"}, canaries  # the label-selected step: the one pod labelled track=canary
    # status showed the step holding, then the rollback by the request time alone
    assert ("Progressing", 1, "Holding") in seen and seen[-1] == ("RolledBack", 0, "Failed"), seen
    analysis = rollout["analysis"]
    assert rollout["message"].startswith("p90 request time") and analysis["verdict"] == "Failed", rollout
    assert analysis["canary"]["failures"] == analysis["stable"]["failures"] == 0, analysis
    assert analysis["canary"]["latencyMs"] > 2 * analysis["stable"]["latencyMs"], analysis
    # read on the agents' buckets around a second ((1250, 1600], (1600, 2000]): close to the dependency's 1.5 s, where
    # Envoy's default buckets, (1000, 2500], read 2350 ms whatever the requests took in there
    assert SLOW_MS <= analysis["canary"]["latencyMs"] <= 2000, analysis
    last = rollout["history"][-1]
    assert (last["step"], last["result"], last["canaryPods"]) == (1, "RolledBack", sorted(canaries)), last
    assert rollout["canaryPods"] == [] and rollout.get("window") is None
    events = {(t, r): m for t, r, m, _ in bed.events("hdr")}
    assert events[("Normal", "RolloutStarted")].endswith("step 1/2 on c"), events
    assert "p90 request time" in events[("Warning", "RolloutRolledBack")], events


def test_rollout_on_the_istio_plane_says_it_applies_to_the_agent_plane_only(bed: Bed) -> None:
    bed.apply("mesh", {"url": bed.module("v1.wasm", V1), "rollout": ROLLOUT})

    def told() -> bool:
        return condition(bed.status("mesh"), "RolledOut").get("reason") == "AgentPlaneOnly"

    procs.wait_until(told, timeout=60, what="RolledOut=False AgentPlaneOnly")
    st = bed.status("mesh")
    assert condition(st, "RolledOut")["status"] == "False" and "rollout" not in st
    assert "dataPlane agent only" in condition(st, "RolledOut")["message"]
    # the Event follows the status write (status first, Events best effort): wait for it, not just the condition
    procs.wait_until(
        lambda: ("Warning", "AgentPlaneOnly") in {(t, r) for t, r, _, _ in bed.events("mesh")},
        timeout=30,
        what="the AgentPlaneOnly Event",
    )


def test_a_rollout_goes_on_after_an_operator_restart_and_the_annotation_aborts_and_promotes(bed: Bed) -> None:
    for name in PODS:
        bed.pod(name, {"app": "cart"})
    slow = {**ROLLOUT, "holdSeconds": 120}  # the step holds past the restart; the annotation promotes it
    bed.apply(
        "hdr",
        {
            "url": bed.module("v1.wasm", V1),
            "selector": {"matchLabels": {"app": "cart"}},
            "dataPlane": "agent",
            "rollout": slow,
        },
    )
    procs.wait_until(lambda: condition(bed.status("hdr"), "Ready").get("reason") == "Confirmed", timeout=90, what="v1")
    ports = {name: bed.agents[name].port for name in PODS}
    with Load(ports, rate_per_pod=20) as load:
        bed.patch_plugin("hdr", {"url": bed.module("v2.wasm", V2)})

        def step_one_counting() -> bool:
            rollout = bed.status("hdr").get("rollout") or {}
            analysis = (rollout.get("analysis") or {}).get("canary") or {}
            return (rollout.get("phase"), rollout.get("step")) == ("Progressing", 1) and analysis.get("requests", 0) > 0

        procs.wait_until(step_one_counting, timeout=60, what="step 1's window counting requests")
        bed.op.stop()  # mid-step: the next operator finds the rollout, and the step's window, in the status
        before = bed.status("hdr")["rollout"]
        (canary_pod,) = before["canaryPods"]
        assert before["window"]["step"] == 1 and {p["name"] for p in before["window"]["pods"]} == set(PODS)
        assert bed.running(canary_pod) == sha(V2)
        assert all(bed.running(p) == sha(V1) for p in PODS if p != canary_pod)
        bed.op = operator_mod.start_operator(
            bed.kube.kubeconfig,
            bed.work,
            namespaces=[bed.ns],
            extra=[f"--file-root={bed.modules}"],
            module_ports=(bed.op.module_port, bed.op.module_tls_port),
        )
        counted = before["analysis"]["canary"]["requests"]

        def new_look() -> bool:
            analysis: dict[str, Any] = (bed.status("hdr").get("rollout") or {}).get("analysis") or {}
            return bool(analysis != before["analysis"])

        procs.wait_until(new_look, timeout=60, what="the new operator's look at step 1")
        after = bed.status("hdr")["rollout"]
        # the same step on the same pod, in the same window: its start and baseline as before, its counts going on
        # from the requests the canary got before the restart (and while no operator ran)
        assert (after["phase"], after["step"], after["canaryPods"]) == ("Progressing", 1, [canary_pod]), after
        assert (after["stepStarted"], after["window"]) == (before["stepStarted"], before["window"]), after
        assert after["analysis"]["canary"]["requests"] > counted, (after["analysis"], before["analysis"])
        rollout_annotation(bed, "hdr", "promote:v2")
        procs.wait_until(
            lambda: (bed.status("hdr").get("rollout") or {}).get("phase") == "Promoted", timeout=120, what="promoted"
        )
        assert all(bed.running(p) == sha(V2) for p in PODS)
        assert bed.status("hdr")["rollout"].get("window") is None

        # the annotation aborts a rollout in progress: every pod back on the stable version (v2)
        v3 = minimal.passthrough('(data (i32.const 2048) "v3")')
        bed.patch_plugin("hdr", {"url": bed.module("v3.wasm", v3)})
        procs.wait_until(step_one_counting, timeout=60, what="step 1 of v3")
        rollout_annotation(bed, "hdr", "abort")
        procs.wait_until(
            lambda: (bed.status("hdr").get("rollout") or {}).get("phase") == "Aborted", timeout=60, what="aborted"
        )
        procs.wait_until(lambda: all(bed.running(p) == sha(V2) for p in PODS), timeout=30, what="v2 everywhere")
        ready = condition(bed.status("hdr"), "Ready")
        assert (ready["status"], ready["reason"]) == ("False", "Aborted")

        # an aborted rollout looks at nothing by itself (no step to measure): the annotation's change alone,
        # promote, is what the operator acts on -- every pod gets v3
        rollout_annotation(bed, "hdr", "promote:v3")
        procs.wait_until(
            lambda: (bed.status("hdr").get("rollout") or {}).get("phase") == "Promoted", timeout=60, what="promoted"
        )
        procs.wait_until(lambda: all(bed.running(p) == sha(v3) for p in PODS), timeout=30, what="v3 everywhere")

    tally = load.tally
    print(f"sent {tally.total(tally.sent)}, ok {tally.total(tally.ok)}")
    assert tally.failures == [], tally.failures[:10]
    assert tally.total(tally.ok) == tally.total(tally.sent) > 0
    assert ("Warning", "RolloutAborted") in {(t, r) for t, r, _, _ in bed.events("hdr")}

"""The agent data plane end to end: `meshplug operator` (a process) against the real kube-apiserver pushes each
selected pod's full plugin set to real agents (processes at 127.0.0.x, set as the pods' status.podIP through the
status subresource: the test bed has no kubelet), and the WasmPlugin's status reports per-pod confirmation. Each
agent runs as injected: what it mounts is what the operator made (its namespace's agent Secret: mutual TLS and
push tokens) and a ServiceAccount token bound to its pod (the module server checks it with TokenReview).

Covered: Ready only when every selected pod's agent confirmed the digest; chain order across plugins; a NACKing
agent gives reason AgentNACK + an Event, other plugins stay Ready, fixing the cause heals it; pods appearing,
going and no longer matching re-reconcile; an unreachable agent heals by retry once it answers; deleting a plugin
pushes the agents their set without it; metrics count pushes and ready pods; a push token the operator rotates
reaches agents whose mount has the old token or only the new one.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import http.client
import http.server
import itertools
import json
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from meshplug import compiled, limits
from meshplug.controller import identity, pki
from tests.guests import minimal
from tests.testbed import agent as agent_mod
from tests.testbed import agentplane, procs
from tests.testbed import kube as kube_mod
from tests.testbed import operator as operator_mod
from tests.testbed.fixtures_cosign import CosignKit

PLUGINS = agentplane.PLUGINS
GOOD = minimal.passthrough('(data (i32.const 2048) "good")')
GOOD_V2 = minimal.passthrough('(data (i32.const 2048) "good-v2")')
# passes the ABI check, the agent NACKs it
FAILS_TO_START = minimal.passthrough('(data (i32.const 2048) "vm-start-fails")', vm_start=0)
_hosts = itertools.count(2)


class Bed(agentplane.AgentPlane):
    """The agent plane of these tests: pods at 127.0.0.2 and up."""


def running(agent: agent_mod.Agent) -> list[tuple[str, str]]:
    """(plugin name, sha256) the agent runs, in chain order."""
    return [(p["name"], p["sha256"]) for p in agent.config_dump()["plugins"]]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def bed(kube: kube_mod.Kube, wasmplugin_crd: str, kube_namespace: str, tmp_path: Path) -> Iterator[Bed]:
    b = Bed.start(kube, kube_namespace, tmp_path, _hosts)
    try:
        yield b
    finally:
        b.stop()
        print(b.op.proc.log()[-8000:])


def test_agents_confirm_every_pod_in_chain_order_and_follow_pods(bed: Bed) -> None:
    a, b = bed.pod("a", {"app": "cart"}), bed.pod("b", {"app": "cart"})
    assert a is not None and b is not None
    bed.pod("other", {"app": "other"})
    bed.plugin(
        "hdr", {"url": bed.module("hdr.wasm", GOOD), "selector": {"matchLabels": {"app": "cart"}}, "dataPlane": "agent"}
    )
    st = bed.wait_ready("hdr", "True", "Confirmed", "2/2")
    assert st["digest"] == f"sha256:{sha(GOOD)}" and st["failingPods"] == []
    ns = bed.ns
    assert running(a) == running(b) == [(f"{ns}.hdr", sha(GOOD))]
    assert running(bed.agents["other"]) == []

    # a second plugin in an earlier phase goes first in both pods' chains
    bed.plugin(
        "authn",
        {
            "url": bed.module("authn.wasm", GOOD_V2),
            "phase": "AUTHN",
            "selector": {"matchLabels": {"app": "cart"}},
            "dataPlane": "agent",
        },
    )
    bed.wait_ready("authn", "True", "Confirmed", "2/2")
    assert running(a) == [(f"{ns}.authn", sha(GOOD_V2)), (f"{ns}.hdr", sha(GOOD))]

    # a pod appears: re-reconciled without any change to the plugins
    c = bed.pod("c", {"app": "cart"})
    assert c is not None
    bed.wait_ready("hdr", "True", "Confirmed", "3/3")
    procs.wait_until(lambda: len(running(c)) == 2, timeout=60, what="pod c's agent gets both plugins")

    # a pod stops matching: its agent gets an empty set; counts follow
    status, out = bed.kube.request(
        "PATCH",
        f"/api/v1/namespaces/{ns}/pods/c",
        {"metadata": {"labels": {"app": "moved"}}},
        content_type="application/merge-patch+json",
    )
    assert status == 200, out
    bed.wait_ready("hdr", "True", "Confirmed", "2/2")
    procs.wait_until(lambda: running(c) == [], timeout=60, what="pod c's agent emptied")

    # a pod goes
    assert bed.kube.request("DELETE", f"/api/v1/namespaces/{ns}/pods/b?gracePeriodSeconds=0")[0] == 200
    bed.wait_ready("hdr", "True", "Confirmed", "1/1")

    # delete: the finalizer pushes the set without the plugin
    assert bed.kube.request("DELETE", f"{PLUGINS.format(ns=ns)}/hdr")[0] == 200
    procs.wait_until(
        lambda: bed.kube.request("GET", f"{PLUGINS.format(ns=ns)}/hdr")[0] == 404, timeout=60, what="hdr deleted"
    )
    assert running(a) == [(f"{ns}.authn", sha(GOOD_V2))]

    metrics = bed.op.metrics()
    assert metrics['meshplug_operator_pushes_total{result="ack"}'] >= 6
    assert metrics[f'meshplug_operator_pods_ready{{namespace="{ns}",plugin="authn"}}'] == 1
    assert metrics['meshplug_operator_reconciles_total{result="ok"}'] >= 3


def good_then_refused(bed: Bed, good: str, bad: str) -> tuple[agent_mod.Agent, dict[str, Any]]:
    """Pod ``a`` with a working plugin ``good`` (confirmed), then ``bad``, whose module fails to start (refused):
    the pod, and ``bad``'s status."""
    a = bed.pod("a", {"app": "cart"})
    assert a is not None
    sel = {"matchLabels": {"app": "cart"}}
    bed.plugin(good, {"url": bed.module("good.wasm", GOOD), "selector": sel, "dataPlane": "agent"})
    bed.wait_ready(good, "True", "Confirmed", "1/1")
    bed.plugin(bad, {"url": bed.module("bad.wasm", FAILS_TO_START), "selector": sel, "dataPlane": "agent"})
    return a, bed.wait_ready(bad, "False", "AgentNACK", "0/1")


def test_nacking_agent_is_reported_other_plugins_unaffected_and_heals(bed: Bed) -> None:
    a, st = good_then_refused(bed, "good", "bad")
    assert st["failingPods"][0]["name"] == "a" and "start_failed" in st["failingPods"][0]["message"]
    procs.wait_until(
        lambda: any(t == "Warning" and r == "AgentNACK" for t, r, _, _ in bed.events("bad")), timeout=30, what="Event"
    )
    # the agent keeps its last good set: the other plugin stays confirmed
    bed.wait_ready("good", "True", "Confirmed", "1/1")
    # one series on the refused plugin, whichever plugin's push the agent refused (both are in its set), counted
    # once per refused set (the baseline code's, then the optimized code's), not once per reconcile
    nack_events = [(t, n) for t, r, _, n in bed.events("bad") if r == "AgentNACK"]
    assert len(nack_events) == 1 and nack_events[0][0] == "Warning" and nack_events[0][1] <= 2, nack_events
    assert running(a) == [(f"{bed.ns}.good", sha(GOOD))]
    pushes = bed.op.metrics()['meshplug_operator_pushes_total{result="nack"}']
    assert pushes >= 1

    # fixing the cause (a new module) heals it without a manual kick
    bed.patch_plugin("bad", {"url": bed.module("fixed.wasm", GOOD_V2)})
    bed.wait_ready("bad", "True", "Confirmed", "1/1")
    bed.wait_ready("good", "True", "Confirmed", "1/1")
    assert sorted(running(a)) == sorted([(f"{bed.ns}.good", sha(GOOD)), (f"{bed.ns}.bad", sha(GOOD_V2))])


def test_a_refusal_is_an_event_on_the_refused_plugin_only(bed: Bed) -> None:
    """The pod's set holds both plugins, so a push for the working one carries the refused one's change again and
    is NACKed for it: the refusal is reported on the refused plugin (Warning AgentNACK), never on the plugin that
    runs as asked. Made certain by an operator restart with one worker: ``a-good`` (listed first) pushes the pod's
    set before ``b-bad``'s reconcile looks (the new process remembers no push)."""
    a, _ = good_then_refused(bed, "a-good", "b-bad")

    def nack_count(name: str) -> int:
        return sum(n for t, r, _, n in bed.events(name) if (t, r) == ("Warning", "AgentNACK"))

    procs.wait_until(lambda: nack_count("b-bad") >= 1, timeout=30, what="b-bad's AgentNACK Event")
    told = nack_count("b-bad")
    restart_operator(bed, "--workers=1")
    # the new process holds the refused set (the status records the refusal); the pod's agent restarting makes it
    # push the pod's set once, and it reports the refusal on b-bad again
    restart_pod(bed, "a", 1)
    procs.wait_until(lambda: nack_count("b-bad") > told, timeout=60, what="b-bad's AgentNACK Event counted again")
    assert bed.op.metrics()['meshplug_operator_pushes_total{result="nack"}'] >= 1
    assert bed.wait_ready("a-good", "True", "Confirmed", "1/1")["failingPods"] == []
    assert bed.wait_ready("b-bad", "False", "AgentNACK", "0/1")["failingPods"][0]["name"] == "a"
    assert [e for e in bed.events("a-good") if e[0] == "Warning"] == []
    assert [(t, r) for t, r, _, _ in bed.events("b-bad")] == [("Warning", "AgentNACK")]
    assert running(a) == [(f"{bed.ns}.a-good", sha(GOOD))]


def restart_operator(bed: Bed, *extra: str) -> None:
    """Stop the operator (by pid) and start it again with ``extra`` arguments and the same module server ports:
    what it kept only in memory is gone, what it wrote stays."""
    bed.op.stop()
    bed.op = operator_mod.start_operator(
        bed.kube.kubeconfig,
        bed.work,
        namespaces=[bed.ns],
        extra=[f"--file-root={bed.modules}", *extra],
        module_ports=(bed.op.module_port, bed.op.module_tls_port),
    )


def restart_pod(bed: Bed, name: str, restarts: int) -> None:
    """Record that the pod's agent container restarted (``restarts`` times), as the kubelet would."""
    running = {"name": "meshplug-agent", "ready": True, "restartCount": restarts, "image": "meshplug", "imageID": ""}
    code, out = bed.kube.request(
        "PATCH",
        f"/api/v1/namespaces/{bed.ns}/pods/{name}/status",
        {"status": {"containerStatuses": [{**running, "state": {"running": {}}}]}},
        content_type="application/merge-patch+json",
    )
    assert code == 200, out


def test_a_restarted_operator_keeps_the_push_backoff_of_a_refused_set(bed: Bed) -> None:
    """The pod's agent refuses its set (``bad`` fails to start); the status records the refusal for the pod: the set,
    the agent (address, restarts), the pushes of it refused in a row and when, the plugin it named and what it kept
    running. An operator that restarts reads it back: it pushes nothing (the same set to the same agent is refused
    until something changes), ``bad``'s status and Events stay as they were, and ``good`` stays confirmed (the agent
    kept it running). The pod's agent restarting is a change: pushed again, refused again, counted afresh."""
    restart_operator(bed, "--no-baseline-compile")  # one set per plugin change (no baseline code first)
    _, st = good_then_refused(bed, "good", "bad")
    record = st["failingPods"][0]
    assert (record["name"], record["reason"], record["refused"]) == ("a", "AgentNACK", f"{bed.ns}.bad"), record
    assert record["set"] and record["agent"].endswith("#0") and record["pushes"] >= 1 and record["lastPushTime"]
    assert record["running"] == [f"{bed.ns}.good@{sha(GOOD)}"], record
    procs.wait_until(lambda: bed.events("bad"), timeout=30, what="bad's AgentNACK Event")
    events = bed.events("bad")
    assert bed.op.metrics()['meshplug_operator_pushes_total{result="nack"}'] >= 1

    restart_operator(bed, "--no-baseline-compile")
    log = bed.op.proc.log
    procs.wait_until(
        lambda: all(f'"plugin": "{bed.ns}/{name}"' in log() for name in ("good", "bad")),
        timeout=60,
        what="both plugins reconciled by the restarted operator",
    )
    assert not {k: v for k, v in bed.op.metrics().items() if k.startswith("meshplug_operator_pushes_total") and v}
    assert bed.status("bad")["failingPods"] == [record]
    assert bed.wait_ready("good", "True", "Confirmed", "1/1")["failingPods"] == []
    assert bed.events("bad") == events

    restart_pod(bed, "a", 1)
    procs.wait_until(
        lambda: bed.status("bad")["failingPods"][0]["agent"].endswith("#1"), timeout=60, what="the refusal again"
    )
    again = bed.status("bad")["failingPods"][0]
    assert (again["set"], again["pushes"]) == (record["set"], 1), (record, again)
    assert bed.op.metrics()['meshplug_operator_pushes_total{result="nack"}'] >= 1


def test_a_push_does_not_queue_its_own_plugin_again(bed: Bed) -> None:
    """A push whose outcome changed queues the other plugins selecting the pod (they re-read it), not the plugin
    whose reconcile pushed: each of its reconciles pushes (the operator's stage log counts the pods pushed)."""
    sel = {"matchLabels": {"app": "cart"}}
    bed.plugin("first", {"url": bed.module("good.wasm", GOOD), "selector": sel, "dataPlane": "agent"})
    assert bed.pod("a", {"app": "cart"}) is not None
    # the operator saw the pod with its IP, and its module's optimized code is pushed (no follow-up push to come)

    def optimized() -> bool:
        conditions = bed.wait_ready("first", "True", "Confirmed", "1/1")["conditions"]
        return "baseline" not in next(c for c in conditions if c["type"] == "Ready")["message"]

    procs.wait_until(optimized, timeout=60, what="first: the optimized code confirmed")
    bed.plugin("hdr", {"url": bed.module("good.wasm", GOOD), "selector": sel, "dataPlane": "agent"})
    bed.wait_ready("hdr", "True", "Confirmed", "1/1")
    # a later plugin's reconcile ends after what hdr's push queued has run
    none = {"matchLabels": {"app": "none"}}
    bed.plugin("later", {"url": bed.module("good.wasm", GOOD), "selector": none, "dataPlane": "agent"})
    bed.wait_ready("later", "True", "Confirmed", "0/0")
    stages = [
        json.loads(line.partition("reconcile stages ")[2])
        for line in bed.op.proc.log().splitlines()
        if "reconcile stages " in line
    ]
    hdr = [s for s in stages if s["plugin"] == f"{bed.ns}/hdr"]
    assert hdr and all(s["pushed"] >= 1 for s in hdr), hdr
    assert any(s["plugin"] == f"{bed.ns}/first" and s["pushed"] == 0 for s in stages)  # queued by hdr's push


def test_unreachable_agent_heals_by_retry(bed: Bed) -> None:
    ip = bed.next_ip()
    bed.pod("late", {"app": "late"}, agent=False, ip=ip)
    bed.plugin(
        "p", {"url": bed.module("p.wasm", GOOD), "selector": {"matchLabels": {"app": "late"}}, "dataPlane": "agent"}
    )
    st = bed.wait_ready("p", "False", "AgentUnreachable", "0/1")
    assert st["failingPods"][0]["reason"] == "AgentUnreachable"
    # the agent comes up at that address and port: the backoff retry confirms it, no spec change
    _, pod = bed.kube.request("GET", f"/api/v1/namespaces/{bed.ns}/pods/late")
    port = int(pod["metadata"]["annotations"]["meshplug.io/agent-push-port"])
    bed.start_agent("late", ip, port)
    bed.wait_ready("p", "True", "Confirmed", "1/1")


def test_a_moved_tag_is_delivered_without_a_spec_change(
    kube: kube_mod.Kube, wasmplugin_crd: str, kube_namespace: str, tmp_path: Path, registries: dict[str, Any]
) -> None:
    """A tracked mutable tag (oci://...:v1, re-resolved every 2 s) moves: a TagMoved Event, the new digest on
    every pod's agent, Ready again; nothing touched the WasmPlugin."""
    registry = registries["plain"]
    registry.push_layout("oci-image", "meshplug/moving", "v1", GOOD)
    op = operator_mod.start_operator(
        kube.kubeconfig,
        tmp_path,
        namespaces=[kube_namespace],
        extra=[f"--insecure-registry={registry.host}", "--reresolve-interval=2"],
    )
    b = Bed(kube, kube_namespace, tmp_path, tmp_path, op, _hosts)
    try:
        a = b.pod("a", {"app": "cart"})
        assert a is not None
        url = registry.url("meshplug/moving", "v1")
        b.plugin("tagged", {"url": url, "selector": {"matchLabels": {"app": "cart"}}, "dataPlane": "agent"})
        assert b.wait_ready("tagged", "True", "Confirmed", "1/1")["digest"] == f"sha256:{sha(GOOD)}"
        _, before = kube.request("GET", f"{PLUGINS.format(ns=kube_namespace)}/tagged")

        registry.push_layout("oci-image", "meshplug/moving", "v1", GOOD_V2)
        procs.wait_until(
            lambda: b.status("tagged").get("digest") == f"sha256:{sha(GOOD_V2)}", timeout=60, what="the new digest"
        )
        b.wait_ready("tagged", "True", "Confirmed", "1/1")
        assert running(a) == [(f"{kube_namespace}.tagged", sha(GOOD_V2))]
        assert any(r == "TagMoved" for _, r, _, _ in b.events("tagged"))
        _, after = kube.request("GET", f"{PLUGINS.format(ns=kube_namespace)}/tagged")
        assert after["metadata"]["generation"] == before["metadata"]["generation"]
    finally:
        op.stop()
        for agent in b.agents.values():
            agent.stop()
        print(op.proc.log()[-4000:])


def test_agents_load_the_module_the_operator_compiled(bed: Bed) -> None:
    # the operator compiled the module for the agents' engine while validating it -- with the baseline compiler
    # first (Winch), then the optimized artifact in the background, pushed when ready; an agent with the same
    # key (same wasmtime, settings and CPU here) fetches each artifact (its ServiceAccount token, as for the
    # module), checks it and loads it: no compile there; an agent told not to compiles the module itself
    fast = bed.pod("fast", {"app": "pre"})
    own = bed.pod("own", {"app": "pre"}, precompiled=False)
    assert fast is not None and own is not None
    bed.plugin(
        "pre", {"url": bed.module("pre.wasm", GOOD), "selector": {"matchLabels": {"app": "pre"}}, "dataPlane": "agent"}
    )
    bed.wait_ready("pre", "True", "Confirmed", "2/2")
    name = f"{bed.ns}.pre"
    tiered = compiled.baseline_available()
    log = bed.op.proc.log()
    assert f"compiled sha256:{sha(GOOD)} for the agents" in log
    assert ("(baseline, miss)" in log) is tiered

    def timings(agent: agent_mod.Agent) -> dict[str, Any]:
        return dict(agent.config_dump()["last_push"]["timings"].get(name) or {})

    procs.wait_until(lambda: timings(fast).get("tier") == "optimized", timeout=120, what="the optimized tier")
    loaded = timings(fast)
    assert (loaded["artifact"], loaded["load"]) == ("operator", "hit")
    # loaded from memory; the files reach the agent's own cache behind it (a restart loads them without a fetch)
    tiers = {t for t in compiled.Tier if compiled.baseline_available() or t is compiled.Tier.OPTIMIZED}
    want = {compiled.ArtifactKey.make(sha(GOOD), compiled.FINGERPRINTS[t]).filename for t in tiers}
    cache = bed.work / "fast" / "cache"
    procs.wait_until(lambda: want <= {p.name for p in cache.rglob("*.cwasm")}, timeout=30, what="the cached artifacts")
    assert (f"optimized sha256:{sha(GOOD)} for the agents" in bed.op.proc.log()) is tiered
    bed.wait_ready("pre", "True", "Confirmed", "2/2")
    compiled_here = timings(own)
    # compiled at its first push (miss); the optimized artifact's push (a new set) found that module loaded
    assert "artifact" not in compiled_here and compiled_here["load"] == ("memory" if tiered else "miss")
    assert compiled_here["tier"] == "optimized"
    assert running(fast) == running(own) == [(name, sha(GOOD))]


def test_a_rotated_push_token_reaches_agents_with_the_old_or_the_new_mount(bed: Bed) -> None:
    # the agent Secret's push token, as a month later finds it: its issue time (the annotation the operator keeps)
    # set back past the rotation period; the leader's periodic check rotates it and keeps the previous one beside
    a = bed.pod("a", {"app": "rot"})
    assert a is not None
    url = bed.module("rot.wasm", GOOD)
    bed.plugin("rot", {"url": url, "selector": {"matchLabels": {"app": "rot"}}, "dataPlane": "agent"})
    bed.wait_ready("rot", "True", "Confirmed", "1/1")
    path = f"/api/v1/namespaces/{bed.ns}/secrets/{identity.DEFAULT_AGENT_SECRET}"

    def tokens() -> list[str]:
        _, secret = bed.kube.request("GET", path)
        return base64.b64decode(secret["data"][identity.AGENT_TOKEN]).decode().split()

    (old,) = tokens()
    month_ago = {identity.TOKEN_ISSUED_ANNOTATION: str(int(time.time() - limits.PUSH_TOKEN_ROTATION_S - 60))}
    status, out = bed.kube.request(
        "PATCH", path, {"metadata": {"annotations": month_ago}}, content_type="application/merge-patch+json"
    )
    assert status == 200, out
    procs.wait_until(
        lambda: len(tokens()) == 2, timeout=limits.IDENTITY_CHECK_S + 30, what="the leader to rotate the push token"
    )
    new, previous = tokens()
    assert previous == old and new != old

    # the agent still mounts the old token (the kubelet refreshes mounted Secrets a while later): the operator's
    # new token gets a 401, it falls back on the previous one, and the update is confirmed
    def confirmed(data: bytes) -> None:
        procs.wait_until(
            lambda: bed.status("rot").get("digest") == f"sha256:{sha(data)}",
            timeout=90,
            what="the update to be confirmed",
        )
        bed.wait_ready("rot", "True", "Confirmed", "1/1")
        assert running(a) == [(f"{bed.ns}.rot", sha(data))]

    mounted = bed.work / "a" / "etc" / identity.AGENT_TOKEN
    assert mounted.read_text().split() == [old]
    bed.patch_plugin("rot", {"url": bed.module("rot-v2.wasm", GOOD_V2)})
    confirmed(GOOD_V2)

    # the refreshed mount, once the previous token is dropped too: the operator's new token alone is accepted
    mounted.write_text(new + "\n")
    bed.patch_plugin("rot", {"url": url})
    confirmed(GOOD)
    metrics = bed.op.metrics()
    assert metrics['meshplug_operator_pushes_total{result="ack"}'] >= 3


class TamperingModuleServer:
    """What stands where the agents fetch modules (the module server's advertised HTTPS port) when someone holds a
    certificate of the operator's CA: it relays to the real module server, and hands out other bytes for the
    sha256s in `tamper`. The agent's checks are all that stand in its way."""

    def __init__(self, port: int, upstream_port: int, ca_pem: bytes, cert: Path, key: Path) -> None:
        self.tamper: dict[str, bytes] = {}
        client = ssl.create_default_context(cadata=ca_pem.decode())
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                conn = http.client.HTTPSConnection("127.0.0.1", upstream_port, context=client, timeout=30)
                try:
                    conn.request("GET", self.path, headers={k: v for k, v in self.headers.items() if k != "Host"})
                    resp = conn.getresponse()
                    body = resp.read()
                    sha = self.path.rsplit("/", 1)[-1].split("?")[0]
                    if resp.status == 200 and sha in outer.tamper:
                        body = outer.tamper[sha]
                    self.send_response(resp.status)
                    self.send_header("Content-Type", resp.getheader("Content-Type") or "application/octet-stream")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                finally:
                    conn.close()

            def log_message(self, fmt: str, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


def _operator_ca(kube: kube_mod.Kube, ns: str) -> pki.Authority:
    found: dict[str, Any] = {}

    def made() -> bool:
        status, body = kube.request("GET", f"/api/v1/namespaces/{ns}/secrets/meshplug-identity")
        found.update(body if status == 200 else {})
        return status == 200

    procs.wait_until(made, timeout=60, what="the operator's identity Secret")
    data = {k: base64.b64decode(v) for k, v in found["data"].items()}
    return pki.Authority(data["ca.crt"], data["ca.key"])


@pytest.mark.usefixtures("wasmplugin_crd")
def test_a_signed_module_is_verified_again_by_the_agent(
    kube: kube_mod.Kube,
    kube_namespace: str,
    tmp_path: Path,
    registries: dict[str, Any],
    cosign: CosignKit,
) -> None:
    """A WasmPlugin with verificationKey on the agent plane: the operator verifies the cosign signature, the push
    carries it, the agent verifies it again (the layer blob of an OCI image, unpacked) and compiles the module
    itself. When what the agent is handed is not what was signed -- here, bytes from whoever holds the module
    server's address and a certificate of the operator's CA -- the agent NACKs signature_invalid, the plugin's
    status says so (AgentNACK, the pod and the reason), and the agent keeps running the last good module."""
    registry = registries["plain"]
    v1, v2 = minimal.passthrough('(data (i32.const 2048) "signed-v1")'), GOOD_V2
    for tag, layout, data in (("v1", "oci-image", v1), ("v2", "wasm-content-single-layer", v2)):
        digest = registry.push_layout(layout, "meshplug/signed", tag, data)
        cosign.cosign.sign(registry, f"meshplug/signed@{digest}", cosign.signer)
    relay_port = procs.free_port()
    op = operator_mod.start_operator(
        kube.kubeconfig,
        tmp_path,
        namespaces=[kube_namespace],
        extra=[f"--insecure-registry={registry.host}", f"--module-tls-port={relay_port}"],  # agents go to the relay
    )
    authority = _operator_ca(kube, kube_namespace)
    issued = authority.issue("meshplug-modules", client=False, validity=timedelta(hours=1), ip_addresses=["127.0.0.1"])
    (tmp_path / "relay.crt").write_bytes(issued.cert_pem)
    (tmp_path / "relay.key").write_bytes(issued.key_pem)
    relay = TamperingModuleServer(
        relay_port, op.module_tls_port, authority.cert_pem, tmp_path / "relay.crt", tmp_path / "relay.key"
    )
    # the injected agents' module server is the advertised one: the relay
    b = Bed(kube, kube_namespace, tmp_path, tmp_path, dataclasses.replace(op, module_tls_port=relay_port), _hosts)
    try:
        a = b.pod("a", {"app": "signed"})
        assert a is not None
        key = cosign.signer.pub.read_text()
        spec = {"selector": {"matchLabels": {"app": "signed"}}, "dataPlane": "agent", "verificationKey": key}
        b.plugin("signed", {**spec, "url": registry.url("meshplug/signed", "v1")})
        assert b.wait_ready("signed", "True", "Confirmed", "1/1")["digest"] == f"sha256:{sha(v1)}"
        name = f"{kube_namespace}.signed"
        assert running(a) == [(name, sha(v1))]
        timings = a.config_dump()["last_push"]["timings"][name]
        assert timings["signature"].startswith("tag signature, key ") and "artifact" not in timings

        # v2 is signed too; the relay hands the agent other bytes under its sha256
        relay.tamper[sha(v2)] = minimal.passthrough('(data (i32.const 2048) "not what was signed")')
        b.patch_plugin("signed", {"url": registry.url("meshplug/signed", "v2")})
        st = b.wait_ready("signed", "False", "AgentNACK", "0/1")
        failing = st["failingPods"][0]
        assert failing["name"] == "a" and "signature_invalid" in failing["message"], failing
        assert "not the signed module" in failing["message"], failing
        procs.wait_until(
            lambda: any(r == "AgentNACK" and "signature_invalid" in m for _, r, m, _ in b.events("signed")),
            timeout=30,
            what="an AgentNACK Event",
        )
        assert running(a) == [(name, sha(v1))]  # the last good module keeps running
        # and `meshplug status`, as a kubectl user runs it, names the pod and why
        argv = [sys.executable, "-m", "meshplug", "status", "signed", "-n", kube_namespace, "-o", "json"]
        shown = subprocess.run(
            [*argv, "--kubeconfig", str(kube.kubeconfig)], capture_output=True, text=True, timeout=60, check=False
        )
        assert shown.returncode == 1, shown.stderr
        (pod,) = json.loads(shown.stdout)["podStatus"]
        assert (pod["pod"], pod["state"], pod["reason"]) == ("a", "Failing", "AgentNACK"), pod
        assert "signature_invalid" in pod["message"], pod

        # the relay stops tampering: the next push (a NACK waits for a change, as in Envoy's ECDS) loads v2
        relay.tamper.clear()
        b.patch_plugin("signed", {"pluginConfig": {"pushed": "again"}})
        b.wait_ready("signed", "True", "Confirmed", "1/1")
        assert running(a) == [(name, sha(v2))]
    finally:
        relay.close()
        op.stop()
        for agent in b.agents.values():
            agent.stop()
        print(op.proc.log()[-6000:])

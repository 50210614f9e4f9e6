#!/usr/bin/env python3
"""Apply / update -> Ready of Go SDK modules on the agent plane, stage by stage, on the real test bed.

Starts etcd + kube-apiserver, `meshplug operator` (a process, fresh module and artifact caches) and ``--pods``
real agents (processes at 127.0.0.x as the pods' IPs, each with its own empty artifact cache), then times a
WasmPlugin (dataPlane: agent) from the client's apply to the first status read that says Ready for the new digest
and generation: round 1 creates it with the first Go module, each later round updates it to another Go module of
the corpus (a module nobody compiled yet: the operator compiles it once, agents load its artifact), and a last
"warm" round updates back to the first module (compiled already: no compile anywhere). Stages, from the operator's
per-reconcile log line (`reconcile stages`) and each agent's /config_dump last_push timings (slowest pod):

    watch + queue        apply -> the reconcile that made it Ready starts (kopf watch event, work queue)
    operator fetch       the module (file:// here; the content cache otherwise)
    operator validate    compile with the agents' engine settings, or load the artifact, then the ABI check
    push (deliver)       the operator's pushes, each answered after the agent applied the set:
      agent fetch          the module from the operator's module server
      agent artifact       the operator's precompiled module (fetched, sha256 + header checked, installed)
      agent compile/load   deserialize the artifact (hit) or compile (miss)
      agent validate       the ABI check on the loaded module
      agent start          instantiate + module entry + plugin start callbacks (VMs start in parallel)
      agent persist        last good set written (fsync)
      push transport+ACK   the rest of the push round trip
    status write         the status patch
    observed             until the client's next status read saw it (poll every --poll s)

Also prints, for comparison, Envoy 1.40 loading the same Go module on V8: the time from Envoy's start to its first
response through the plugin minus the same without the plugin, median of ``--envoy-rounds``.

    .venv/bin/python bench/ready.py [--pods 2] [--modules go/headers,go/jsonconfig,go/pathrewrite]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import start_envoy
from tests.corpus import modules as corpus
from tests.testbed import agent as agent_mod
from tests.testbed import fixtures_kube, procs
from tests.testbed import kube as kube_mod
from tests.testbed import nginx as tb_nginx
from tests.testbed import operator as operator_mod

NS = "ready"
PLUGINS = f"/apis/meshplug.io/v1alpha1/namespaces/{NS}/wasmplugins"
NAME = "go-plugin"
CONFIG = {"response": {"add": {"x-ready": "1"}}}  # go/headers' (the Envoy comparison's module)
EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "filters"
AGENT_STAGES = (
    ("agent fetch", "fetch_ms"),
    ("agent artifact", "artifact_ms"),
    ("agent compile/load", "load_ms"),
    ("agent validate", "validate_ms"),
)


def corpus_config(key: str) -> Any:
    """The first plugin configuration of the module's corpus spec (one it starts with)."""
    spec = yaml.safe_load((EXAMPLES / key / "spec.yaml").read_text())
    return (spec.get("plugins") or [{}])[0].get("configuration") or {}


def request(kube: kube_mod.Kube, method: str, path: str, body: Any = None, ctype: str = "application/json") -> Any:
    status, out = kube.request(method, path, body, content_type=ctype)
    if status >= 300:
        raise RuntimeError(f"{method} {path}: {status} {out}")
    return out


def start_pod(kube: kube_mod.Kube, op: operator_mod.Operator, work: Path, i: int) -> agent_mod.Agent:
    """An injected pod whose agent runs at its own loopback address (the pod's IP) with what the kubelet would
    mount (the operator's agent Secret, a ServiceAccount token bound to the pod) and an empty artifact cache."""
    name, ip, push_port = f"pod-{i}", f"127.0.0.{20 + i}", procs.free_port()
    body = {
        "metadata": {
            "name": name,
            "labels": {"app": "ready"},
            "annotations": {"meshplug.io/agent-push-port": str(push_port), agent_mod.INJECTED_ANNOTATION: "bench"},
        },
        "spec": {"containers": [{"name": "app", "image": "registry.example/app:v1"}]},
    }
    request(kube, "POST", f"/api/v1/namespaces/{NS}/pods", body)
    agent = agent_mod.start_injected(
        kube,
        NS,
        name,
        work,
        ip=ip,
        port=push_port,
        module_server_url=f"https://127.0.0.1:{op.module_tls_port}",
        env={"MESHPLUG_CACHE": str(work / name / "cache")},  # its own artifact cache: nothing compiled yet
        log_level="info",
    )
    status = {
        "status": {
            "phase": "Running",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": "True"}],
        }
    }
    request(kube, "PATCH", f"/api/v1/namespaces/{NS}/pods/{name}/status", status, "application/merge-patch+json")
    return agent


def wait_ready(kube: kube_mod.Kube, sha256: str, generation: int, poll: float, deadline: float) -> float:
    st: dict[str, Any] = {}
    while time.monotonic() < deadline:
        obj = request(kube, "GET", f"{PLUGINS}/{NAME}")
        st = obj.get("status") or {}
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in st.get("conditions") or [])
        if ready and st.get("observedGeneration") == generation and st.get("digest") == f"sha256:{sha256}":
            return time.time()
        time.sleep(poll)
    raise TimeoutError(f"{NAME} not Ready for {sha256[:12]} (generation {generation}): {json.dumps(st)}")


def operator_stages(op: operator_mod.Operator, generation: int) -> list[dict[str, Any]]:
    """The log lines of the reconciles of `generation`, in order, up to the first that found every pod ready."""
    out: list[dict[str, Any]] = []
    for line in op.proc.log().splitlines():
        _, sep, payload = line.partition("reconcile stages ")
        if not sep:
            continue
        facts = json.loads(payload)
        if facts["plugin"] == f"{NS}/{NAME}" and facts["generation"] == generation:
            out.append(dict(facts))
            if facts["ready"]:
                return out
    raise RuntimeError(f"no Ready reconcile of generation {generation} in the operator's log")


def compile_ms(op: operator_mod.Operator, sha256: str, since: int) -> float | None:
    """How long the operator's compile of `sha256` for the agents took, if it compiled it after log offset
    `since` (None: it compiled nothing)."""
    for line in op.proc.log()[since:].splitlines():
        _, sep, rest = line.partition(f"compiled sha256:{sha256} for the agents in ")
        if sep:
            return float(rest.split()[0])
    return None


def agent_timings(agent: agent_mod.Agent, plugin: str) -> dict[str, Any]:
    last = agent.config_dump()["last_push"] or {}
    timings = dict(last.get("timings") or {})
    return {**timings, **(timings.get(plugin) or {})}


def one_round(
    kube: kube_mod.Kube,
    op: operator_mod.Operator,
    agents: list[agent_mod.Agent],
    module: corpus.BuiltModule,
    *,
    create: bool,
    poll: float,
) -> list[tuple[str, float, str]]:
    spec = {
        "url": f"file://{module.path}",
        "sha256": module.sha256,
        "selector": {"matchLabels": {"app": "ready"}},
        "dataPlane": "agent",
        "pluginConfig": corpus_config(module.key),
    }
    log_at = len(op.proc.log())
    if create:
        t_apply = time.time()
        body = {"apiVersion": "meshplug.io/v1alpha1", "kind": "WasmPlugin", "metadata": {"name": NAME}, "spec": spec}
        obj = request(kube, "POST", PLUGINS, body)
    else:  # the whole spec replaced (a merge patch would merge the old and new pluginConfig objects)
        current = request(kube, "GET", f"{PLUGINS}/{NAME}")
        current["spec"] = spec
        t_apply = time.time()
        obj = request(kube, "PUT", f"{PLUGINS}/{NAME}", current)
    generation = int(obj["metadata"]["generation"])
    t_ready = wait_ready(kube, module.sha256, generation, poll, time.monotonic() + 300)
    reconciles = operator_stages(op, generation)
    facts = reconciles[-1]
    if len(reconciles) > 1:
        print(f"note: generation {generation} took {len(reconciles)} reconciles: {reconciles}", file=sys.stderr)
    ms = facts["ms"]
    plugin = f"{NS}.{NAME}"
    per_agent = [agent_timings(a, plugin) for a in agents]
    slowest = max(per_agent, key=lambda t: float(t.get("total_ms") or 0))
    compile_time = compile_ms(op, module.sha256, log_at)
    elsewhere = compile_time is not None and compile_time > ms["validate"]
    rows: list[tuple[str, float, str]] = [
        ("watch + queue", (facts["started"] - t_apply) * 1000, "incl. the compile" if elsewhere else ""),
        (
            "operator compile",
            compile_time or 0.0,
            "none" if compile_time is None else "in a reconcile before" if elsewhere else "in validate below",
        ),
        ("operator fetch", ms["fetch"], ""),
        ("operator validate", ms["validate"], "with its artifact" if facts.get("compiled") else "no artifact"),
        ("push (deliver)", ms["deliver"], f"{len(agents)} pods"),
    ]
    for label, key in AGENT_STAGES:
        note = str(slowest.get("artifact", "")) if key == "artifact_ms" else ""
        if key == "load_ms":
            note = {"hit": "loaded artifact", "memory": "in memory"}.get(str(slowest.get("load")), "compiled")
        rows.append((f"  {label}", float(slowest.get(key) or 0.0), note))
    rows.append(("  agent start", float(slowest.get("start_ms") or 0.0), "instantiate + entry + start callbacks"))
    rows.append(("  agent persist", float(slowest.get("persist_ms") or 0.0), ""))
    rows.append(("  push transport + ACK", ms["deliver"] - float(slowest.get("total_ms") or 0.0), ""))
    rows.append(("status write", ms["status"], ""))
    rows.append(("observed", (t_ready - facts["started"]) * 1000 - sum(ms.values()), f"poll {poll * 1000:.0f} ms"))
    rows.append(("apply -> Ready", (t_ready - t_apply) * 1000, ""))
    return rows


def first_response(port: int, header: str, deadline: float) -> float:
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as resp:
                if not header or resp.headers.get(header):
                    return time.monotonic()
        except OSError:
            pass
        time.sleep(0.005)
    raise TimeoutError("Envoy did not answer")


def envoy_load_ms(wasm: Path, rounds: int, work: Path) -> float:
    """Envoy's start to its first response through the plugin, minus the same without it (median)."""
    upstream = tb_nginx.start_nginx(log_dir=work)
    try:
        diffs = []
        for i in range(rounds):
            times = []
            for module, header in ((None, ""), (wasm, "x-ready")):
                t0 = time.monotonic()
                proc, port = start_envoy(
                    work, f"envoy-{i}-{int(module is not None)}", upstream.ports["http"], module, CONFIG
                )
                try:
                    times.append(first_response(port, header, time.monotonic() + 120) - t0)
                finally:
                    proc.stop()
            diffs.append((times[1] - times[0]) * 1000)
        return statistics.median(diffs)
    finally:
        upstream.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pods", type=int, default=2)
    ap.add_argument("--modules", default="go/headers,go/jsonconfig,go/pathrewrite,go/metrics")
    ap.add_argument("--poll", type=float, default=0.02)
    ap.add_argument("--envoy-rounds", type=int, default=3)
    args = ap.parse_args()
    keys = args.modules.split(",")
    built = [corpus.module(k) for k in keys]
    rounds: list[tuple[str, list[tuple[str, float, str]]]] = []
    with tempfile.TemporaryDirectory(prefix="meshplug-ready-") as tmp:
        work = Path(tmp)
        with kube_mod.control_plane(work / "kube", work / "logs") as kube:
            fixtures_kube.install_crd(kube, fixtures_kube.crd_body())
            fixtures_kube.ensure_namespace(kube, NS)
            roots = sorted({str(m.path.parent) for m in built})
            op = operator_mod.start_operator(
                kube.kubeconfig, work / "op", namespaces=[NS], extra=[f"--file-root={r}" for r in roots]
            )
            agents: list[agent_mod.Agent] = []
            try:
                agents = [start_pod(kube, op, work, i) for i in range(args.pods)]
                for i, module in enumerate(built):
                    what = "create" if i == 0 else "update"
                    rows = one_round(kube, op, agents, module, create=i == 0, poll=args.poll)
                    rounds.append((f"{what} {module.key} ({module.size / 2**20:.1f} MiB, new)", rows))
                rows = one_round(kube, op, agents, built[0], create=False, poll=args.poll)
                rounds.append((f"update back to {built[0].key} (compiled already)", rows))
            finally:
                for a in agents:
                    a.stop()
                op.stop()
                if os.environ.get("READY_DEBUG"):
                    print(op.proc.log()[-20000:], file=sys.stderr)
        envoy = envoy_load_ms(built[0].path, args.envoy_rounds, work)
    load = Path("/proc/loadavg").read_text().split()[:3]
    print(f"WasmPlugin (dataPlane: agent) apply -> Ready, {args.pods} pods, load average {' '.join(load)}")
    for title, rows in rounds:
        print(f"\n{title}")
        for stage, ms, note in rows:
            print(f"  {stage:<26}{ms:>9.0f} ms  {note}")
    totals = [rows[-1][1] for _, rows in rounds[:-1]]
    print(
        f"\napply -> Ready of a new Go module: median {statistics.median(totals):.0f} ms over {len(totals)} rounds "
        f"(target <= 2000 ms: {'met' if statistics.median(totals) <= 2000 else 'NOT met'}); "
        f"warm (compiled already): {rounds[-1][1][-1][1]:.0f} ms"
    )
    print(
        f"Envoy 1.40 + V8 loading {built[0].key} (start to first response through it, minus without): {envoy:.0f} ms "
        f"(median of {args.envoy_rounds})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

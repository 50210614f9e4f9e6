#!/usr/bin/env python3
"""Apply / update -> Ready of Go SDK modules on the agent plane, stage by stage, on the real test bed.

Starts etcd + kube-apiserver, then per mode `meshplug operator` (a process, fresh module and artifact caches, a
namespace of its own) and ``--pods`` real agents (processes at 127.0.0.x as the pods' IPs, each with its own empty
artifact cache), and times a WasmPlugin (dataPlane: agent) from the client's apply to the first status its watch sees
that says Ready for the new digest and generation: round 1 creates it with the first Go module, each later round
updates it to another Go module of the corpus (a module nobody compiled yet), and a last "warm" round updates
back to the first module (compiled already: no compile anywhere). Modes (``--modes``):

    tiered     the operator compiles a new module with the baseline compiler (Winch) and pushes that artifact at
               once; its optimized (Cranelift) artifact is compiled in the background and pushed when ready
    untiered   ``--no-baseline-compile``: the optimized compile before the first push (the previous behaviour)

Each round waits until every pod runs the module's optimized code before the next one starts (no background
compile overlaps the next round) and reports apply -> optimized as well. Stages, from the operator's
per-reconcile log line (`reconcile stages`) and each agent's /config_dump last_push timings (slowest pod):

    watch + queue        apply -> the reconcile that made it Ready starts (kopf watch event, work queue)
    operator fetch       the module (file:// here; the content cache otherwise)
    operator validate    compile with the agents' engine settings (the tier's), or load the artifact; ABI check
    operator other paths a new generation may have moved the plugin: its istio-plane objects are removed
    push (deliver)       the agent delivery: API reads (plugins, pods), then the pushes, in parallel, each
                         answered after the agent applied the set:
      operator before pushes  the API reads and set building before the first push
      agent fetch          the module from the operator's module server
      agent artifact       the operator's precompiled module, fetched beside the module: downloaded, sha256 +
                           header checked, loaded from memory (its file is written to the agent's cache behind)
      agent compile/load   take the module loaded from the artifact, or read the agent's own artifact (hit),
                           or compile (miss)
      agent validate       the ABI check on the loaded module
      agent start          instantiate + module entry + plugin start callbacks (VMs start in parallel)
      agent persist        last good set written (fsync)
      push transport+ACK   the rest of the push round trip
    status write         the status patch
    observed             until the client's watch of the plugin saw it

The agent rows are the timings of the push the reported reconcile made (the bench checks that the agent's apply
ended inside that reconcile's deliver stage, and stops otherwise: figures of another reconcile's push are what
made "push transport + ACK" negative on updates before the operator's fix: a reconcile still running for the
previous generation fetched, compiled and pushed the new one).

``--baseline DIR`` adds a bed per mode running the meshplug package of another checkout (its `make native` build;
e.g. the commit before a change). Every bed is started before the first round and the rounds are interleaved: each
module goes to every bed in turn (round i starts with the i-th bed), so the modes and systems meet the same
machine load; ``--repeat N`` does it all N times with fresh beds. The summary gives each bed's median and the
median of the per-round ratios (this checkout / baseline, tiered / untiered).

Also prints, for comparison, Envoy 1.40 loading the same Go module on V8: the time from Envoy's start to its first
response through the plugin minus the same without the plugin, median of ``--envoy-rounds``.

    .venv/bin/python bench/ready.py [--pods 2] [--modules go/headers,go/jsonconfig] [--modes tiered,untiered]
                                    [--baseline DIR] [--repeat N]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
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

NAME = "go-plugin"
CONFIG = {"response": {"add": {"x-ready": "1"}}}  # go/headers' (the Envoy comparison's module)
EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "filters"
#: the operator's extra arguments per mode
MODES = {"tiered": (), "untiered": ("--no-baseline-compile",)}
AGENT_STAGES = (
    ("agent fetch", "fetch_ms"),
    ("agent artifact", "artifact_ms"),
    ("agent compile/load", "load_ms"),
    ("agent validate", "validate_ms"),
)

Row = tuple[str, float, str]


@dataclass
class Bed:
    kube: kube_mod.Kube
    op: operator_mod.Operator
    agents: list[agent_mod.Agent]
    ns: str

    @property
    def plugins(self) -> str:
        return f"/apis/meshplug.io/v1alpha1/namespaces/{self.ns}/wasmplugins"


@dataclass
class Round:
    title: str
    rows: list[Row]
    ready_ms: float
    #: apply -> every pod runs the module's optimized code (the background compile and its push included)
    optimized_ms: float
    tier_rows: list[Row]


def corpus_config(key: str) -> Any:
    """The first plugin configuration of the module's corpus spec (one it starts with)."""
    spec = yaml.safe_load((EXAMPLES / key / "spec.yaml").read_text())
    return (spec.get("plugins") or [{}])[0].get("configuration") or {}


def request(kube: kube_mod.Kube, method: str, path: str, body: Any = None, ctype: str = "application/json") -> Any:
    status, out = kube.request(method, path, body, content_type=ctype)
    if status >= 300:
        raise RuntimeError(f"{method} {path}: {status} {out}")
    return out


def start_pod(
    kube: kube_mod.Kube, op: operator_mod.Operator, ns: str, work: Path, i: int, *, env: dict[str, str]
) -> agent_mod.Agent:
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
    request(kube, "POST", f"/api/v1/namespaces/{ns}/pods", body)
    agent = agent_mod.start_injected(
        kube,
        ns,
        name,
        work,
        ip=ip,
        port=push_port,
        module_server_url=f"https://127.0.0.1:{op.module_tls_port}",
        env={**env, "MESHPLUG_CACHE": str(work / name / "cache")},  # its own artifact cache: nothing compiled yet
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
    request(kube, "PATCH", f"/api/v1/namespaces/{ns}/pods/{name}/status", status, "application/merge-patch+json")
    return agent


def is_ready(obj: dict[str, Any], sha256: str, generation: int) -> bool:
    st = obj.get("status") or {}
    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in st.get("conditions") or [])
    return ready and st.get("observedGeneration") == generation and st.get("digest") == f"sha256:{sha256}"


def wait_ready(bed: Bed, obj: dict[str, Any], sha256: str, deadline: float) -> float:
    """When the plugin (``obj``: as the apply answered) was first seen Ready for the new digest and generation,
    through one watch from the apply's resourceVersion: no status polling loads the API server the operator
    is measured against (a GET every 20 ms did)."""
    generation = int(obj["metadata"]["generation"])
    url = urllib.parse.urlsplit(bed.kube.url)
    conn = http.client.HTTPSConnection(
        url.hostname or "", url.port, context=bed.kube.ssl_context(), timeout=max(1.0, deadline - time.monotonic())
    )
    query = urllib.parse.urlencode(
        {
            "watch": "1",
            "fieldSelector": f"metadata.name={NAME}",
            "resourceVersion": obj["metadata"]["resourceVersion"],
            "timeoutSeconds": str(int(deadline - time.monotonic()) + 1),
        }
    )
    last: dict[str, Any] = obj
    try:
        conn.request("GET", f"{bed.plugins}?{query}", headers={"Authorization": f"Bearer {bed.kube.admin_token}"})
        for line in conn.getresponse():
            event = json.loads(line)
            if event.get("type") not in ("ADDED", "MODIFIED"):
                raise RuntimeError(f"watch of {NAME}: {event}")
            last = event["object"]
            if is_ready(last, sha256, generation):
                return time.time()
    finally:
        conn.close()
    status = json.dumps(last.get("status"))
    raise TimeoutError(f"{NAME} not Ready for {sha256[:12]} (generation {generation}): {status}")


def reconciles(bed: Bed, generation: int) -> list[dict[str, Any]]:
    """The `reconcile stages` log lines of `generation`, in order."""
    out: list[dict[str, Any]] = []
    for line in bed.op.proc.log().splitlines():
        _, sep, payload = line.partition("reconcile stages ")
        if sep:
            facts = json.loads(payload)
            if facts["plugin"] == f"{bed.ns}/{NAME}" and facts["generation"] == generation:
                out.append(dict(facts))
    return out


def first(found: list[dict[str, Any]], **want: object) -> dict[str, Any] | None:
    return next((f for f in found if all(f.get(k) == v for k, v in want.items())), None)


def logged_line(bed: Bed, text: str, since: int) -> str | None:
    """What follows `text` on its line in the operator's log past offset `since` (None: no such line)."""
    for line in bed.op.proc.log()[since:].splitlines():
        _, sep, rest = line.partition(text)
        if sep:
            return rest
    return None


def logged_ms(bed: Bed, text: str, since: int) -> float | None:
    """The figure after `text` in the operator's log past offset `since` (None: no such line)."""
    rest = logged_line(bed, text, since)
    return None if rest is None else float(rest.split()[0])


def compile_note(bed: Bed, text: str, since: int) -> str:
    """The operator's process CPU during the compile `text` logged (its threads, and what else ran)."""
    _, sep, cpu = (logged_line(bed, text, since) or "").partition("process CPU ")
    return f", process CPU {cpu.split()[0]} ms" if sep else ""


def agent_timings(agent: agent_mod.Agent, plugin: str) -> dict[str, Any]:
    last = agent.config_dump()["last_push"] or {}
    timings = dict(last.get("timings") or {})
    return {**timings, **(timings.get(plugin) or {}), "at": float(last.get("at") or 0.0)}


def slowest_agent(bed: Bed, plugin: str) -> dict[str, Any]:
    per_agent = [agent_timings(a, plugin) for a in bed.agents]
    return max(per_agent, key=lambda t: float(t.get("total_ms") or 0))


def agent_rows(slowest: dict[str, Any], facts: dict[str, Any]) -> list[Row]:
    """The agent's stages of the push `facts` (a reconcile's log line) made. The agent's apply must have ended
    inside that reconcile's deliver stage; else another reconcile pushed this set (its figures are not this
    one's: the push transport row would come out negative) and the bench stops, saying so."""
    ms = facts["ms"]
    begin = facts["started"] + (ms["fetch"] + ms["validate"] + ms.get("other_paths", 0.0)) / 1000
    end = begin + ms["deliver"] / 1000
    if not begin - 0.005 <= slowest["at"] <= end + 0.005:
        raise RuntimeError(
            f"the agents applied this set at {slowest['at']:.3f}, outside the deliver stage of the reconcile "
            f"that reported it ({begin:.3f}-{end:.3f}): another reconcile pushed it ({facts})"
        )
    pushes_ms = float(facts.get("pushes_ms") or ms["deliver"])
    rows: list[Row] = [("  operator before pushes", ms["deliver"] - pushes_ms, "API reads (plugins, pods), sets")]
    for label, key in AGENT_STAGES:
        note = str(slowest.get("artifact", "")) if key == "artifact_ms" else ""
        if key == "artifact_ms" and "artifact_download_ms" in slowest:
            note += (
                f" (beside the module's fetch; download {float(slowest['artifact_download_ms']):.0f} ms, "
                f"check + load from memory {float(slowest['artifact_load_ms']):.0f} ms)"
            )
        if key == "load_ms":
            note = {"hit": "loaded artifact", "memory": "in memory"}.get(str(slowest.get("load")), "compiled")
            note += f", {slowest.get('tier', '?')} tier"
        rows.append((f"  {label}", float(slowest.get(key) or 0.0), note))
    rows.append(("  agent start", float(slowest.get("start_ms") or 0.0), "instantiate + entry + start callbacks"))
    rows.append(("  agent persist", float(slowest.get("persist_ms") or 0.0), ""))
    rows.append(("  push transport + ACK", pushes_ms - float(slowest.get("total_ms") or 0.0), "TLS, HTTP, JSON"))
    return rows


def wait_logged(bed: Bed, generation: int, deadline: float, **want: object) -> dict[str, Any]:
    """The first reconcile of `generation` whose logged stages have `want` (e.g. ready=True, tier="optimized")."""
    while time.monotonic() < deadline:
        found = first(reconciles(bed, generation), **want)
        if found is not None:
            return found
        time.sleep(0.25)  # the figures come from the logged times, not from when this saw them
    raise TimeoutError(f"generation {generation}: no reconcile with {want}: {reconciles(bed, generation)}")


def one_round(bed: Bed, module: corpus.BuiltModule, *, create: bool) -> tuple[list[Row], float, float, list[Row]]:
    spec = {
        "url": f"file://{module.path}",
        "sha256": module.sha256,
        "selector": {"matchLabels": {"app": "ready"}},
        "dataPlane": "agent",
        "pluginConfig": corpus_config(module.key),
    }
    log_at = len(bed.op.proc.log())
    if create:
        t_apply = time.time()
        body = {"apiVersion": "meshplug.io/v1alpha1", "kind": "WasmPlugin", "metadata": {"name": NAME}, "spec": spec}
        obj = request(bed.kube, "POST", bed.plugins, body)
    else:  # the whole spec replaced (a merge patch would merge the old and new pluginConfig objects)
        current = request(bed.kube, "GET", f"{bed.plugins}/{NAME}")
        current["spec"] = spec
        t_apply = time.time()
        obj = request(bed.kube, "PUT", f"{bed.plugins}/{NAME}", current)
    generation = int(obj["metadata"]["generation"])
    t_ready = wait_ready(bed, obj, module.sha256, time.monotonic() + 300)
    plugin = f"{bed.ns}.{NAME}"
    slowest = slowest_agent(bed, plugin)
    # the status is visible a moment before the reconcile logs its stages: wait for that line
    facts = wait_logged(bed, generation, time.monotonic() + 30, ready=True)
    found = reconciles(bed, generation)
    if len(found) > 1:
        print(f"note: generation {generation}: {len(found)} reconciles so far: {found}", file=sys.stderr)
    ms = facts["ms"]
    compile_ms = logged_ms(bed, f"compiled sha256:{module.sha256} for the agents in ", log_at)
    elsewhere = compile_ms is not None and compile_ms > ms["validate"]
    rows: list[Row] = [
        ("watch + queue", (facts["started"] - t_apply) * 1000, "incl. the compile" if elsewhere else ""),
        (
            "operator compile",
            compile_ms or 0.0,
            ("none" if compile_ms is None else "in a reconcile before" if elsewhere else "in validate below")
            + compile_note(bed, f"compiled sha256:{module.sha256} for the agents in ", log_at),
        ),
        ("operator fetch", ms["fetch"], ""),
        ("operator validate", ms["validate"], f"{facts.get('tier') or 'no'} artifact"),
        ("operator other paths", ms.get("other_paths", 0.0), "removals from the istio paths"),
        ("push (deliver)", ms["deliver"], f"{len(bed.agents)} pods"),
        *agent_rows(slowest, facts),
        ("status write", ms["status"], ""),
        ("observed", (t_ready - facts["started"]) * 1000 - sum(ms.values()), "the watch event"),
        ("apply -> Ready", (t_ready - t_apply) * 1000, ""),
    ]
    # the optimized tier: the background compile, then its push (the same reconcile when it was first)
    done = wait_logged(bed, generation, time.monotonic() + 600, ready=True, tier="optimized")
    t_optimized = done["started"] + sum(done["ms"].values()) / 1000
    tier_rows: list[Row] = []
    if done != facts:
        background = logged_ms(bed, f"optimized sha256:{module.sha256} for the agents in ", log_at)
        tier_slowest = slowest_agent(bed, plugin)
        tier_rows = [
            ("background compile", background or 0.0, "optimized, one thread, nice 10"),
            ("push (deliver)", done["ms"]["deliver"], f"{len(bed.agents)} pods, VMs swapped"),
            *agent_rows(tier_slowest, done),
            ("apply -> optimized", (t_optimized - t_apply) * 1000, "every pod confirmed"),
        ]
    return rows, (t_ready - t_apply) * 1000, (t_optimized - t_apply) * 1000, tier_rows


def start_bed(
    kube: kube_mod.Kube, work: Path, run: str, *, mode: str, roots: list[str], pods: int, source: Path | None
) -> Bed:
    """A bed (namespace ``ready-<run>``, its operator and ``pods`` pods); ``source``: the operator and agents run
    the meshplug package of that checkout (its `make native` build) instead of this one."""
    ns = f"ready-{run}"
    fixtures_kube.ensure_namespace(kube, ns)
    # PYTHONSAFEPATH: `python -m` must not put the working directory (this checkout) before PYTHONPATH
    env = {} if source is None else {"PYTHONPATH": str(source), "PYTHONSAFEPATH": "1", "MESHPLUG_REQUIRE_NATIVE": "1"}
    op = operator_mod.start_operator(
        kube.kubeconfig,
        work / f"op-{run}",
        namespaces=[ns],
        extra=[*(f"--file-root={r}" for r in roots), *MODES[mode]],
        env=env,
    )
    bed = Bed(kube, op, [], ns)
    try:
        bed.agents = [start_pod(kube, op, ns, work / run, i, env=env) for i in range(pods)]
    except BaseException:
        stop_bed(bed)
        raise
    return bed


def stop_bed(bed: Bed) -> None:
    for a in bed.agents:
        a.stop()
    bed.op.stop()
    if os.environ.get("READY_DEBUG"):
        print(bed.op.proc.log()[-20000:], file=sys.stderr)


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def run_beds(kube: kube_mod.Kube, work: Path, rep: int, built: list[corpus.BuiltModule], args: Any) -> dict[str, Bed]:
    """One bed per mode and system, all started before the first round (an idle bed costs next to nothing)."""
    roots = sorted({str(m.path.parent) for m in built})
    beds: dict[str, Bed] = {}
    try:
        for mode in args.modes.split(","):
            for label, source in args.systems:
                run = f"{mode}{'-base' if source else ''}-{rep}"
                beds[mode + label] = start_bed(kube, work, run, mode=mode, roots=roots, pods=args.pods, source=source)
    except BaseException:
        for bed in beds.values():
            stop_bed(bed)
        raise
    return beds


def run_rounds(beds: dict[str, Bed], built: list[corpus.BuiltModule], results: dict[str, list[Round]]) -> None:
    """Each module in turn on every bed, interleaved (round i starts with the i-th bed: no system goes first
    each time): the systems meet the same machine load within a round."""
    plan = [
        (m, f"{'create' if i == 0 else 'update'} {m.key} ({m.size / 2**20:.1f} MiB, new)") for i, m in enumerate(built)
    ]
    plan.append((built[0], f"update back to {built[0].key} (compiled already)"))
    names = list(beds)
    for i, (module, title) in enumerate(plan):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            rows, ready_ms, optimized_ms, tier_rows = one_round(beds[name], module, create=i == 0)
            results.setdefault(name, []).append(
                Round(f"{title} (load average {load_average()})", rows, ready_ms, optimized_ms, tier_rows)
            )


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


def print_rows(rows: list[Row]) -> None:
    for stage, ms, note in rows:
        print(f"  {stage:<26}{ms:>9.0f} ms  {note}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pods", type=int, default=2)
    ap.add_argument("--modules", default="go/headers,go/jsonconfig,go/pathrewrite,go/metrics")
    ap.add_argument("--modes", default="tiered,untiered", help=f"comma-separated, of {', '.join(MODES)}")
    ap.add_argument("--envoy-rounds", type=int, default=3)
    ap.add_argument("--baseline", type=Path, help="also run each mode on this checkout (e.g. before a change)")
    ap.add_argument("--repeat", type=int, default=1, help="this many times fresh beds, each through every round")
    args = ap.parse_args()
    built = [corpus.module(k) for k in args.modules.split(",")]
    modes = args.modes.split(",")
    args.systems = [("", None)] + ([("@baseline", args.baseline.resolve())] if args.baseline is not None else [])
    results: dict[str, list[Round]] = {}
    with tempfile.TemporaryDirectory(prefix="meshplug-ready-") as tmp:
        work = Path(tmp)
        with kube_mod.control_plane(work / "kube", work / "logs") as kube:
            fixtures_kube.install_crd(kube, fixtures_kube.crd_body())
            for rep in range(args.repeat):
                beds = run_beds(kube, work, rep, built, args)
                try:
                    run_rounds(beds, built, results)
                finally:
                    for bed in beds.values():
                        stop_bed(bed)
        envoy = envoy_load_ms(built[0].path, args.envoy_rounds, work)
    print(f"WasmPlugin (dataPlane: agent) apply -> Ready, {args.pods} pods; beds interleaved round by round")
    for name, rounds in results.items():
        print(f"\n=== {name}")
        for r in rounds:
            print(f"\n{r.title}")
            print_rows(r.rows)
            if r.tier_rows:
                print("  then, the optimized tier:")
                print_rows([(f"  {stage}", ms, note) for stage, ms, note in r.tier_rows])
    print()
    for name, rounds in results.items():
        new = [r.ready_ms for r in rounds if "(compiled already)" not in r.title]
        opt = [r.optimized_ms for r in rounds if "(compiled already)" not in r.title]
        warm = [r.ready_ms for r in rounds if "(compiled already)" in r.title]
        median = statistics.median(new)
        print(
            f"{name}: apply -> Ready of a new Go module: median {median:.0f} ms over {len(new)} rounds "
            f"(target <= 2000 ms: {'met' if median <= 2000 else 'NOT met'}); apply -> optimized code on every pod: "
            f"median {statistics.median(opt):.0f} ms; warm (compiled already): median {statistics.median(warm):.0f} ms"
        )
    for mode in modes if args.baseline is not None else ():
        pairs = zip(results[mode], results[f"{mode}@baseline"], strict=True)
        ratios = [a.ready_ms / b.ready_ms for a, b in pairs if "(compiled already)" not in a.title]
        print(
            f"{mode}: apply -> Ready, this checkout / baseline, median of per-round ratios: "
            f"{statistics.median(ratios):.2f}x"
        )
    for label, _ in args.systems if {"tiered", "untiered"} <= set(modes) else ():
        pairs = zip(results[f"tiered{label}"], results[f"untiered{label}"], strict=True)
        ratios = [a.ready_ms / b.ready_ms for a, b in pairs if "(compiled already)" not in a.title]
        print(
            f"tiered{label} / untiered{label}: apply -> Ready, median of per-round ratios: "
            f"{statistics.median(ratios):.2f}x"
        )
    print(
        f"Envoy 1.40 + V8 loading {built[0].key} (start to first response through it, minus without): {envoy:.0f} ms "
        f"(median of {args.envoy_rounds})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`meshplug agent --concurrency 2` as Envoy's `--concurrency 2`: workers accepting on the same port, one VM set
each, proxy-wasm shared data (CAS) and shared queues that are one across the workers, one push endpoint (one
ACK/NACK for all workers), one admin view (stats summed), a worker that dies replaced with the active set.

The admin view is checked against Envoy --concurrency 2 running the same metrics plugin (corpus rust/metrics)
after the same requests, spread over both workers: /stats shows the plugin's counter, its add-and-subtract gauge,
the gauge it sets (the last value set by any worker, not a sum) and its histogram (both workers' samples) as
Envoy's one stats store does, and the agent's own counters, the per-plugin health (GET /v1/plugin_health) and
/plugin_stats count every request once; then requests one at a time, any worker: the plugin's get_metric of its
counter answers 49, 50, ... on both proxies (one counter for every worker). Counts, never times.

The shared state is checked with the same guest on Envoy 1.40 --concurrency 2 in the same test: each request
increments a shared counter with a CAS loop and answers with its new value, and enqueues it to a queue the root
contexts registered; the queue's owner counts what it dequeued (`GET /dequeued`). Both proxies must hand out
every number once (no lost or repeated CAS) and dequeue every item once. A plugin's log lines, from either
worker, come out of /plugin_logs in the order they were logged, as from Envoy's one log.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import wasmtime

from meshplug import native, protocol
from tests.corpus import modules
from tests.guests import minimal
from tests.testbed import agent as tb_agent
from tests.testbed import envoy as tb_envoy
from tests.testbed import nginx as tb_nginx
from tests.testbed import procs

TOKEN = "push-token-for-the-workers-test"
REQUESTS, THREADS = 240, 8
# every request: n += 1 by CAS (8 ASCII digits), enqueue the new n on queue "q", answer 200 with n;
# GET /dequeued answers d, which the queue's owner (its last registrant) increments per item it dequeues
COUNTER = f"""(module
  (import "env" "proxy_get_shared_data" (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_shared_data" (func $set (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_register_shared_queue" (func $register (param i32 i32 i32) (result i32)))
  (import "env" "proxy_resolve_shared_queue" (func $resolve (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_enqueue_shared_queue" (func $enqueue (param i32 i32 i32) (result i32)))
  (import "env" "proxy_dequeue_shared_queue" (func $dequeue (param i32 i32 i32) (result i32)))
  (import "env" "proxy_send_local_response" (func $reply (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_value" (func $header (param i32 i32 i32 i32 i32) (result i32)))
  {minimal.BUMP_HEAP}
  (data (i32.const 100) "n")
  (data (i32.const 104) "d")
  (data (i32.const 108) "q")
  (data (i32.const 112) ":path")
  (data (i32.const 120) "/dequeued")
  (func $read (param $k i32)
    (i32.store (i32.const 208) (i32.const 0))
    (if (i32.eqz (call $get (local.get $k) (i32.const 1) (i32.const 200) (i32.const 204) (i32.const 208)))
      (then (i64.store (i32.const 300) (i64.load (i32.load (i32.const 200)))))
      (else (i64.store (i32.const 300) (i64.const 0x3030303030303030)))))
  (func $incr (param $k i32) (local $i i32) (local $c i32)
    (loop $retry
      (call $read (local.get $k))
      (local.set $i (i32.const 307))
      (block $done
        (loop $carry
          (local.set $c (i32.add (i32.load8_u (local.get $i)) (i32.const 1)))
          (if (i32.le_u (local.get $c) (i32.const 57))
            (then (i32.store8 (local.get $i) (local.get $c)) (br $done)))
          (i32.store8 (local.get $i) (i32.const 48))
          (local.set $i (i32.sub (local.get $i) (i32.const 1)))
          (br_if $carry (i32.ge_u (local.get $i) (i32.const 300)))))
      (br_if $retry (i32.eq (call $set (local.get $k) (i32.const 1) (i32.const 300) (i32.const 8)
                                  (i32.load (i32.const 208))) (i32.const 8)))))
  (func $is_dequeued_path (result i32) (local $p i32) (local $i i32)
    (if (call $header (i32.const 0) (i32.const 112) (i32.const 5) (i32.const 200) (i32.const 204))
      (then (return (i32.const 0))))
    (if (i32.ne (i32.load (i32.const 204)) (i32.const 9)) (then (return (i32.const 0))))
    (local.set $p (i32.load (i32.const 200)))
    (block $no
      (loop $cmp
        (br_if $no (i32.ne (i32.load8_u (i32.add (local.get $p) (local.get $i)))
                           (i32.load8_u (i32.add (i32.const 120) (local.get $i)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br_if $cmp (i32.lt_u (local.get $i) (i32.const 9))))
      (return (i32.const 1)))
    (i32.const 0))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
    (drop (call $register (i32.const 108) (i32.const 1) (i32.const 212))) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (if (call $is_dequeued_path)
      (then (call $read (i32.const 104)))
      (else
        (call $incr (i32.const 100))
        (drop (call $resolve (i32.const 0) (i32.const 0) (i32.const 108) (i32.const 1) (i32.const 216)))
        (drop (call $enqueue (i32.load (i32.const 216)) (i32.const 300) (i32.const 8)))))
    (drop (call $reply (i32.const 200) (i32.const 0) (i32.const 0) (i32.const 300) (i32.const 8)
                       (i32.const 0) (i32.const 0) (i32.const -1)))
    (i32.const 1))
  (func (export "proxy_on_queue_ready") (param i32 i32)
    (loop $more
      (if (i32.eqz (call $dequeue (local.get 1) (i32.const 200) (i32.const 204)))
        (then (call $incr (i32.const 104)) (br $more))))))"""
# adds `x-set: <marker>` to every response: which set a worker serves
HEADER = """(module
  (import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "x-set")
  (data (i32.const 120) "%s")
  (func (export "malloc") (param i32) (result i32) (i32.const 2048))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (drop (call $add (i32.const 2) (i32.const 100) (i32.const 5) (i32.const 120) (i32.const %d))) (i32.const 0)))"""

# logs each request's :path (proxy_log, info): the order of the log is the order of the requests
LOGGER = f"""(module
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_value" (func $header (param i32 i32 i32 i32 i32) (result i32)))
  {minimal.BUMP_HEAP}
  {minimal.STARTS}
  (data (i32.const 112) ":path")
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (if (i32.eqz (call $header (i32.const 0) (i32.const 112) (i32.const 5) (i32.const 200) (i32.const 204)))
      (then (drop (call $log (i32.const 2) (i32.load (i32.const 200)) (i32.load (i32.const 204))))))
    (i32.const 0)))"""

_NATIVE = native.check()
needs_native = pytest.mark.skipif(
    not _NATIVE.extension, reason=f"--concurrency needs the native build: {_NATIVE.reason}"
)


def wasm(work: Path, name: str, wat: str) -> Path:
    path = work / f"{name}.wasm"
    path.write_bytes(wasmtime.wat2wasm(wat))
    return path


def header_module(work: Path, marker: str) -> Path:
    return wasm(work, f"set-{marker}", HEADER % (marker, len(marker)))


def fetch(port: int, path: str = "/x") -> tuple[int, dict[str, str], bytes]:
    """One request on a connection of its own (so the kernel may give it to any worker)."""
    return tb_agent.http_request(port, "GET", path, headers={"connection": "close"})


def counted(port: int) -> list[int]:
    """REQUESTS increments, the first alone: it creates the key, and a set whose CAS is 0 (the guest's read found
    nothing) is unconditional in proxy-wasm -- in Envoy as in the agent, two first increments at once both write 1.
    The rest run THREADS at a time, each through CAS retries."""
    first = int(fetch(port)[2])

    def some(n: int) -> list[int]:
        return [int(fetch(port)[2]) for _ in range(n)]

    share, extra = divmod(REQUESTS - 1, THREADS)
    with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
        chunks = pool.map(some, [share + (i < extra) for i in range(THREADS)])
        return sorted([first, *(v for chunk in chunks for v in chunk)])


def dequeued(port: int) -> int:
    out = 0

    def all_dequeued() -> bool:
        nonlocal out
        out = int(fetch(port, "/dequeued")[2])
        return out == REQUESTS

    procs.wait_until(all_dequeued, timeout=30, interval=0.1, what="the queue's owner to dequeue every item")
    return out


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[procs.Proc]:
    proc = tb_nginx.start_nginx(log_dir=tmp_path / "logs")
    yield proc
    proc.stop()


def start(tmp_path: Path, upstream: int, plugins: list[dict[str, object]], *, push: bool = False) -> tb_agent.Agent:
    raw = tb_agent.base_config(
        port=procs.free_port(), admin_port=procs.free_port(), clusters={"upstream": upstream}, plugins=plugins
    )
    if push:
        (tmp_path / "token").write_text(TOKEN)
        raw["push"] = {
            "address": "127.0.0.1",
            "port": procs.free_port(),
            "token_file": str(tmp_path / "token"),
            "allow_plaintext": True,
        }
        raw["modules"] = {"file_roots": [str(tmp_path)]}
        raw["state_dir"] = str(tmp_path / "state")
    return tb_agent.start_agent(raw, work_dir=tmp_path / "agent", log_dir=tmp_path, log_level="info", concurrency=2)


def workers(agent: tb_agent.Agent) -> list[dict[str, object]]:
    return list(agent.config_dump()["workers"])


@needs_native
def test_shared_data_and_queues_are_one_across_workers_as_in_envoy(tmp_path: Path, upstream: procs.Proc) -> None:
    module = wasm(tmp_path, "counter", COUNTER)
    agent = start(tmp_path, upstream.ports["http"], [{"name": "counter", "module": {"file": str(module)}}])
    try:
        assert counted(agent.port) == list(range(1, REQUESTS + 1))  # every CAS increment once, in any worker
        assert dequeued(agent.port) == REQUESTS  # every item dequeued once, by the queue's one owner
        served = [int(str(w["requests"])) for w in workers(agent)]
        assert len(served) == 2 and all(n > 0 for n in served), served  # both workers took connections
        stats = agent.admin("/stats/prometheus")[1].decode()
        assert f"meshplug_agent_downstream_rq_total {sum(served)}" in stats  # one admin view: summed
    finally:
        agent.stop()

    # the same guest on Envoy 1.40 with two workers behaves the same
    envoy, port, _ = start_envoy(tmp_path, upstream.ports["http"], "counter", module)
    try:
        assert counted(port) == list(range(1, REQUESTS + 1))
        assert dequeued(port) == REQUESTS
    finally:
        envoy.stop()


def start_envoy(tmp_path: Path, upstream: int, name: str, module: Path) -> tuple[procs.Proc, int, int]:
    """Envoy 1.40 --concurrency 2 with `module` (V8) as plugin `name`: (process, port, admin port). Its admin
    requests flush the stats (so /stats shows histograms as they are, as the agent's does)."""
    port, admin = procs.free_port(), procs.free_port()
    filters = [
        {
            "name": "envoy.filters.http.wasm",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": {
                    "name": name,
                    "vm_config": {"runtime": "envoy.wasm.runtime.v8", "code": {"local": {"filename": str(module)}}},
                },
            },
        }
    ]
    listener = tb_envoy.http_listener("main", port, cluster="upstream", http_filters=filters)
    cfg = tb_envoy.bootstrap(admin, [listener], [tb_envoy.static_cluster("upstream", upstream)])
    cfg["stats_flush_on_admin"] = True
    envoy = tb_envoy.start_envoy(
        tb_envoy.write_config(cfg, tmp_path / f"envoy-{name}.json"), admin_port=admin, log_dir=tmp_path, concurrency=2
    )
    return envoy.proc, port, admin


#: the metrics test's requests: path lengths 2..49 (the plugin's histogram samples), each on a connection of its own
PATHS = tuple("/" + "p" * n for n in range(1, 49))
#: what the test compares with Envoy's /stats: every metric the plugin defines -- its counter, the gauge it adds to
#: and subtracts from, the gauge it sets (the last status: one gauge for every worker, the last value set wins, as
#: in Envoy's one stats store) and its histogram (both workers' samples)
COMPARED = "filter=wasmcustom%5C.rust_metrics_"
#: requests one after another, after PATHS: each answer's x-request-count is the plugin's get_metric of its counter
SEQUENTIAL = 16


def request_counts(port: int) -> list[int]:
    """SEQUENTIAL requests one at a time, each on a connection of its own (any worker): their x-request-count."""
    out = []
    for _ in range(SEQUENTIAL):
        status, headers, _ = fetch(port)
        assert status == 200
        out.append(int(headers["x-request-count"]))
    return out


def spread(port: int) -> None:
    """Every path of PATHS once, 4 at a time, each on a new connection (the kernel spreads them over workers)."""
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(lambda path: tb_agent.http_request(port, "GET", path)[0], PATHS))
    assert statuses == [200] * len(PATHS)


def plugin_health(agent: tb_agent.Agent) -> protocol.Health:
    status, _, body = tb_agent.http_request(
        int(str(agent.push_port)), "GET", protocol.HEALTH_PATH, headers=protocol.bearer(TOKEN)
    )
    assert status == 200, body
    return protocol.decode_health(body)


def text_stats(body: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in body.splitlines())


@needs_native
def test_the_admin_view_sums_the_workers_stats_as_envoys_one_store(tmp_path: Path, upstream: procs.Proc) -> None:
    module = modules.module("rust/metrics").path
    n = len(PATHS)
    agent = start(tmp_path, upstream.ports["http"], [{"name": "metrics", "module": {"file": str(module)}}], push=True)
    envoy, envoy_port, envoy_admin = start_envoy(tmp_path, upstream.ports["http"], "metrics", module)
    try:
        spread(agent.port)
        spread(envoy_port)

        def envoy_stats(query: str) -> str:
            status, body = tb_envoy.admin_get(envoy_admin, f"/stats?{query}")
            assert status == 200, body
            return body

        def agent_stats(query: str = "") -> str:
            status, body = agent.admin(f"/stats?{query}")
            assert status == 200, body
            return body.decode()

        def settled(body: str) -> bool:
            """Every stream ended: its end is counted as its response leaves, so the client may be first (the
            agent's own counters too: every 2xx counted); Envoy's histograms merged, which it does after the
            admin request that flushes them is answered."""
            stats = text_stats(body)
            return (
                stats.get("wasmcustom.rust_metrics_inflight") == "0"
                and "No recorded values" not in body
                and stats.get("meshplug.downstream_rq_2xx", str(n)) == str(n)
            )

        procs.wait_until(lambda: settled(envoy_stats(COMPARED)), timeout=10, what="Envoy's streams and flush")
        procs.wait_until(lambda: settled(agent_stats()), timeout=10, what="the agent's streams")
        served = [int(str(w["requests"])) for w in workers(agent)]
        assert len(served) == 2 and all(k > 0 for k in served) and sum(served) == n, served  # both workers served
        assert agent_stats(COMPARED) == envoy_stats(COMPARED)  # the same bytes: counts, gauges, quantiles
        compared = text_stats(agent_stats(COMPARED))
        assert compared["wasmcustom.rust_metrics_requests"] == str(n)
        assert compared["wasmcustom.rust_metrics_status"] == "200"  # the last set, not a sum over the workers

        stats = text_stats(agent_stats())
        assert stats["meshplug.downstream_rq_total"] == str(n) and stats["meshplug.downstream_rq_2xx"] == str(n)
        assert stats["wasm.plugin.metrics.rq_total"] == str(n) and stats["wasm.plugin.metrics.failed"] == "0"
        document = json.loads(agent.admin("/stats?format=json&filter=downstream_rq_total")[1])
        assert document == {"stats": [{"name": "meshplug.downstream_rq_total", "value": n}]}
        prometheus = agent.admin("/stats/prometheus")[1].decode().splitlines()
        assert f"meshplug_agent_downstream_rq_total {n}" in prometheus
        assert agent.admin_json("/plugin_stats")["rust_metrics_requests"] == n

        health = plugin_health(agent)
        assert [(p.name, p.requests, p.failures, sum(p.latency)) for p in health.plugins] == [("metrics", n, 0, n)]

        # get_metric reads the one counter every worker adds to: request after request, whichever worker
        expected = list(range(n + 1, n + SEQUENTIAL + 1))
        assert request_counts(envoy_port) == expected
        assert request_counts(agent.port) == expected
        again = [int(str(w["requests"])) for w in workers(agent)]
        assert all(b > a for a, b in zip(served, again, strict=True)), (served, again)  # both workers answered
    finally:
        envoy.stop()
        agent.stop()


class HoldingUpstream(http.server.ThreadingHTTPServer):
    """An upstream that answers /hold only once released (counting those it holds) and anything else at once:
    streams kept in flight past their request headers, with no clock involved."""

    daemon_threads = True

    def __init__(self) -> None:
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.held = 0
        super().__init__(("127.0.0.1", 0), _Holding)


class _Holding(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: HoldingUpstream

    def do_GET(self) -> None:
        if self.path == "/hold":
            with self.server.lock:
                self.server.held += 1
            self.server.release.wait(60)
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *_: object) -> None:
        pass


#: requests kept in flight (their streams counted in the plugin's gauge) while SEQUENTIAL others read it
HELD = 6


@needs_native
def test_get_metric_of_a_gauge_reads_the_one_gauge_every_worker_moves_as_envoy(tmp_path: Path) -> None:
    """corpus go/metrics adds 1 to its gauge at a request's headers and 1 less when its stream is done, and answers
    the gauge's get_metric (x-requests-active). HELD requests wait on the upstream (on either worker), then
    requests one at a time, each on a connection of its own: every one reads HELD + 1 on Envoy --concurrency 2 and
    on the agent, whose two workers both answered some -- a gauge per worker would read its own worker's streams
    only, so on at least one of them less than HELD + 1."""
    module = modules.module("go/metrics").path
    upstream = HoldingUpstream()
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    port = upstream.server_address[1]
    agent = start(tmp_path, int(port), [{"name": "metrics", "module": {"file": str(module)}}])
    envoy, envoy_port, _ = start_envoy(tmp_path, int(port), "metrics", module)
    held: list[socket.socket] = []
    try:
        for count, proxy in enumerate((envoy_port, agent.port), start=1):
            for _ in range(HELD):
                conn = socket.create_connection(("127.0.0.1", proxy))
                conn.sendall(b"GET /hold HTTP/1.1\r\nhost: x\r\n\r\n")
                held.append(conn)
            want = count * HELD
            procs.wait_until(lambda: upstream.held == want, timeout=20, what="the held requests upstream")  # noqa: B023
            served = [int(str(w["requests"])) for w in workers(agent)] if proxy == agent.port else []
            active = []
            for _ in range(SEQUENTIAL):
                status, headers, _ = fetch(proxy)
                assert status == 200
                active.append(int(headers["x-requests-active"]))
            assert active == [HELD + 1] * SEQUENTIAL, (proxy == agent.port, active)
            if served:
                again = [int(str(w["requests"])) for w in workers(agent)]
                assert all(b > a for a, b in zip(served, again, strict=True)), (served, again)  # both answered
    finally:
        upstream.release.set()
        for conn in held:
            conn.close()
        envoy.stop()
        agent.stop()
        upstream.shutdown()
        upstream.server_close()


@needs_native
def test_the_plugins_log_is_one_log_in_time_order_as_envoys(tmp_path: Path, upstream: procs.Proc) -> None:
    """Requests one after another, each on a connection of its own (either worker): /plugin_logs lists the
    plugin's lines in the order they were logged, as Envoy's one log does -- not worker by worker."""
    module = wasm(tmp_path, "logger", LOGGER)
    paths = [f"/{i}" for i in range(SEQUENTIAL)]
    envoy, port, _ = start_envoy(tmp_path, upstream.ports["http"], "logger", module)
    try:
        assert [fetch(port, path)[0] for path in paths] == [200] * len(paths)
        procs.wait_until(lambda: len(envoy_lines(envoy)) >= len(paths), timeout=10, what="Envoy's log lines")
        assert envoy_lines(envoy) == paths
    finally:
        envoy.stop()
    agent = start(tmp_path, upstream.ports["http"], [{"name": "logger", "module": {"file": str(module)}}])
    try:
        assert [fetch(agent.port, path)[0] for path in paths] == [200] * len(paths)
        served = [int(str(w["requests"])) for w in workers(agent)]
        assert all(k > 0 for k in served), served  # both workers logged
        assert [r["message"] for r in agent.admin_json("/plugin_logs")] == paths
    finally:
        agent.stop()


def envoy_lines(envoy: procs.Proc) -> list[str]:
    return [m for level, m in tb_envoy.wasm_logs(envoy.log()) if level == "info"]


def push(agent: tb_agent.Agent, version: str, module: Path) -> protocol.Reply:
    data = module.read_bytes()
    resource = protocol.ExtensionConfig(
        name="set", root_id="", url=module.as_uri(), sha256=hashlib.sha256(data).hexdigest()
    )
    return agent.push(version, [resource], token=TOKEN)


def markers(port: int, n: int = 40) -> set[str | None]:
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        return {h.get("x-set") for _, h, _ in pool.map(lambda _: fetch(port), range(n))}


@needs_native
def test_one_push_endpoint_for_all_workers_and_a_dead_worker_is_replaced(tmp_path: Path, upstream: procs.Proc) -> None:
    agent = start(tmp_path, upstream.ports["http"], [], push=True)
    try:
        assert markers(agent.port) == {None}
        reply = push(agent, "v1", header_module(tmp_path, "one"))
        assert reply.ack and [p.state for p in reply.plugins] == [protocol.PluginState.RUNNING]
        assert markers(agent.port) == {"one"}  # both workers switched before the ACK
        assert all(int(str(w["requests"])) > 0 for w in workers(agent))

        # a set one worker cannot start is NACKed for all; every worker keeps serving the last good set
        fails = tmp_path / "fails.wasm"
        fails.write_bytes(minimal.passthrough(vm_start=0))
        reply = push(agent, "v2", fails)
        assert not reply.ack and reply.error_detail is not None and reply.error_detail.reason == "start_failed"
        assert reply.version_info == "v1" and markers(agent.port) == {"one"}
        dump = agent.config_dump()
        assert dump["version_info"] == "v1" and dump["last_push"]["ack"] is False

        # a worker that dies is started again with the active set before it takes connections
        victim = workers(agent)[0]
        os.kill(int(str(victim["pid"])), signal.SIGKILL)

        def replaced() -> bool:
            now = workers(agent)
            return len(now) == 2 and all(w["running"] for w in now) and victim["pid"] not in {w["pid"] for w in now}

        procs.wait_until(replaced, timeout=60, interval=0.2, what="the killed worker to be replaced")
        assert markers(agent.port, 60) == {"one"}
        assert push(agent, "v3", header_module(tmp_path, "three")).ack
        assert markers(agent.port) == {"three"}
    finally:
        agent.stop()


def test_concurrency_needs_the_native_build(tmp_path: Path) -> None:
    raw = tb_agent.base_config(port=procs.free_port(), admin_port=procs.free_port(), clusters={"upstream": 9})
    path = tb_agent.write_config(tmp_path, raw)
    argv = [sys.executable, "-m", "meshplug", "agent", "--config", str(path), "--concurrency", "2"]
    env = {k: v for k, v in os.environ.items() if k != "MESHPLUG_REQUIRE_NATIVE"} | {"MESHPLUG_NATIVE": "0"}
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "--concurrency 2 needs the native build" in out.stderr, out.stderr
    assert json.dumps({"event": "ready"})[:10] not in out.stdout

"""Every corpus spec of wasm plugins on the meshplug host: start + configure each module with its spec's
configuration, then each spec case's request/response lifecycle in-process (http calls answered, ticks run), no
VM failure. The behaviour specs themselves run over real sockets through the agent and Envoy
(tests/corpus/runner.py, test_corpus_agent/test_corpus_envoy). Only there run: specs with Lua filters
(examples/filters/lua; this is the wasm host), and specs with their own bootstrap, whose chain, routes and
singletons the bootstrap gives (a bare in-process chain has no router and runs no singletons)."""

from __future__ import annotations

import functools

import pytest

from meshplug.agent import chain as C
from meshplug.agent import host as H
from tests.corpus import modules, spec

BUILT = modules.all_modules()
# wasm specs whose chain is the spec's own; a spec with a bootstrap has its chain, routes and singletons there and
# runs on both planes in test_corpus_* (an in-process chain has no router and runs no singletons)
SPECS = [s for s in spec.load_all() if s.bootstrap is None and all(p.lua is None for p in s.plugins)]


@functools.cache
def module_bytes(key: str) -> bytes:
    return BUILT[key].path.read_bytes()


def load(sp: spec.Spec, backend: str) -> tuple[H.Host, list[H.Plugin]]:
    host = H.Host(backend=backend, upstreams=None, node={"NAME": "pod-1", "NAMESPACE": "default"})
    plugins = [
        host.load(
            H.PluginConfig(
                name=p.name,
                root_id=p.root_id,
                vm_id=p.vm_id,
                configuration=p.configuration.encode(),
                vm_configuration=p.vm_configuration.encode(),
                env=p.env,
                fail_strategy=C.FailStrategy.FAIL_OPEN if p.fail_open else C.FailStrategy.FAIL_CLOSE,
            ),
            module_bytes(p.module),
            digest=BUILT[p.module].sha256,
        )
        for p in sp.plugins
    ]
    return host, plugins


def answer_calls(host: H.Host) -> bool:
    """Answer every pending http call (callouts may chain); True if there was any."""
    called = False
    for _ in range(5):
        calls = host.take_http_calls()
        if not calls:
            break
        called = True
        for call in calls:
            host.complete_http_call(call.id, H.HttpCalloutResult(((b":status", b"200"),), b"{}"))
    return called


def drive_background(host: H.Host) -> None:
    """What a case with `wait_for` waits for on a real plane: due ticks, their callouts, queued work."""
    for _ in range(3):
        host.run_timers(now=(host.next_timer() or 0) + 3600)
        answer_calls(host)
        host.run_deferred()


def run_case(host: H.Host, ch: C.Chain, case: spec.HttpCase) -> tuple[int, bool]:
    if case.wait_for is not None:
        drive_background(host)
    req = case.request
    headers = [(k.encode(), v.encode()) for k, v in req.headers] or [(b"host", b"svc")]
    if not any(k.lower() == b"host" for k, _ in headers):
        headers.append((b"host", b"svc"))
    s = ch.new_stream(C.StreamInfo(remote_address="10.0.0.9", remote_port=40000))
    out = s.recv_request_headers(
        C.http1_request_headers(req.method.encode(), req.path.encode(), headers), not req.body_chunks
    )
    for i, chunk in enumerate(req.body_chunks):
        out += s.recv_request_data(chunk, i == len(req.body_chunks) - 1)
    called = answer_calls(host)
    out += s.take_outputs()
    up_done = any(
        isinstance(o, (C.SendHeaders, C.SendData)) and o.target == C.Target.UPSTREAM and o.end_stream for o in out
    )
    if up_done and not any(isinstance(o, C.AbortUpstream) for o in out):
        ur = case.upstream_response or spec.UpstreamResponse(200, (), (b"upstream body",))
        rh = C.http1_response_headers(ur.status, [(k.encode(), v.encode()) for k, v in ur.headers])
        out += s.recv_response_headers(rh, not ur.body_chunks)
        for i, chunk in enumerate(ur.body_chunks):
            out += s.recv_response_data(chunk, i == len(ur.body_chunks) - 1)
    out += s.complete()
    down = [o for o in out if isinstance(o, C.SendHeaders) and o.target == C.Target.DOWNSTREAM]
    assert down, f"{case.name}: no response reached the client: {out}"
    return int(dict(down[0].headers)[b":status"]), called


@pytest.mark.parametrize("backend", ["fast", "public"])
@pytest.mark.parametrize("sp", SPECS, ids=lambda s: s.key)
def test_corpus_module_runs_on_the_host(sp: spec.Spec, backend: str) -> None:
    host, plugins = load(sp, backend)
    if sp.type == "network":
        for case in sp.network_cases:
            conn = plugins[0].new_connection()
            assert conn is not None and conn.start() != C.Action.FAIL
            for data in case.send:
                action, _ = conn.on_downstream_data(data, False)
                assert action != C.Action.FAIL
            conn.on_close("downstream")
            conn.finish()
    else:
        ch = C.Chain(plugins)
        for http_case in sp.http_cases:
            status, called = run_case(host, ch, http_case)
            if http_case.expect.status is not None and not called:
                assert status == http_case.expect.status, http_case.name
    host.run_timers(now=(host.next_timer() or 0) + 3600)
    host.run_deferred()
    assert [p.name for p in plugins if p.failed is not None] == []
    host.close()

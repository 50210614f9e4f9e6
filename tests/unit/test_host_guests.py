"""Every WAT edge-case guest (tests/guests/guests.yaml) on the host, both wasm backends, each fail strategy:
the expected failure happens, the strategy is applied, and the host keeps serving other plugins."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
import wasmtime
import yaml

from meshplug import errors
from meshplug.agent import chain as C
from meshplug.agent import host as H

GUESTS = Path(__file__).resolve().parents[1] / "guests"
CATALOG: dict[str, Any] = yaml.safe_load((GUESTS / "guests.yaml").read_text())
BACKENDS = ("fast", "public")
STRATEGIES = (C.FailStrategy.FAIL_CLOSE, C.FailStrategy.FAIL_OPEN, C.FailStrategy.FAIL_RELOAD)


@functools.cache
def wasm(name: str) -> bytes:
    return bytes(wasmtime.wat2wasm((GUESTS / CATALOG[name]["file"]).read_text()))


def new_host(backend: str, *, looping: bool = False) -> H.Host:
    """A host with the agent's own budgets, or short ones for the tests whose guests may loop for ever.

    Budgets are wall time (the epoch ticker is a native thread): a guest that finishes gets the agent's budgets, so a
    loaded test machine cannot turn a slow callback into a failure; only the looping guests' tests shorten them."""
    if looping:
        return H.Host(backend=backend, deadline_ms=200, start_deadline_ms=1000)
    return H.Host(backend=backend)


def exchange(
    ch: C.Chain, *, body: bytes = b"", call_answer: H.Host | None = None
) -> tuple[int, dict[bytes, bytes], bool]:
    """One request through `ch` with the test as upstream. Returns (status, response headers, upstream reached)."""
    s = ch.new_stream(C.StreamInfo(remote_address="10.1.2.3", remote_port=4444))
    out = s.recv_request_headers(C.http1_request_headers(b"GET", b"/p", [(b"host", b"svc")]), end_stream=not body)
    if body:
        out += s.recv_request_data(body, end_stream=True)
    if call_answer is not None:
        for call in call_answer.take_http_calls():
            call_answer.complete_http_call(call.id, H.HttpCalloutResult(((b":status", b"200"),), b"ok"))
        out += s.take_outputs()
    reached = any(isinstance(o, C.SendHeaders) and o.target == C.Target.UPSTREAM for o in out)
    finished_up = any(
        getattr(o, "end_stream", False) and o.target == C.Target.UPSTREAM for o in out if hasattr(o, "target")
    )
    if reached and finished_up and not any(isinstance(o, C.AbortUpstream) for o in out):
        out += s.recv_response_headers(C.http1_response_headers(200, [(b"content-type", b"text/plain")]), False)
        out += s.recv_response_data(b"hello", True)
    out += s.complete()
    down = [o for o in out if isinstance(o, C.SendHeaders) and o.target == C.Target.DOWNSTREAM]
    if not down:
        return 0, {}, reached
    headers = dict(down[0].headers)
    return int(headers[b":status"]), headers, reached


def healthy_plugin_still_serves(host: H.Host) -> None:
    other = host.load(H.PluginConfig(name="other"), wasm("abi_0_2_1"))
    status, headers, reached = exchange(C.Chain([other]))
    assert (status, reached, headers.get(b"x-guest")) == (200, True, b"abi_0_2_1")


def cases(outcome: str) -> list[str]:
    return [k for k, v in CATALOG.items() if v["runtime"]["outcome"] == outcome]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", [n for n in cases("ok") if n != "network_filter"])
def test_ok_guests_serve_requests(name: str, backend: str) -> None:
    host = new_host(backend)
    plugin = host.load(H.PluginConfig(name=name), wasm(name))
    status, headers, reached = exchange(C.Chain([plugin]))
    assert status == 200 and reached
    if name.startswith(("abi_", "entry_", "allocator_")):
        assert headers.get(b"x-guest") == name.encode()


@pytest.mark.parametrize("backend", BACKENDS)
def test_edge_statuses_are_what_the_catalog_says(backend: str) -> None:
    host = new_host(backend)
    seen: dict[str, dict[bytes, bytes]] = {}
    for name in ("oob_pointers", "malformed_pairs_set_header_map", "malformed_pairs_local_response"):
        plugin = host.load(H.PluginConfig(name=name), wasm(name))
        s = C.Chain([plugin]).new_stream()
        out = s.recv_request_headers(C.http1_request_headers(b"GET", b"/", [(b"host", b"h")]), True)
        up = [o for o in out if isinstance(o, C.SendHeaders) and o.target == C.Target.UPSTREAM]
        assert up, f"{name}: request did not reach the upstream: {out}"
        seen[name] = dict(up[0].headers)
        s.complete()
    assert seen["oob_pointers"][b"x-oob-status"] == b"6666"
    assert seen["malformed_pairs_set_header_map"][b"x-pairs-status"] == b"2222"
    assert seen["malformed_pairs_local_response"][b"x-local-reply-status"] == b"2"


@pytest.mark.parametrize("backend", BACKENDS)
def test_network_filter_passes_bytes(backend: str) -> None:
    host = new_host(backend)
    plugin = host.load(H.PluginConfig(name="net"), wasm("network_filter"))
    conn = plugin.new_connection()
    assert conn is not None
    assert conn.start() == C.Action.CONTINUE
    assert conn.on_downstream_data(b"ping", False) == (C.Action.CONTINUE, b"ping")
    assert conn.on_upstream_data(b"pong", True) == (C.Action.CONTINUE, b"pong")
    conn.on_close("downstream")
    conn.finish()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", cases("refused") + cases("start_fails"))
def test_refused_and_failing_starts_raise_plugin_start_error(name: str, backend: str) -> None:
    host = new_host(backend, looping=True)
    with pytest.raises(errors.PluginStartError):
        host.load(H.PluginConfig(name=name), wasm(name))
    healthy_plugin_still_serves(host)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.value)
@pytest.mark.parametrize("name", cases("request_fails"))
def test_request_failures_apply_the_fail_strategy(name: str, strategy: C.FailStrategy, backend: str) -> None:
    host = new_host(backend, looping=True)
    plugin = host.load(H.PluginConfig(name=name, fail_strategy=strategy), wasm(name))
    ch = C.Chain([plugin])
    body = b"payload" if name == "trap_request_body" else b""
    answer = host if name == "trap_http_call_response" else None
    status, headers, reached = exchange(ch, body=body, call_answer=answer)
    if strategy == C.FailStrategy.FAIL_OPEN:
        assert status == 200, (status, headers)
    elif name == "trap_response_headers":
        assert status == 503 and reached  # upstream called, then the response fails
    else:
        assert status == 503 and b"content-length" not in headers  # a bodiless local reply
    # later requests: open bypasses, close keeps failing, reload starts a fresh VM
    status2, _, _ = exchange(ch, body=body, call_answer=answer)
    if strategy == C.FailStrategy.FAIL_OPEN:
        assert status2 == 200
    else:
        assert status2 == 503
    if strategy == C.FailStrategy.FAIL_RELOAD and name != "root_only":
        assert plugin.reloads >= 1
    healthy_plugin_still_serves(host)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.value)
@pytest.mark.parametrize("name", cases("vm_fails_later"))
def test_later_vm_failures_apply_the_fail_strategy(name: str, strategy: C.FailStrategy, backend: str) -> None:
    host = new_host(backend, looping=True)
    plugin = host.load(H.PluginConfig(name=name, fail_strategy=strategy), wasm(name))
    ch = C.Chain([plugin])
    if name == "trap_tick":
        assert host.next_timer() is not None
        host.run_timers(now=host.next_timer())
    else:
        status, _, _ = exchange(ch)
        assert status == 200  # the first response is delivered, then on_log/on_done traps
    assert plugin.failed is not None
    status, _, _ = exchange(ch)
    assert status == (
        200 if strategy == C.FailStrategy.FAIL_OPEN else 200 if strategy == C.FailStrategy.FAIL_RELOAD else 503
    )
    if strategy == C.FailStrategy.FAIL_RELOAD:
        assert plugin.reloads == 1
    healthy_plugin_still_serves(host)


@pytest.mark.parametrize("backend", BACKENDS)
def test_memory_cap_holds(backend: str) -> None:
    host = new_host(backend)
    plugin = host.load(
        H.PluginConfig(name="bomb", fail_strategy=C.FailStrategy.FAIL_CLOSE), wasm("memory_growth_unbounded")
    )
    status, _, _ = exchange(C.Chain([plugin]))
    assert status == 503
    assert plugin.vm.guest.memory_size() <= plugin.vm.guest.memory_cap

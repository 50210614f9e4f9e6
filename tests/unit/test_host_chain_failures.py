"""A plugin that traps in the middle of a chain, in every callback of a stream, on both backends (the fast one
runs a stream's end -- log, done, delete -- as one call into C, `vm.Guest.call_each`; the public one loops in
Python): the plugins before and after it see what Envoy shows them, its fail strategy decides the response
(FAIL_OPEN: the stream goes on without it; FAIL_CLOSE: 503 ``wasm_fail_stream``, or a reset once the response
went downstream), and once its VM failed it gets no further callback, not even its access-log ones."""

from __future__ import annotations

import pytest

from meshplug.agent import chain as C
from meshplug.agent import host as H
from tests.unit.test_host_lifecycle import BACKENDS, new_host, summary, trace, tracer

OPEN, CLOSE = C.FailStrategy.FAIL_OPEN, C.FailStrategy.FAIL_CLOSE
ALL = [
    "context_create",
    "request_headers",
    "request_body",
    "response_headers",
    "response_body",
    "log",
    "done",
    "delete",
]
#: a response that reached the client whole
SERVED = [("upstream", None, False), ("upstream", b"abc", True), ("downstream", b"200", False),
          ("downstream", b"ok", True)]  # fmt: skip
#: the 503 a FAIL_CLOSE failure answers before the response started (headers only: the plugins see no response
#: body; those that saw the request headers see its response headers, as Envoy's local reply through the filter
#: chain; the request body never goes upstream)
REFUSED_AT_HEADERS = [("AbortUpstream",), ("downstream", b"503", True)]
REFUSED_AT_BODY = [("upstream", None, False), *REFUSED_AT_HEADERS]


def _upto(name: str) -> list[str]:
    return ALL[: ALL.index(name) + 1]


# (callback b traps in, b's strategy, outputs, b's trace, a's trace, c's trace, failures counted by the chain)
CASES = [
    ("request_headers", OPEN, SERVED, _upto("request_headers"), ALL, ALL, 1),
    ("request_body", OPEN, SERVED, _upto("request_body"), ALL, ALL, 1),
    ("response_headers", OPEN, SERVED, _upto("response_headers"), ALL, ALL, 1),
    ("response_body", OPEN, SERVED, _upto("response_body"), ALL, ALL, 1),
    ("log", OPEN, SERVED, _upto("log"), ALL, ALL, 0),
    ("done", OPEN, SERVED, _upto("done"), ALL, ALL, 0),
    ("delete", OPEN, SERVED, ALL, ALL, ALL, 0),
    ("request_headers", CLOSE, REFUSED_AT_HEADERS, _upto("request_headers"),
     ["context_create", "request_headers", "response_headers", "log", "done", "delete"],
     ["context_create", "log", "done", "delete"], 1),
    ("request_body", CLOSE, REFUSED_AT_BODY, _upto("request_body"),
     ["context_create", "request_headers", "request_body", "response_headers", "log", "done", "delete"],
     ["context_create", "request_headers", "response_headers", "log", "done", "delete"], 1),
    ("log", CLOSE, SERVED, _upto("log"), ALL, ALL, 0),
]  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("trap_in", "strategy", "outputs", "b_trace", "a_trace", "c_trace", "failures"), CASES)
def test_a_trap_in_the_middle_of_a_chain(  # noqa: PLR0917 -- one row of the table
    backend: str,
    trap_in: str,
    strategy: C.FailStrategy,
    outputs: list[tuple[object, ...]],
    b_trace: list[str],
    a_trace: list[str],
    c_trace: list[str],
    failures: int,
) -> None:
    host = new_host(backend)
    a = host.load(H.PluginConfig(name="a"), tracer())
    b = host.load(H.PluginConfig(name="b", fail_strategy=strategy), tracer(trap_in=f"proxy_on_{trap_in}"))
    c = host.load(H.PluginConfig(name="c"), tracer())
    host.logs.clear()  # the roots' context_create
    chain = C.Chain([a, b, c])
    s = chain.new_stream()
    out = s.recv_request_headers(C.http1_request_headers(b"POST", b"/", [(b"host", b"h")]), False)
    out += s.recv_request_data(b"abc", True)
    if not any(isinstance(o, C.AbortUpstream) for o in out):
        out += s.recv_response_headers(C.http1_response_headers(200, []), False)
        out += s.recv_response_data(b"ok", True)
    out += s.complete()
    assert summary(out) == outputs
    assert (trace(host, "a"), trace(host, "b"), trace(host, "c")) == (a_trace, b_trace, c_trace)
    assert chain.failures == [0, failures, 0]
    assert b.failed is not None and b.failed.reason == "trap"
    assert a.failed is None and c.failed is None
    # the next stream: FAIL_OPEN bypasses the failed plugin, FAIL_CLOSE answers 503 at once
    host.logs.clear()
    s = chain.new_stream()
    out = s.recv_request_headers(C.http1_request_headers(b"GET", b"/", [(b"host", b"h")]), True)
    if strategy is OPEN:
        out += s.recv_response_headers(C.http1_response_headers(200, []), True)
    out += s.complete()
    down = [o for o in out if isinstance(o, C.SendHeaders) and o.target is C.Target.DOWNSTREAM]
    assert dict(down[0].headers)[b":status"] == (b"200" if strategy is OPEN else b"503")
    assert trace(host, "b") == []
    assert trace(host, "a")[-3:] == trace(host, "c")[-3:] == ["log", "done", "delete"]

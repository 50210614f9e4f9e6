"""meshplug.agent.chain with scripted in-process filters: Istio order by phase and priority, request events
in chain order and response events in reverse, pause/resume across several filters, body buffering and
redelivery of the accumulated buffer, local replies from every phase, fail strategies."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from meshplug import limits
from meshplug.agent import chain as C
from meshplug.agent import filters

A = C.Action
REQ, RESP = C.Direction.REQUEST, C.Direction.RESPONSE
_DIR = {REQ: "req", RESP: "resp"}

Reaction = A | Callable[["ScriptStream"], A]


@dataclass
class ScriptFilter:
    """A filter whose callbacks log what they saw and answer from `script` (event -> Action or callable);
    events: req.headers, req.body, req.trailers, resp.headers, resp.body, resp.trailers."""

    name: str
    log: list[tuple[str, ...]]
    script: dict[str, Reaction] = field(default_factory=dict)
    phase: C.Phase = C.Phase.UNSPECIFIED
    priority: int | None = None
    fail_strategy: C.FailStrategy = C.FailStrategy.FAIL_CLOSE
    streams: list[ScriptStream] = field(default_factory=list)

    def new_stream(self, control: C.StreamControl) -> ScriptStream:
        s = ScriptStream(self, control)
        self.streams.append(s)
        return s


class ScriptStream:
    def __init__(self, f: ScriptFilter, control: C.StreamControl) -> None:
        self.f = f
        self.control = control
        self.counts: dict[str, int] = {}

    def _react(self, event: str, *detail: str) -> A:
        self.f.log.append((self.f.name, event, *detail))
        self.counts[event] = self.counts.get(event, 0) + 1
        reaction = self.f.script.get(event, A.CONTINUE)
        return reaction if isinstance(reaction, A) else reaction(self)

    def on_headers(self, direction: C.Direction, end_stream: bool) -> A:
        return self._react(f"{_DIR[direction]}.headers", f"eos={int(end_stream)}")

    def on_body(self, direction: C.Direction, size: int, end_stream: bool) -> A:
        body = bytes(self.control.body(direction))
        assert len(body) == size
        return self._react(f"{_DIR[direction]}.body", body.decode(), f"eos={int(end_stream)}")

    def on_trailers(self, direction: C.Direction) -> A:
        return self._react(f"{_DIR[direction]}.trailers")

    def on_complete(self) -> None:
        self.f.log.append((self.f.name, "complete"))


def summary(outputs: list[C.Output]) -> list[tuple[object, ...]]:
    """Outputs as short tuples: ('up'|'down', 'headers'|'data'|'trailers', ...), ('abort', r), ('reset', r)."""
    out: list[tuple[object, ...]] = []
    for o in outputs:
        if isinstance(o, C.SendHeaders):
            side = "up" if o.target is C.Target.UPSTREAM else "down"
            status = dict(o.headers).get(b":status")
            out.append((side, "headers", status.decode() if status else dict(o.headers).get(b":path"), o.end_stream))
        elif isinstance(o, C.SendData):
            out.append(("up" if o.target is C.Target.UPSTREAM else "down", "data", o.data, o.end_stream))
        elif isinstance(o, C.SendTrailers):
            out.append(("up" if o.target is C.Target.UPSTREAM else "down", "trailers"))
        elif isinstance(o, C.AbortUpstream):
            out.append(("abort", o.reason))
        else:
            out.append(("reset", o.reason))
    return out


def request(method: bytes = b"GET", path: bytes = b"/p") -> C.Headers:
    return C.http1_request_headers(method, path, [(b"host", b"svc")])


def response(status: int = 200) -> C.Headers:
    return C.http1_response_headers(status, [(b"content-type", b"text/plain")])


def names(log: list[tuple[str, ...]], event: str) -> list[str]:
    return [e[0] for e in log if e[1] == event]


# ---- order ------------------------------------------------------------------------------------------
U, AUTHN, AUTHZ, STATS = C.Phase.UNSPECIFIED, C.Phase.AUTHN, C.Phase.AUTHZ, C.Phase.STATS
ORDER_CASES = [
    ("phases", [("a", U, None), ("b", AUTHN, None), ("c", STATS, None), ("d", AUTHZ, None)], "bdca"),
    ("priority high first, unset last", [("l", U, 1), ("h", U, 10), ("u", U, None), ("n", U, -5)], "hlnu"),
    ("phase beats priority", [("p", STATS, 100), ("q", AUTHN, -100)], "qp"),
    ("tie: creation order, not name", [("z", U, 5), ("a", U, 5), ("m", U, 5)], "zam"),
    ("tie among unset: creation order", [("y", AUTHZ, None), ("x", AUTHZ, None)], "yx"),
    ("zero is explicit", [("u", U, None), ("z", U, 0), ("n", U, -1)], "znu"),
]


@pytest.mark.parametrize(("plugins", "expected"), [(p, e) for _, p, e in ORDER_CASES], ids=[c[0] for c in ORDER_CASES])
def test_order_is_istios(plugins: list[tuple[str, C.Phase, int | None]], expected: str) -> None:
    log: list[tuple[str, ...]] = []
    filters = [ScriptFilter(n, log, phase=ph, priority=pr) for n, ph, pr in plugins]
    ch = C.Chain(filters)
    assert "".join(f.name for f in ch.filters) == expected
    s = ch.new_stream()
    s.recv_request_headers(request(), True)
    s.recv_response_headers(response(), True)
    s.complete()
    assert "".join(names(log, "req.headers")) == expected
    assert "".join(names(log, "resp.headers")) == expected[::-1]
    assert "".join(names(log, "complete")) == expected


# ---- the plain path ---------------------------------------------------------------------------------
def test_everything_continues_frames_pass_unchanged_and_in_order() -> None:
    log: list[tuple[str, ...]] = []
    ch = C.Chain([ScriptFilter("a", log), ScriptFilter("b", log)])
    s = ch.new_stream()
    out = s.recv_request_headers(request(b"POST"), False)
    out += s.recv_request_data(b"ab", False)
    out += s.recv_request_data(b"cd", True)
    out += s.recv_response_headers(response(), False)
    out += s.recv_response_data(b"xy", False)
    out += s.recv_response_trailers([(b"X-T", b"1")])
    out += s.complete()
    assert summary(out) == [
        ("up", "headers", b"/p", False),
        ("up", "data", b"ab", False),
        ("up", "data", b"cd", True),
        ("down", "headers", "200", False),
        ("down", "data", b"xy", False),
        ("down", "trailers"),
    ]
    assert log == [
        ("a", "req.headers", "eos=0"),
        ("b", "req.headers", "eos=0"),
        ("a", "req.body", "ab", "eos=0"),
        ("b", "req.body", "ab", "eos=0"),
        ("a", "req.body", "cd", "eos=1"),
        ("b", "req.body", "cd", "eos=1"),
        ("b", "resp.headers", "eos=0"),
        ("a", "resp.headers", "eos=0"),
        ("b", "resp.body", "xy", "eos=0"),
        ("a", "resp.body", "xy", "eos=0"),
        ("b", "resp.trailers"),
        ("a", "resp.trailers"),
        ("a", "complete"),
        ("b", "complete"),
    ]
    assert s.request_trailers == [] and s.response_trailers == [(b"x-t", b"1")]


def test_a_filter_that_returns_no_stream_is_bypassed() -> None:
    log: list[tuple[str, ...]] = []

    class Absent(ScriptFilter):
        def new_stream(self, control: C.StreamControl) -> None:  # type: ignore[override]
            return None

    ch = C.Chain([ScriptFilter("a", log), Absent("gone", log), ScriptFilter("b", log)])
    s = ch.new_stream()
    out = s.recv_request_headers(request(), True)
    assert summary(out) == [("up", "headers", b"/p", True)]
    assert names(log, "req.headers") == ["a", "b"]


# ---- pause and resume across several filters ----------------------------------------------------------
def test_a_stopped_header_holds_the_direction_and_later_data_is_coalesced_on_resume() -> None:
    log: list[tuple[str, ...]] = []
    a = ScriptFilter("a", log)
    b = ScriptFilter("b", log, {"req.headers": A.STOP})
    c = ScriptFilter("c", log)
    s = C.Chain([a, b, c]).new_stream()
    out = s.recv_request_headers(request(b"POST"), False)
    out += s.recv_request_data(b"ab", False)
    out += s.recv_request_data(b"cd", True)
    assert out == []
    # a saw every chunk as it came; b holds the direction: neither b nor c has seen the data
    assert [e for e in log if e[1] == "req.body"] == [
        ("a", "req.body", "ab", "eos=0"),
        ("a", "req.body", "cd", "eos=1"),
    ]
    b.streams[0].control.resume(REQ)
    out = s.take_outputs()
    assert summary(out) == [("up", "headers", b"/p", False), ("up", "data", b"abcd", True)]
    assert [e for e in log if e[0] in "bc" and e[1] != "req.headers"] == [
        ("b", "req.body", "abcd", "eos=1"),
        ("c", "req.body", "abcd", "eos=1"),
    ]


def test_resume_outside_a_callback_wakes_the_shell() -> None:
    log: list[tuple[str, ...]] = []
    b = ScriptFilter("b", log, {"req.headers": A.STOP})
    s = C.Chain([ScriptFilter("a", log), b]).new_stream()
    woken: list[C.Stream] = []
    s.on_progress = woken.append
    assert s.recv_request_headers(request(), True) == []
    b.streams[0].control.resume(REQ)
    assert woken == [s]
    assert summary(s.take_outputs()) == [("up", "headers", b"/p", True)]


def test_two_filters_pause_in_turn() -> None:
    log: list[tuple[str, ...]] = []
    a = ScriptFilter("a", log, {"req.headers": A.STOP})
    b = ScriptFilter("b", log, {"req.headers": A.STOP})
    c = ScriptFilter("c", log)
    s = C.Chain([a, b, c]).new_stream()
    assert s.recv_request_headers(request(), True) == []
    assert names(log, "req.headers") == ["a"]
    assert b.streams == []  # b's context is created when the request reaches it
    a.streams[0].control.resume(REQ)
    assert s.take_outputs() == [] and names(log, "req.headers") == ["a", "b"]
    a.streams[0].control.resume(REQ)  # resuming again is a no-op
    assert s.take_outputs() == []
    b.streams[0].control.resume(REQ)
    assert summary(s.take_outputs()) == [("up", "headers", b"/p", True)]
    assert names(log, "req.headers") == ["a", "b", "c"]


def test_resume_from_inside_the_callback_continues_after_it_returns() -> None:
    log: list[tuple[str, ...]] = []

    def stop_and_resume(st: ScriptStream) -> A:
        st.control.resume(REQ)  # as a host defers proxy_continue_stream until the VM call returns
        return A.STOP

    s = C.Chain([ScriptFilter("a", log, {"req.headers": stop_and_resume}), ScriptFilter("b", log)]).new_stream()
    assert summary(s.recv_request_headers(request(), True)) == [("up", "headers", b"/p", True)]
    assert names(log, "req.headers") == ["a", "b"]


def test_response_pause_holds_the_response_only() -> None:
    log: list[tuple[str, ...]] = []
    a = ScriptFilter("a", log, {"resp.headers": A.STOP})
    b = ScriptFilter("b", log)
    s = C.Chain([a, b]).new_stream()
    assert summary(s.recv_request_headers(request(), True)) == [("up", "headers", b"/p", True)]
    out = s.recv_response_headers(response(), False) + s.recv_response_data(b"hi", True)
    assert out == [] and names(log, "resp.headers") == ["b", "a"]
    a.streams[0].control.resume(RESP)
    assert summary(s.take_outputs()) == [("down", "headers", "200", False), ("down", "data", b"hi", True)]


# ---- body buffering ---------------------------------------------------------------------------------
def test_buffer_redelivers_the_accumulated_body_and_forwards_the_modified_buffer() -> None:
    log: list[tuple[str, ...]] = []

    def buffer_until_end(st: ScriptStream) -> A:
        body = st.control.body(REQ)
        if not st.f.log[-1][-1].endswith("1"):
            return A.BUFFER
        body[:] = body.upper()
        return A.CONTINUE

    a = ScriptFilter("a", log, {"req.body": buffer_until_end})
    b = ScriptFilter("b", log)
    s = C.Chain([a, b]).new_stream()
    out = s.recv_request_headers(request(b"POST"), False)
    out += s.recv_request_data(b"ab", False)
    out += s.recv_request_data(b"cd", False)
    out += s.recv_request_data(b"ef", True)
    assert summary(out) == [("up", "headers", b"/p", False), ("up", "data", b"ABCDEF", True)]
    assert [e[1:] for e in log if e[1] == "req.body"] == [
        ("req.body", "ab", "eos=0"),
        ("req.body", "abcd", "eos=0"),
        ("req.body", "abcdef", "eos=1"),
        ("req.body", "ABCDEF", "eos=1"),  # b: the whole buffer once
    ]


def test_a_buffered_body_goes_before_the_trailers() -> None:
    log: list[tuple[str, ...]] = []
    a = ScriptFilter("a", log, {"req.body": A.BUFFER})
    s = C.Chain([a, ScriptFilter("b", log)]).new_stream()
    out = s.recv_request_headers(request(b"POST"), False)
    out += s.recv_request_data(b"ab", False)
    out += s.recv_request_data(b"cd", False)
    out += s.recv_request_trailers([(b"grpc-status", b"0")])
    assert summary(out) == [("up", "headers", b"/p", False), ("up", "data", b"abcd", False), ("up", "trailers")]
    assert [e for e in log if e[0] == "b"] == [
        ("b", "req.headers", "eos=0"),
        ("b", "req.body", "abcd", "eos=0"),
        ("b", "req.trailers"),
    ]


def test_a_buffered_body_resumed_from_outside_is_forwarded_whole() -> None:
    log: list[tuple[str, ...]] = []
    a = ScriptFilter("a", log, {"resp.body": A.BUFFER})
    s = C.Chain([a]).new_stream()
    s.recv_request_headers(request(), True)
    out = s.recv_response_headers(response(), False)
    out += s.recv_response_data(b"12", False)
    out += s.recv_response_data(b"34", True)
    assert summary(out) == [("down", "headers", "200", False)]
    a.streams[0].control.resume(RESP)
    assert summary(s.take_outputs()) == [("down", "data", b"1234", True)]


def test_a_body_over_the_buffer_limit_is_413_on_requests() -> None:
    log: list[tuple[str, ...]] = []
    s = C.Chain([ScriptFilter("a", log, {"req.body": A.BUFFER})]).new_stream()
    out = s.recv_request_headers(request(b"POST"), False)
    out += s.recv_request_data(b"x" * limits.MAX_BUFFERED_BODY_BYTES, False)
    out += s.recv_request_data(b"y", False)
    assert summary(out)[-3:] == [
        ("abort", "request_payload_too_large"),
        ("down", "headers", "413", False),
        ("down", "data", b"Payload Too Large", True),
    ]


def _grow_at_end(grow: int) -> Callable[[ScriptStream], A]:
    """Hold the request body until its end, then add `grow` bytes to it (a rewrite) and continue."""

    def react(st: ScriptStream) -> A:
        if st.counts.get("req.body", 0) < 2:
            return A.BUFFER
        st.control.body(C.Direction.REQUEST).extend(b"+" * grow)
        return A.CONTINUE

    return react


@pytest.mark.parametrize(
    ("size", "grow", "status"),
    [
        (limits.MAX_BUFFERED_BODY_BYTES - 1, 1, b"200"),  # held at exactly the limit: passes (Envoy 1.40)
        (limits.MAX_BUFFERED_BODY_BYTES, 0, b"200"),
        (limits.MAX_BUFFERED_BODY_BYTES, 1, b"413"),  # grown past it by the filter holding it
    ],
)
def test_a_held_request_body_its_filter_grows_past_the_limit_is_413(size: int, grow: int, status: bytes) -> None:
    log: list[tuple[str, ...]] = []
    s = C.Chain([ScriptFilter("a", log, {"req.body": _grow_at_end(grow)})]).new_stream()
    out = s.recv_request_headers(request(b"POST"), False)
    out += s.recv_request_data(b"x" * (size - 1), False)
    out += s.recv_request_data(b"x", True)
    if status == b"413":
        assert summary(out)[-3:] == [
            ("abort", "request_payload_too_large"),
            ("down", "headers", "413", False),
            ("down", "data", b"Payload Too Large", True),
        ]
    else:
        assert summary(out)[-1] == ("up", "data", b"x" * size + b"+" * grow, True)


# ---- a whole-body rewrite (proxy_set_buffer_bytes over all of it: StreamControl.replace_body) -------------
NEW = b"NEW-BODY"


def _replace_at_end(st: ScriptStream) -> A:
    """Buffer until the body's end, then rewrite all of it to NEW and continue."""
    if not st.f.log[-1][-1].endswith("1"):
        return A.BUFFER
    st.control.replace_body(REQ, NEW)
    return A.CONTINUE


def _replace_first(st: ScriptStream) -> A:
    """Rewrite the first chunk to NEW and buffer on; continue at the body's end."""
    if st.counts["req.body"] == 1:
        st.control.replace_body(REQ, NEW)
    return A.CONTINUE if st.f.log[-1][-1].endswith("1") else A.BUFFER


def _watermark_then_replace(st: ScriptStream) -> A:
    """Keep the first chunk out of view (WATERMARK), rewrite what the second shows, continue."""
    if st.counts["req.body"] == 1:
        return A.WATERMARK
    st.control.replace_body(REQ, NEW)
    return A.CONTINUE


@dataclass(frozen=True)
class ReplaceCase:
    name: str
    reaction: Reaction  # a's req.body reaction
    chunks: list[bytes]  # request body chunks (the last ends the stream unless `after`)
    after: str | None  # what happens after them
    b_seen: list[str]  # the bodies the next filter sees
    upstream: list[bytes]  # the data sent upstream
    as_given: bool  # the data sent is NEW itself (no copy)


REPLACE_CASES = [
    ReplaceCase("at the end, continue", _replace_at_end, [b"ab", b"cd"], None, ["NEW-BODY"], [NEW], True),
    ReplaceCase("first chunk, buffered on", _replace_first, [b"ab", b"cd"], None, ["NEW-BODYcd"], [b"NEW-BODYcd"],
                False),
    ReplaceCase("outside a callback, then resume", A.BUFFER, [b"ab", b"cd"], "replace+resume", ["NEW-BODY"], [NEW],
                True),
    ReplaceCase("outside a callback, then more data", A.BUFFER, [b"ab"], "replace+data", [], [], False),
    ReplaceCase("outside a callback, then trailers", A.BUFFER, [b"ab"], "replace+trailers", ["NEW-BODY"], [NEW],
                False),
    ReplaceCase("watermarked data first", _watermark_then_replace, [b"ab", b"cd"], None, ["abNEW-BODY"],
                [b"abNEW-BODY"], False),
]  # fmt: skip


@pytest.mark.parametrize("case", REPLACE_CASES, ids=[c.name for c in REPLACE_CASES])
def test_a_whole_body_rewrite_passes_on_as_given(case: ReplaceCase) -> None:
    log: list[tuple[str, ...]] = []
    after = case.after
    a = ScriptFilter("a", log, {"req.body": case.reaction})
    s = C.Chain([a, ScriptFilter("b", log)]).new_stream()
    out = s.recv_request_headers(request(b"POST"), False)
    for i, chunk in enumerate(case.chunks):
        out += s.recv_request_data(chunk, i == len(case.chunks) - 1 and after is None)
    control = a.streams[0].control
    if after is not None and after.startswith("replace"):
        control.replace_body(REQ, NEW)
    if after == "replace+data":  # a chunk after a rewrite made outside a callback is added to it
        out += s.recv_request_data(b"cd", True)
        assert [e[2] for e in log if e[:2] == ("a", "req.body")][-1] == "NEW-BODYcd"
        return
    if after == "replace+trailers":
        a.script["req.trailers"] = A.CONTINUE
        out += s.recv_request_trailers([(b"t", b"1")])
    if after == "replace+resume":
        control.resume(REQ)
        out += s.take_outputs()
    data = [o for o in out if isinstance(o, C.SendData) and o.data]
    assert [o.data for o in data] == case.upstream
    if case.as_given:
        assert data[0].data is NEW  # passed on as given: no copy out of a buffer
    assert [e[2] for e in log if e[:2] == ("b", "req.body")] == case.b_seen


def test_a_whole_body_rewrite_past_the_limit_is_413() -> None:
    def react(st: ScriptStream) -> A:
        if st.counts["req.body"] < 2:
            return A.BUFFER
        st.control.replace_body(REQ, b"z" * (limits.MAX_BUFFERED_BODY_BYTES + 1))
        return A.CONTINUE

    s = C.Chain([ScriptFilter("a", [], {"req.body": react})]).new_stream()
    out = s.recv_request_headers(request(b"POST"), False)
    out += s.recv_request_data(b"x", False) + s.recv_request_data(b"y", True)
    assert summary(out)[-3:-1] == [("abort", "request_payload_too_large"), ("down", "headers", "413", False)]


# ---- local replies ----------------------------------------------------------------------------------
def reply_from(event: str, status: int = 401) -> dict[str, Reaction]:
    def send(st: ScriptStream) -> A:
        st.control.send_local_reply(C.LocalReply(status, ((b"X-Why", b"no"),), b"denied", "denied_by_test"))
        return A.STOP

    return {event: send}


@pytest.mark.parametrize("event", ["req.headers", "req.body", "req.trailers"])
def test_local_reply_from_the_request_path_goes_back_through_the_filters_that_saw_the_request(event: str) -> None:
    log: list[tuple[str, ...]] = []
    a, b, c = ScriptFilter("a", log), ScriptFilter("b", log, reply_from(event)), ScriptFilter("c", log)
    s = C.Chain([a, b, c]).new_stream()
    out = s.recv_request_headers(request(b"POST"), False)
    out += s.recv_request_data(b"body", False)
    out += s.recv_request_trailers([(b"t", b"1")])
    out += s.recv_response_headers(response(), True)  # the upstream answer that lost the race is ignored
    out += s.complete()
    sent_up = [o for o in summary(out) if o[0] == "up"]
    assert ("abort", "denied_by_test") in summary(out)
    assert summary(out)[-2:] == [("down", "headers", "401", False), ("down", "data", b"denied", True)]
    down = next(o for o in out if isinstance(o, C.SendHeaders) and o.target is C.Target.DOWNSTREAM)
    assert (b"x-why", b"no") in down.headers and (b"content-length", b"6") in down.headers
    # nothing after the reply reaches the request path of any filter
    replied_at = [e[:2] for e in log].index(("b", event))
    assert [e for e in log[replied_at + 1 :] if e[1].startswith("req.")] == []
    # the reply's response callbacks: every filter that saw the request headers, reverse order
    saw = [n for n in "abc" if (n, "req.headers", "eos=0") in log]
    assert names(log, "resp.headers") == saw[::-1]
    assert names(log, "complete") == ["a", "b", "c"]  # every filter is logged (Envoy's access-log hook)
    if event == "req.headers":
        assert sent_up == []


def test_local_reply_from_outside_a_callback_while_paused() -> None:
    log: list[tuple[str, ...]] = []
    a = ScriptFilter("a", log, {"req.headers": A.STOP})
    s = C.Chain([a, ScriptFilter("b", log)]).new_stream()
    woken: list[C.Stream] = []
    s.on_progress = woken.append
    assert s.recv_request_headers(request(), True) == []
    a.streams[0].control.send_local_reply(C.LocalReply(403, body=b"", details="async"))
    assert woken == [s]
    assert summary(s.take_outputs()) == [("abort", "async"), ("down", "headers", "403", True)]
    assert names(log, "resp.headers") == ["a"]


def test_second_local_reply_is_ignored() -> None:
    log: list[tuple[str, ...]] = []

    def reply_again(st: ScriptStream) -> A:
        st.control.send_local_reply(C.LocalReply(500, details="second"))
        return A.CONTINUE

    a = ScriptFilter("a", log, {"resp.headers": reply_again})
    b = ScriptFilter("b", log, reply_from("req.headers", 418))
    s = C.Chain([a, b]).new_stream()
    out = summary(s.recv_request_headers(request(), True))
    assert out == [("abort", "denied_by_test"), ("down", "headers", "418", False), ("down", "data", b"denied", True)]


# ---- fail strategies --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        (C.FailStrategy.FAIL_OPEN, [("up", "headers", b"/p", True), ("down", "headers", "200", True)]),
        (C.FailStrategy.FAIL_CLOSE, [("abort", "wasm_fail_stream"), ("down", "headers", "503", True)]),
        (C.FailStrategy.FAIL_RELOAD, [("abort", "wasm_fail_stream"), ("down", "headers", "503", True)]),
    ],
)
def test_a_failing_filter_applies_its_strategy(strategy: C.FailStrategy, expected: list[tuple[object, ...]]) -> None:
    log: list[tuple[str, ...]] = []
    a = ScriptFilter("a", log)
    bad = ScriptFilter("bad", log, {"req.headers": A.FAIL, "resp.headers": A.FAIL}, fail_strategy=strategy)
    c = ScriptFilter("c", log)
    s = C.Chain([a, bad, c]).new_stream()
    out = s.recv_request_headers(request(), True)
    if strategy is C.FailStrategy.FAIL_OPEN:
        out += s.recv_response_headers(response(), True)
    out += s.complete()
    assert summary(out) == expected
    # a bypassed (failed) filter is never called again for this stream
    assert names(log, "req.headers") == (["a", "bad", "c"] if strategy is C.FailStrategy.FAIL_OPEN else ["a", "bad"])
    assert "bad" not in names(log, "resp.headers")
    assert names(log, "complete") == ["a", "bad", "c"]


def test_a_failure_after_the_response_started_resets_the_stream() -> None:
    log: list[tuple[str, ...]] = []
    bad = ScriptFilter("bad", log, {"resp.body": A.FAIL})
    s = C.Chain([bad]).new_stream()
    s.recv_request_headers(request(), True)
    out = s.recv_response_headers(response(), False) + s.recv_response_data(b"x", True)
    assert summary(out) == [("down", "headers", "200", False), ("reset", "wasm_fail_stream")]
    assert s.recv_response_trailers([]) == []


def test_fail_from_outside_a_callback_while_paused() -> None:
    log: list[tuple[str, ...]] = []
    a = ScriptFilter("a", log, {"req.headers": A.STOP}, fail_strategy=C.FailStrategy.FAIL_OPEN)
    s = C.Chain([a, ScriptFilter("b", log)]).new_stream()
    assert s.recv_request_headers(request(), True) == []
    a.streams[0].control.fail()  # e.g. the VM trapped in an http-call response
    assert summary(s.take_outputs()) == [("up", "headers", b"/p", True)]


def test_close_resets_the_stream() -> None:
    log: list[tuple[str, ...]] = []

    def close(st: ScriptStream) -> A:
        st.control.close()
        return A.STOP

    s = C.Chain([ScriptFilter("a", log, {"req.headers": close})]).new_stream()
    assert summary(s.recv_request_headers(request(), False)) == [("reset", "wasm_close_stream")]
    assert s.recv_request_data(b"late", True) == []


# ---- body results 2 and 3 (Envoy's StopIterationAndWatermark / StopIterationNoBuffer) ---------------------
def until_end(stopped: A) -> Callable[[ScriptStream], A]:
    def react(st: ScriptStream) -> A:
        return A.CONTINUE if st.f.log[-1][-1] == "eos=1" else stopped

    return react


@pytest.mark.parametrize(
    ("stopped", "seen", "upstream"),
    [
        (A.BUFFER, ["ab", "abcd", "abcdef"], b"abcdef"),  # the accumulated buffer each time
        (A.WATERMARK, ["ab", "cd", "ef"], b"abcdef"),  # only new data; all of it forwarded at the end
        (A.NO_BUFFER, ["ab", "cd", "ef"], b"ef"),  # only new data; what it stopped on is dropped
    ],
)
def test_body_stop_flavours(stopped: A, seen: list[str], upstream: bytes) -> None:
    log: list[tuple[str, ...]] = []
    s = C.Chain([ScriptFilter("a", log, {"req.body": until_end(stopped)}), ScriptFilter("b", log)]).new_stream()
    out = s.recv_request_headers(request(b"POST"), False)
    for chunk, last in ((b"ab", False), (b"cd", False), (b"ef", True)):
        out += s.recv_request_data(chunk, last)
    assert [e[2] for e in log if e[:2] == ("a", "req.body")] == seen
    assert [e[2] for e in log if e[:2] == ("b", "req.body")] == [upstream.decode()]
    assert summary(out) == [("up", "headers", b"/p", False), ("up", "data", upstream, True)]


def test_watermarked_data_goes_before_the_trailers_and_on_resume() -> None:
    log: list[tuple[str, ...]] = []
    a = ScriptFilter("a", log, {"req.body": A.WATERMARK, "resp.body": A.WATERMARK})
    s = C.Chain([a]).new_stream()
    out = s.recv_request_headers(request(b"POST"), False)
    out += s.recv_request_data(b"ab", False)
    out += s.recv_request_data(b"cd", False)
    out += s.recv_request_trailers([(b"t", b"1")])
    assert summary(out)[1:] == [("up", "data", b"abcd", False), ("up", "trailers")]
    out = s.recv_response_headers(response(), False) + s.recv_response_data(b"xy", True)
    assert summary(out) == [("down", "headers", "200", False)]
    a.streams[0].control.resume(RESP)
    assert summary(s.take_outputs()) == [("down", "data", b"xy", True)]


def test_no_buffer_then_resume_ends_the_stream_with_an_empty_chunk() -> None:
    log: list[tuple[str, ...]] = []
    a = ScriptFilter("a", log, {"req.body": A.NO_BUFFER})
    s = C.Chain([a]).new_stream()
    out = s.recv_request_headers(request(b"POST"), False) + s.recv_request_data(b"gone", True)
    assert summary(out) == [("up", "headers", b"/p", False)]
    a.streams[0].control.resume(REQ)
    assert summary(s.take_outputs()) == [("up", "data", b"", True)]


# ---- a local reply after the response entered the chain goes straight downstream ------------------------
def test_local_reply_from_the_response_path_bypasses_the_filters() -> None:
    log: list[tuple[str, ...]] = []
    a = ScriptFilter("a", log)
    b = ScriptFilter("b", log, reply_from("resp.headers", 502))
    s = C.Chain([a, b]).new_stream()
    s.recv_request_headers(request(), True)
    out = s.recv_response_headers(response(), False)
    out += s.recv_response_data(b"upstream body", True)  # dropped: the reply replaced the response
    assert summary(out) == [
        ("abort", "denied_by_test"),
        ("down", "headers", "502", False),
        ("down", "data", b"denied", True),
    ]
    # Envoy's sendDirectLocalReply: no filter sees the reply (b's own call was the upstream response's)
    assert names(log, "resp.headers") == ["b"]
    assert names(log, "resp.body") == []


def test_local_reply_after_the_response_went_downstream_resets() -> None:
    log: list[tuple[str, ...]] = []
    b = ScriptFilter("b", log, reply_from("resp.body"))
    s = C.Chain([b]).new_stream()
    s.recv_request_headers(request(), True)
    out = s.recv_response_headers(response(), False) + s.recv_response_data(b"x", True)
    assert summary(out) == [("down", "headers", "200", False), ("reset", "denied_by_test")]


def test_byte_counters() -> None:
    log: list[tuple[str, ...]] = []
    a = ScriptFilter("a", log)
    s = C.Chain([a]).new_stream()
    s.recv_request_headers(request(b"POST"), False)
    s.recv_request_data(b"12345", True)
    s.recv_response_headers(response(), False)
    s.recv_response_data(b"abc", False)
    s.recv_response_data(b"de", True)
    assert (s.bytes_received, s.bytes_sent) == (5, 5)
    control = a.streams[0].control
    assert (control.bytes_received, control.bytes_sent) == (5, 5)


# ---- trailers a filter adds in its last body callback (Envoy's addDecodedTrailers/addEncodedTrailers) ---
@pytest.mark.parametrize("direction", [REQ, RESP])
def test_trailers_added_in_the_last_body_callback_follow_the_body(direction: C.Direction) -> None:
    log: list[tuple[str, ...]] = []
    side = _DIR[direction]

    def add_trailer(st: ScriptStream) -> A:
        if st.f.log[-1][-1] == "eos=1":
            st.control.trailers(direction).append((b"x-added", b"1"))
        return A.CONTINUE

    # request order a -> b; response order b -> a: the adder is first in the direction either way
    adder, other = ScriptFilter("adder", log, {f"{side}.body": add_trailer}), ScriptFilter("other", log)
    s = C.Chain([adder, other] if direction is REQ else [other, adder]).new_stream()
    out = s.recv_request_headers(request(b"POST"), False)
    out += s.recv_request_data(b"q", True)
    out += s.recv_response_headers(response(), False)
    out += s.recv_response_data(b"r", True)
    target = "up" if direction is REQ else "down"
    body = b"q" if direction is REQ else b"r"
    assert [o for o in summary(out) if o[0] == target and o[1] != "headers"] == [
        (target, "data", body, False),
        (target, "trailers"),
    ]
    assert (s.request_trailers if direction is REQ else s.response_trailers) == [(b"x-added", b"1")]
    assert ("other", f"{side}.trailers") in log  # the filters after the adder see them


# ---- the direct path (pass_*): the shell sends what passed itself --------------------------------------
def test_pass_methods_hand_back_what_passed_when_every_filter_continues() -> None:
    log: list[tuple[str, ...]] = []
    s = C.Chain([ScriptFilter("a", log), ScriptFilter("b", log)]).new_stream()
    assert s.pass_request_headers(request(b"POST"), False) is True
    assert s.upstream_started and s.request_headers == request(b"POST")
    assert s.pass_request_data(b"ab", True) == b"ab"
    assert s.upstream_started and s.bytes_received == 2
    assert s.pass_response_headers(response(), False) is True
    assert s.response_started and s.code_details == "via_upstream"
    assert s.pass_response_data(b"xy", True) == b"xy"
    assert s.bytes_sent == 2 and s.take_outputs() == []
    assert names(log, "resp.headers") == ["b", "a"]
    assert C.Chain([]).new_stream().pass_request_headers(request(), True) is True


def test_pass_methods_fall_back_to_outputs_when_a_filter_stops() -> None:
    log: list[tuple[str, ...]] = []
    a = ScriptFilter("a", log, {"req.headers": A.STOP})
    s = C.Chain([a, ScriptFilter("b", log)]).new_stream()
    assert s.pass_request_headers(request(), False) is False
    assert s.take_outputs() == []
    assert s.pass_request_data(b"ab", True) is None  # queued behind the stopped headers
    a.streams[0].control.resume(REQ)
    assert summary(s.take_outputs()) == [("up", "headers", b"/p", False), ("up", "data", b"ab", True)]
    # a local reply: the response path gives no direct pass
    r = ScriptFilter("r", log, {"req.headers": lambda st: st.control.send_local_reply(C.LocalReply(403)) or A.STOP})
    s = C.Chain([r]).new_stream()
    assert s.pass_request_headers(request(), True) is False
    assert [o[0] for o in summary(s.take_outputs())] == ["abort", "down"]
    assert s.pass_response_headers(response(), True) is False and s.take_outputs() == []


def test_stream_info_is_built_lazily_from_its_parts() -> None:
    base = C.StreamInfo(remote_address="10.0.0.7", remote_port=5555)
    s = C.Chain([]).new_stream(base, start_time_ns=42)
    s.set_upstream_fields({"upstream_address": "10.0.0.8", "upstream_port": 80})
    info = s.info
    assert (info.remote_address, info.start_time_ns, info.upstream_address, info.upstream_port) == (
        "10.0.0.7",
        42,
        "10.0.0.8",
        80,
    )
    assert base.start_time_ns == 0 and s.info is info
    s.set_upstream("10.0.0.9", 81)
    assert (s.info.upstream_address, s.info.upstream_port, s.info.start_time_ns) == ("10.0.0.9", 81, 42)


# ---- match rules ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rule:
    hosts: tuple[str, ...] = ()
    path_prefixes: tuple[str, ...] = ()
    exact_paths: tuple[str, ...] = ()


API = Rule(hosts=("api.example.com",))
ORG_V1 = Rule(hosts=("*.example.org",), path_prefixes=("/v1/",))
HEALTHZ = Rule(exact_paths=("/healthz",))
MATCH_CASES = [
    # (authority, path, rules, matches)
    ("api.example.com", "/anything", [API], True),
    ("api.example.com:8080", "/", [API], True),  # port ignored
    ("API.Example.COM", "/", [API], True),  # case-insensitive
    ("API.example.com:8080", "/", [API], True),
    ("api.example.com.evil", "/", [API], False),
    ("evil-api.example.com", "/", [API], False),
    ("", "/", [API], False),  # no host
    ("a.example.org", "/v1/x", [ORG_V1], True),
    ("a.b.example.org:443", "/v1/", [ORG_V1], True),  # any depth of subdomain
    ("A.EXAMPLE.ORG", "/v1/x", [ORG_V1], True),
    ("example.org", "/v1/x", [ORG_V1], False),  # *.d needs a subdomain: not d itself
    (".example.org", "/v1/x", [ORG_V1], False),
    ("aexample.org", "/v1/x", [ORG_V1], False),
    ("a.example.org", "/v2/x", [ORG_V1], False),  # host matches, path does not
    ("a.example.org", "/v1", [ORG_V1], False),  # a plain string prefix: "/v1" is not under "/v1/"
    ("a.example.org", "/v1/?q=1", [ORG_V1], True),
    ("x", "/healthz", [HEALTHZ], True),  # no hosts: any host
    ("x", "/healthz?probe=1", [HEALTHZ], True),  # exact ignores the query
    ("x", "/healthz/x", [HEALTHZ], False),
    ("x", "/healthzz", [HEALTHZ], False),
    ("x", "/Healthz", [HEALTHZ], False),  # paths are case-sensitive
    ("x", "/search?q=a", [Rule(path_prefixes=("/search?q=",))], True),  # prefix sees the query
    ("x", "/search?p=a", [Rule(path_prefixes=("/search?q=",))], False),
    ("x", "/healthz?x", [Rule(path_prefixes=("/a",), exact_paths=("/healthz",))], True),  # paths: any of
    ("x", "/a/b", [Rule(path_prefixes=("/a",), exact_paths=("/healthz",))], True),
    ("x", "/b", [Rule(path_prefixes=("/a",), exact_paths=("/healthz",))], False),
    ("a.com", "/p", [Rule(hosts=("a.com", "b.com"), path_prefixes=("/p",))], True),  # hosts AND paths
    ("b.com", "/q", [Rule(hosts=("a.com", "b.com"), path_prefixes=("/p",))], False),
    ("other", "/healthz", [API, ORG_V1, HEALTHZ], True),  # rules: any of
    ("other", "/", [API, ORG_V1, HEALTHZ], False),
    ("anything", "/", [], True),  # no rules: every request
    ("[::1]:8080", "/", [Rule(hosts=("[::1]",))], True),  # IPv6 literal keeps its brackets, loses its port
    ("10.0.0.1:80", "/", [Rule(hosts=("10.0.0.1",))], True),
]


@pytest.mark.parametrize(
    ("authority", "path", "rules", "expected"),
    MATCH_CASES,
    ids=[
        f"{a or '-'}{p}-{'|'.join(map(str, (r.hosts + r.path_prefixes + r.exact_paths for r in rs)))}"
        for a, p, rs, _ in MATCH_CASES
    ],
)
def test_match_rules(authority: str, path: str, rules: list[Rule], expected: bool) -> None:
    m = C.Match(rules)
    assert m.matches(C.request_host(authority.encode()), path.encode()) is expected
    headers = C.http1_request_headers(b"GET", path.encode(), [(b"Host", authority.encode())])
    assert m.matches_request(headers) is expected


def test_match_reads_host_when_there_is_no_authority() -> None:
    assert C.Match([API]).matches_request([(b":path", b"/"), (b"host", b"API.example.com:1")])
    assert not C.Match([API]).matches_request([(b":path", b"/")])


def _match_chain(
    log: list[tuple[str, ...]], rules: dict[str, list[Rule]], **scripts: dict[str, Reaction]
) -> tuple[C.Chain, dict[str, ScriptFilter]]:
    filters = {n: ScriptFilter(n, log, script=scripts.get(n, {})) for n in ("a", "m", "z")}
    return C.Chain(list(filters.values()), match=[rules.get(n, []) for n in filters]), filters


@pytest.mark.parametrize("direct", [False, True], ids=["recv", "pass"])
def test_a_filter_whose_rules_do_not_match_sees_nothing_of_the_request(direct: bool) -> None:
    log: list[tuple[str, ...]] = []
    ch, filters = _match_chain(log, {"m": [API]})
    for host, runs in (("api.example.com:80", True), ("other", False)):
        log.clear()
        s = ch.new_stream()
        headers = C.http1_request_headers(b"POST", b"/x", [(b"host", host.encode())])
        if direct:
            assert s.pass_request_headers(headers, False)
            assert s.pass_request_data(b"hi", True) == b"hi"
            assert s.pass_response_headers(response(), False)
            assert s.pass_response_data(b"ok", True) == b"ok"
        else:
            out = s.recv_request_headers(headers, False) + s.recv_request_data(b"hi", True)
            out += s.recv_response_headers(response(), False) + s.recv_response_data(b"ok", True)
            assert [o[:2] for o in summary(out)] == [
                ("up", "headers"),
                ("up", "data"),
                ("down", "headers"),
                ("down", "data"),
            ]
        s.complete()
        expected = ["a", "m", "z"] if runs else ["a", "z"]
        assert names(log, "req.headers") == expected
        assert names(log, "req.body") == expected
        assert names(log, "resp.headers") == expected[::-1]
        assert names(log, "resp.body") == expected[::-1]
        assert names(log, "complete") == expected  # not even on_complete: no context at all
    assert len(filters["m"].streams) == 1  # one context: the matching request's
    assert len(filters["a"].streams) == len(filters["z"].streams) == 2


def test_a_skipped_filter_is_skipped_by_local_replies_and_trailers_too() -> None:
    log: list[tuple[str, ...]] = []
    reply = C.LocalReply(403, body=b"no")

    def deny(st: ScriptStream) -> A:
        st.control.send_local_reply(reply)
        return A.STOP

    ch, filters = _match_chain(log, {"a": [HEALTHZ]}, z={"req.headers": deny})
    s = ch.new_stream()
    out = s.recv_request_headers(request(path=b"/p"), False)
    assert ("down", "headers", "403", False) in summary(out)
    s.complete()
    assert [e for e in log if e[0] == "a"] == []
    assert filters["a"].streams == []
    assert names(log, "resp.headers") == ["z", "m"]  # the reply's response path skips "a" as well
    # trailers: only the filters that run see them
    for path, expected in ((b"/healthz?x=1", ["a", "m", "z"]), (b"/p", ["m", "z"])):
        log.clear()
        ch, _ = _match_chain(log, {"a": [HEALTHZ]})
        s = ch.new_stream()
        s.recv_request_headers(request(path=path), False)
        s.recv_request_data(b"b", False)
        out = s.recv_request_trailers([(b"t", b"1")])
        assert summary(out)[-1] == ("up", "trailers")
        s.complete()
        assert names(log, "req.trailers") == names(log, "complete") == expected


def test_the_decision_is_made_once_on_the_request_headers() -> None:
    """A filter before the matched one rewriting :path / :authority does not change the decision: it is
    made when the request headers arrive, before any callback."""
    log: list[tuple[str, ...]] = []

    def rewrite(st: ScriptStream) -> A:
        h = st.control.headers(REQ)
        h[:] = [(k, b"/healthz" if k == b":path" else v) for k, v in h]
        return A.CONTINUE

    ch, _ = _match_chain(log, {"m": [HEALTHZ]}, a={"req.headers": rewrite})
    s = ch.new_stream()
    out = s.recv_request_headers(request(path=b"/p"), True)
    assert summary(out)[0] == ("up", "headers", b"/healthz", True)
    s.complete()
    assert names(log, "req.headers") == ["a", "z"]


def test_a_request_that_never_reached_the_chain_skips_filters_with_rules() -> None:
    log: list[tuple[str, ...]] = []
    ch, filters = _match_chain(log, {"m": [HEALTHZ]})
    s = ch.new_stream()
    s.complete()  # e.g. the client went away before its headers were complete
    assert names(log, "complete") == ["a", "z"]
    assert filters["m"].streams == []


def test_chains_without_rules_make_plain_streams() -> None:
    log: list[tuple[str, ...]] = []
    plain = C.Chain([ScriptFilter("a", log)], match=[[]])
    assert plain.matchers == () and type(plain.new_stream()) is C.Stream
    assert type(C.Chain([ScriptFilter("a", log)]).new_stream()) is C.Stream
    ruled = C.Chain([ScriptFilter("a", log, phase=STATS), ScriptFilter("b", log, phase=AUTHN)], match=[[API], []])
    assert [f.name for f in ruled.filters] == ["b", "a"]
    assert [(pos, bool(m)) for pos, m in ruled.matchers] == [(1, True)]  # the rules follow their filter's order
    with pytest.raises(ValueError, match="1 match rule sets for 2 filters"):
        C.Chain([ScriptFilter("a", log), ScriptFilter("b", log)], match=[[]])


# ---- per-plugin health stats (what a canary rollout compares) --------------------------------------------------
def test_the_chain_counts_requests_failures_5xx_replies_and_request_time() -> None:
    log: list[tuple[str, ...]] = []
    ok = ScriptFilter("ok", log)
    bad = ScriptFilter("bad", log, {"req.headers": A.FAIL})
    ch = C.Chain([ok, bad])
    for _ in range(3):
        s = ch.new_stream(start_time_ns=time.time_ns() - 45_000_000_000)  # 45 s ago: (40, 50] s
        s.recv_request_headers(request(), True)
        s.complete()
    unstarted = ch.new_stream()  # no start time: counted as a request, not timed
    unstarted.complete()
    health = {h.name: h for h in filters.plugin_health([ch, ch], {"ok": "d1"})}  # two listeners: summed
    assert (health["ok"].requests, health["ok"].failures, health["ok"].local_5xx) == (8, 0, 0)
    assert (health["bad"].requests, health["bad"].failures, health["bad"].sha256) == (8, 6, "")
    assert health["ok"].sha256 == "d1"
    fifty = limits.PLUGIN_RQ_TIME_BUCKETS_MS.index(50_000)
    assert len(health["ok"].latency) == len(limits.PLUGIN_RQ_TIME_BUCKETS_MS) + 1
    assert sum(health["ok"].latency) == 6 and health["ok"].latency[fifty] == 6

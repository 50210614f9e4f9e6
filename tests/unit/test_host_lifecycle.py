"""The host's HTTP lifecycle with real wasm guests (generated WAT "tracers" that log every callback):
callbacks only for exports, Envoy's end-of-stream order, contexts of plugins a local reply never reached
still get created + logged, the replying plugin's own response callbacks run, body return codes 0-3."""

from __future__ import annotations

import functools
import gc
import hashlib
from pathlib import Path

import pytest
import wasmtime

from meshplug import errors
from meshplug.agent import chain as C
from meshplug.agent import host as H
from tests.guests import minimal

CALLBACKS = (
    "proxy_on_context_create",
    "proxy_on_request_headers",
    "proxy_on_request_body",
    "proxy_on_request_trailers",
    "proxy_on_response_headers",
    "proxy_on_response_body",
    "proxy_on_response_trailers",
    "proxy_on_log",
    "proxy_on_done",
    "proxy_on_delete",
)
_PARAMS = {
    "proxy_on_context_create": 2,
    "proxy_on_request_headers": 3,
    "proxy_on_request_body": 3,
    "proxy_on_request_trailers": 2,
    "proxy_on_response_headers": 3,
    "proxy_on_response_body": 3,
    "proxy_on_response_trailers": 2,
    "proxy_on_log": 1,
    "proxy_on_done": 1,
    "proxy_on_delete": 1,
}
_NO_RESULT = {"proxy_on_context_create", "proxy_on_log", "proxy_on_delete"}
# every test guest: a bump allocator over page 2, ABI 0.2.1, a VM start and configure that succeed
_BASE = f"{minimal.BUMP_HEAP}\n{minimal.STARTS}"


@functools.cache
def tracer(
    omit: tuple[str, ...] = (), returns: tuple[tuple[str, int], ...] = (), reply_in: str = "", trap_in: str = ""
) -> bytes:
    """A proxy-wasm 0.2.1 guest whose every exported stream callback logs its short name ("request_body");
    `returns` overrides results (default 0, on_done 1); `reply_in` sends a local 403 from that callback;
    `trap_in` traps in that callback (after logging it)."""
    result = dict(returns)
    data: list[str] = []
    funcs: list[str] = []
    offset = 2048
    for name in CALLBACKS:
        if name in omit:
            continue
        short = name.removeprefix("proxy_on_")
        data.append(f'(data (i32.const {offset}) "{short}")')
        params = " ".join("(param i32)" for _ in range(_PARAMS[name]))
        body = f"(drop (call $log (i32.const 2) (i32.const {offset}) (i32.const {len(short)})))"
        if name == reply_in:
            # status 403, details "traced", body "nope", no headers, no gRPC status
            body += " (drop (call $reply (i32.const 403) (i32.const 1800) (i32.const 6)"
            body += " (i32.const 1808) (i32.const 4) (i32.const 0) (i32.const 0) (i32.const -1)))"
        if name == trap_in:
            body += " unreachable"
        if name not in _NO_RESULT:
            value = result.get(name, 1 if name == "proxy_on_done" else 0)
            funcs.append(f'(func (export "{name}") {params} (result i32) {body} (i32.const {value}))')
        else:
            funcs.append(f'(func (export "{name}") {params} {body})')
        offset += 32
    wat = f"""(module
      (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
      (import "env" "proxy_send_local_response"
        (func $reply (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
      {_BASE}
      {" ".join(funcs)}
      (data (i32.const 1800) "traced")
      (data (i32.const 1808) "nope")
      {" ".join(data)})"""
    return bytes(wasmtime.wat2wasm(wat))


def trace(host: H.Host, plugin: str) -> list[str]:
    return [r.message for r in host.logs if r.plugin == plugin]


def new_host(backend: str) -> H.Host:
    return H.Host(backend=backend, log_level=H.TRACE)


def summary(out: list[C.Output]) -> list[tuple[object, ...]]:
    rows: list[tuple[object, ...]] = []
    for o in out:
        if isinstance(o, C.SendHeaders):
            rows.append((o.target.value, dict(o.headers).get(b":status"), o.end_stream))
        elif isinstance(o, C.SendData):
            rows.append((o.target.value, o.data, o.end_stream))
        else:
            rows.append((type(o).__name__,))
    return rows


BACKENDS = ("fast", "public")


@pytest.mark.parametrize("backend", BACKENDS)
def test_envoy_order_and_only_exported_callbacks(backend: str) -> None:
    host = new_host(backend)
    full = host.load(H.PluginConfig(name="full"), tracer())
    sparse = host.load(
        H.PluginConfig(name="sparse"),
        tracer(omit=("proxy_on_request_body", "proxy_on_response_body", "proxy_on_done")),
    )
    host.logs.clear()  # the roots' context_create
    s = C.Chain([full, sparse]).new_stream()
    out = s.recv_request_headers(C.http1_request_headers(b"POST", b"/", [(b"host", b"h")]), False)
    out += s.recv_request_data(b"abc", True)
    out += s.recv_response_headers(C.http1_response_headers(200, []), False)
    out += s.recv_response_data(b"ok", False)
    out += s.recv_response_trailers([(b"x", b"1")])
    s.complete()
    assert summary(out)[2:] == [("downstream", b"200", False), ("downstream", b"ok", False), ("SendTrailers",)]
    assert trace(host, "full") == [
        "context_create",
        "request_headers",
        "request_body",
        "response_headers",
        "response_body",
        "response_trailers",
        "log",
        "done",
        "delete",
    ]
    assert trace(host, "sparse") == [
        "context_create",
        "request_headers",
        "response_headers",
        "response_trailers",
        "log",
        "delete",
    ]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_local_reply_runs_the_repliers_response_callbacks_and_logs_every_plugin(backend: str) -> None:
    host = new_host(backend)
    first = host.load(H.PluginConfig(name="first"), tracer())
    replier = host.load(H.PluginConfig(name="replier"), tracer(reply_in="proxy_on_request_headers"))
    never = host.load(H.PluginConfig(name="never"), tracer())
    host.logs.clear()
    s = C.Chain([first, replier, never]).new_stream()
    out = s.recv_request_headers(C.http1_request_headers(b"GET", b"/", [(b"host", b"h")]), True)
    s.complete()
    assert summary(out) == [("AbortUpstream",), ("downstream", b"403", False), ("downstream", b"nope", True)]
    tail = ["response_headers", "response_body", "log", "done", "delete"]
    assert trace(host, "replier") == ["context_create", "request_headers", *tail]
    assert trace(host, "first") == ["context_create", "request_headers", *tail]
    # Envoy's access-log hook creates the context of a filter the request never reached
    assert trace(host, "never") == ["context_create", "log", "done", "delete"]


def _guest(body: str, imports: str = "", data: str = "") -> bytes:
    wat = f"""(module
      (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
      {imports}
      {_BASE}
      (func (export "proxy_on_context_create") (param i32 i32))
      {body}
      {data})"""
    return bytes(wasmtime.wat2wasm(wat))


@functools.cache
def body_guest(stopped: int) -> bytes:
    """proxy_on_request_body logs the size it is shown (one digit) and returns `stopped` until end of stream."""
    return _guest(f"""
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (i32.const 0))
      (func (export "proxy_on_request_body") (param $id i32) (param $size i32) (param $eos i32) (result i32)
        (i32.store8 (i32.const 3000) (i32.add (local.get $size) (i32.const 48)))
        (drop (call $log (i32.const 2) (i32.const 3000) (i32.const 1)))
        (select (i32.const 0) (i32.const {stopped}) (local.get $eos)))""")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("code", "sizes", "upstream"),
    [
        (1, ["2", "4", "6"], b"abcdef"),  # StopIterationAndBuffer: the accumulated body each time
        (2, ["2", "2", "2"], b"abcdef"),  # StopIterationAndWatermark: only new data, all forwarded
        (3, ["2", "2", "2"], b"ef"),  # StopIterationNoBuffer: the stopped chunks are dropped
        (7, ["2", "2", "2"], b"ef"),  # anything else: NoBuffer (Envoy's default branch)
    ],
)
def test_body_return_codes_as_envoy_maps_them(backend: str, code: int, sizes: list[str], upstream: bytes) -> None:
    host = new_host(backend)
    plugin = host.load(H.PluginConfig(name="body"), body_guest(code))
    s = C.Chain([plugin]).new_stream()
    out = s.recv_request_headers(C.http1_request_headers(b"POST", b"/", [(b"host", b"h")]), False)
    for chunk, last in ((b"ab", False), (b"cd", False), (b"ef", True)):
        out += s.recv_request_data(chunk, last)
    s.complete()
    assert trace(host, "body") == sizes
    assert [(o.data, o.end_stream) for o in out if isinstance(o, C.SendData)] == [(upstream, True)]


PROPERTIES = ("request\0size", "request\0total_size", "response\0size", "response\0total_size", "request\0duration")


@functools.cache
def property_guest(paths: tuple[str, ...] = PROPERTIES, *, in_request: bool = False) -> bytes:
    """In response headers (and request headers if `in_request`) and in on_log: for each path log the status
    digit, then the value if OK."""
    data, reads, offset = [], [], 2048
    for path in paths:
        wat_path = path.replace("\0", "\\00")
        data.append(f'(data (i32.const {offset}) "{wat_path}")')
        reads.append(f"""
          (local.set $st (call $prop (i32.const {offset}) (i32.const {len(path)}) (i32.const 4000) (i32.const 4004)))
          (i32.store8 (i32.const 4100) (i32.add (local.get $st) (i32.const 48)))
          (drop (call $log (i32.const 2) (i32.const 4100) (i32.const 1)))
          (if (i32.eqz (local.get $st))
            (then (drop (call $log (i32.const 2) (i32.load (i32.const 4000)) (i32.load (i32.const 4004))))))""")
        offset += 64
    request = "(call $read_all)" if in_request else ""
    return _guest(
        f"""
      (func $read_all (local $st i32) {"".join(reads)})
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) {request} (i32.const 0))
      (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32) (call $read_all) (i32.const 0))
      (func (export "proxy_on_log") (param i32) (call $read_all))""",
        imports='(import "env" "proxy_get_property" (func $prop (param i32 i32 i32 i32) (result i32)))',
        data=" ".join(data),
    )


def ints(messages: list[str]) -> list[int | str]:
    """status digits stay strings, 8-byte values (small enough to be ASCII here) become ints."""
    return [int.from_bytes(m.encode(), "little") if len(m) == 8 else m for m in messages]


@pytest.mark.parametrize("backend", BACKENDS)
def test_sizes_and_duration_properties(backend: str) -> None:
    host = new_host(backend)
    plugin = host.load(H.PluginConfig(name="props"), property_guest())
    s = C.Chain([plugin]).new_stream(C.StreamInfo(start_time_ns=1))
    req = C.http1_request_headers(b"POST", b"/", [(b"host", b"h")])  # 7+4 + 5+1 + 10+1 + 7+4 = 39 bytes
    s.recv_request_headers(req, False)
    s.recv_request_data(b"abc", False)
    s.recv_request_data(b"de", True)
    s.recv_response_headers([(b":status", b"200")], False)  # 10 bytes
    s.recv_response_data(b"xyz", False)
    s.recv_response_trailers([(b"t", b"1")])  # 2 bytes
    s.complete()
    messages = trace(host, "props")
    at_headers, at_log = ints(messages[:9]), ints(messages[9:])
    # response headers: 5 body bytes received, nothing sent yet, the request is not complete; as in Envoy
    # the request header map is no longer attached, so total_size counts the body only
    assert at_headers == ["0", 5, "0", 5, "0", 0, "0", 0 + 10, "1"]
    # on_log (Envoy's access-log phase sees the request headers again): 3 body bytes sent, headers and
    # trailers counted, the duration is known
    assert at_log[:8] == ["0", 5, "0", 5 + 39, "0", 3, "0", 3 + 10 + 2]
    assert at_log[8] == "0" and len(messages[17]) >= 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_request_size_prefers_content_length_while_the_headers_are_attached(backend: str) -> None:
    host = new_host(backend)
    plugin = host.load(H.PluginConfig(name="props"), property_guest(("request\0size",), in_request=True))
    s = C.Chain([plugin]).new_stream()
    s.recv_request_headers(C.http1_request_headers(b"POST", b"/", [(b"host", b"h"), (b"content-length", b"9")]), False)
    s.recv_request_data(b"ab", True)
    s.recv_response_headers([(b":status", b"200")], True)
    s.complete()
    # request headers: content-length; response headers: the 2 bytes received; on_log: content-length again
    assert ints(trace(host, "props")) == ["0", 9, "0", 2, "0", 9]


STRINGS = ("request\0path", "request\0method", "request\0protocol", "source\0address", "xds\0cluster_name")


@pytest.mark.parametrize("backend", BACKENDS)
def test_string_properties_as_envoy_answers_them(backend: str) -> None:
    host = new_host(backend)
    plugin = host.load(H.PluginConfig(name="props"), property_guest(STRINGS, in_request=True))
    info = C.StreamInfo(remote_address="10.1.2.3", remote_port=4567, cluster_name="upstream")
    s = C.Chain([plugin]).new_stream(info)
    s.recv_request_headers(C.http1_request_headers(b"PUT", b"/p?x=1", [(b"host", b"h")]), True)
    s.recv_response_headers([(b":status", b"200")], True)
    s.complete()
    found = ["0", "/p?x=1", "0", "PUT", "0", "HTTP/1.1", "0", "10.1.2.3:4567", "0", "upstream"]
    # response phase: no request header map (NotFound = status 1) for path and method; the rest stays
    response_phase = ["1", "1", "0", "HTTP/1.1", "0", "10.1.2.3:4567", "0", "upstream"]
    assert trace(host, "props") == found + response_phase + found


@functools.cache
def trailer_guest(callback: str) -> bytes:
    """Adds response trailer `x-t: 1` from `callback` (response_headers or response_body at end of stream)."""
    add = "(drop (call $add (i32.const 3) (i32.const 3000) (i32.const 3) (i32.const 3010) (i32.const 1)))"
    headers_body = add if callback == "response_headers" else ""
    body_body = f"(if (local.get $eos) (then {add}))" if callback == "response_body" else ""
    return _guest(
        f"""
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (i32.const 0))
      (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32) {headers_body} (i32.const 0))
      (func (export "proxy_on_response_body") (param $id i32) (param $size i32) (param $eos i32) (result i32)
        {body_body} (i32.const 0))""",
        imports='(import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))',
        data='(data (i32.const 3000) "x-t") (data (i32.const 3010) "1")',
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("callback", "trailers"), [("response_body", True), ("response_headers", False)])
def test_trailers_can_be_added_only_in_the_last_body_callback(backend: str, callback: str, trailers: bool) -> None:
    host = new_host(backend)
    plugin = host.load(H.PluginConfig(name="trailers"), trailer_guest(callback))
    s = C.Chain([plugin]).new_stream()
    s.recv_request_headers(C.http1_request_headers(b"GET", b"/", [(b"host", b"h")]), True)
    out = s.recv_response_headers(C.http1_response_headers(200, []), False)
    out += s.recv_response_data(b"body", True)
    s.complete()
    sent = [o for o in out if isinstance(o, C.SendTrailers)]
    assert [o.trailers for o in sent] == ([((b"x-t", b"1"),)] if trailers else [])
    assert [o.end_stream for o in out if isinstance(o, C.SendData)] == [not trailers]


# ---- FAIL_RELOAD: backoff between reloads, VM sharing kept -------------------------------------------------
GUESTS = Path(__file__).resolve().parents[1] / "guests"


@functools.cache
def trap_on_body() -> bytes:
    """tests/guests/trap_request_body.wat: serves bodyless requests, traps on a request body."""
    return bytes(wasmtime.wat2wasm((GUESTS / "trap_request_body.wat").read_text()))


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def status(plugin: H.Plugin, *, body: bytes = b"") -> int:
    s = C.Chain([plugin]).new_stream()
    out = s.recv_request_headers(C.http1_request_headers(b"POST", b"/", [(b"host", b"h")]), not body)
    if body:
        out += s.recv_request_data(body, True)
    if not any(isinstance(o, C.AbortUpstream) for o in out):
        out += s.recv_response_headers(C.http1_response_headers(200, []), True)
    s.complete()
    down = [o for o in out if isinstance(o, C.SendHeaders) and o.target is C.Target.DOWNSTREAM]
    return int(dict(down[0].headers)[b":status"])


def test_reloads_back_off_while_the_reloaded_vm_keeps_failing() -> None:
    clock = FakeClock()
    host = H.Host(clock=clock, reload_backoff_ms=1000)
    plugin = host.load(H.PluginConfig(name="r", fail_strategy=C.FailStrategy.FAIL_RELOAD), trap_on_body())
    timeline: list[tuple[float, int, int]] = []
    for at, body in [(0, b"x"), (0.1, b""), (0.5, b"x"), (0.9, b""), (1.1, b""), (1.2, b"x"), (2.5, b""), (3.1, b"")]:
        clock.now = 100.0 + at
        timeline.append((at, status(plugin, body=body), plugin.reloads))
    assert timeline == [
        (0, 503, 0),  # the trap: this stream gets 503
        (0.1, 200, 1),  # first reload at once
        (0.5, 503, 1),  # the reloaded VM traps too
        (0.9, 503, 1),  # < 1 s since the last reload: backing off, 503
        (1.1, 200, 2),  # reload #2
        (1.2, 503, 2),  # and it fails again
        (2.5, 503, 2),  # gap now 2 s: 1.4 s since reload #2 is not enough
        (3.1, 200, 3),  # reload #3
    ]
    clock.now += 60  # a VM that lasted longer than the largest gap: the next failure reloads at once
    assert status(plugin, body=b"x") == 503
    assert (status(plugin), plugin.reloads) == (200, 4)


def test_plugins_sharing_a_vm_share_the_reloaded_one() -> None:
    host = H.Host(clock=FakeClock())
    reload = C.FailStrategy.FAIL_RELOAD
    a = host.load(H.PluginConfig(name="a", vm_id="shared", fail_strategy=reload), trap_on_body())
    b = host.load(H.PluginConfig(name="b", vm_id="shared", fail_strategy=reload), trap_on_body())
    assert a.vm is b.vm
    assert status(a, body=b"boom") == 503
    assert a.failed is not None and b.failed is not None  # one VM, one failure
    assert status(a) == 200 and status(b) == 200
    assert a.vm is b.vm and a.root.id != b.root.id and (a.reloads, b.reloads) == (1, 1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_completed_stream_leaves_no_cyclic_garbage(backend: str) -> None:
    """Per request nothing needs the cyclic GC: once the shell drops a completed stream, reference counting
    frees it with its contexts and controls (a stream -> context -> control -> stream cycle cost the agent
    ~13 us per request in GC)."""
    host = new_host(backend)
    plugin = host.load(H.PluginConfig(name="full"), tracer())
    chain = C.Chain([plugin])

    def exchange() -> None:
        s = chain.new_stream()
        s.recv_request_headers(C.http1_request_headers(b"POST", b"/", [(b"host", b"h")]), False)
        s.recv_request_data(b"abc", True)
        s.recv_response_headers(C.http1_response_headers(200, []), False)
        s.recv_response_data(b"ok", True)
        s.complete()

    def live_streams() -> int:  # (compiled Streams take no weak references; both kinds are GC-tracked)
        return sum(1 for o in gc.get_objects() if isinstance(o, C.Stream))

    exchange()  # first use of the VM may allocate long-lived state
    gc.collect()
    gc.disable()
    try:
        before = live_streams()
        exchange()
        assert live_streams() == before  # freed when the last reference went, without a collection
        # wasmtime-py's public call path makes ctypes array types (cycles) per call
        if plugin.vm.guest.backend == "fast":
            gc.set_debug(gc.DEBUG_SAVEALL)
            exchange()
            assert gc.collect() == 0
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


@pytest.mark.parametrize("backend", BACKENDS)
def test_prestart_starts_the_vms_at_once_and_each_plugin_starts_in_order(backend: str) -> None:
    # distinct VMs for plugins without vm_id (even with the same module), one for those naming the same vm_id;
    # a VM whose entry point fails fails its own plugin's load with that error, the others start
    good = tracer()
    broken = bytes(wasmtime.wat2wasm(f'(module {_BASE} (func (export "_start") unreachable))'))
    host = H.Host(backend=backend, log_level=H.TRACE)
    configs = [
        (H.PluginConfig(name="a"), good),
        (H.PluginConfig(name="b"), good),
        (H.PluginConfig(name="s1", vm_id="v"), good),
        (H.PluginConfig(name="s2", vm_id="v"), good),
        (H.PluginConfig(name="broken"), broken),
    ]
    host.prestart([(cfg, data, hashlib.sha256(data).hexdigest()) for cfg, data in configs])
    plugins = {}
    for cfg, data in configs[:4]:
        plugins[cfg.name] = host.load(cfg, data)
    with pytest.raises(errors.PluginStartError, match="broken: guest trapped"):
        host.load(*configs[4])
    assert len({id(p.vm) for p in plugins.values()}) == 3
    assert plugins["s1"].vm is plugins["s2"].vm and plugins["a"].vm is not plugins["b"].vm
    assert plugins["a"].vm.label == "a" and plugins["b"].vm.label == "b"
    ch = C.Chain(list(plugins.values()))
    s = ch.new_stream()
    s.recv_request_headers(C.http1_request_headers(b"GET", b"/", [(b"host", b"x")]), True)
    s.complete()
    assert trace(host, "a")[-3:] == ["log", "done", "delete"] and trace(host, "s2")[-1] == "delete"


# each request grows linear memory by 1 MiB and writes it (resident pages); done and delete log
_LEAKER = bytes(
    wasmtime.wat2wasm(f"""(module
      (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
      {_BASE}
      (data (i32.const 1800) "done")
      (data (i32.const 1808) "delete")
      (func (export "proxy_on_context_create") (param i32 i32))
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (local $p i32)
        (local.set $p (memory.grow (i32.const 16)))
        (if (i32.eq (local.get $p) (i32.const -1)) (then unreachable))
        (memory.fill (i32.shl (local.get $p) (i32.const 16)) (i32.const 1) (i32.const 1048576))
        (i32.const 0))
      (func (export "proxy_on_done") (param i32) (result i32)
        (drop (call $log (i32.const 2) (i32.const 1800) (i32.const 4))) (i32.const 1))
      (func (export "proxy_on_delete") (param i32)
        (drop (call $log (i32.const 2) (i32.const 1808) (i32.const 6)))))""")
)


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_vm_whose_memory_grew_past_the_recycle_mark_is_replaced_once_its_streams_end(backend: str) -> None:
    mib = 1024 * 1024
    host = H.Host(backend=backend, log_level=H.TRACE, recycle_bytes=24 * mib)
    plugin = host.load(H.PluginConfig(name="leak", fail_strategy=C.FailStrategy.FAIL_CLOSE), _LEAKER)
    ch = C.Chain([plugin])
    before, first_vm = _rss(), plugin.vm
    assert host.check_memory() == 0 and not first_vm.recycle  # under the mark: nothing to do

    def request(end: bool = True) -> C.Stream:
        s = ch.new_stream()
        s.recv_request_headers(C.http1_request_headers(b"GET", b"/", [(b"host", b"x")]), True)
        s.recv_response_headers(C.http1_response_headers(200, []), True)
        if end:
            s.complete()
        return s

    for _ in range(40):
        request()
    grown = _rss()
    assert plugin.vm.memory_size() > 40 * mib and grown - before > 30 * mib
    open_stream = request(end=False)  # a stream still on the VM: the recycle waits for it
    assert host.check_memory() == 0 and first_vm.recycle and plugin.vm is first_vm
    first = id(first_vm)
    del first_vm  # (the test must not keep the old VM alive)
    open_stream.complete()  # its end wakes the host, whose deferred work recycles
    del open_stream
    host.run_deferred()
    assert id(plugin.vm) != first and plugin.recycles == 1 and plugin.failed is None
    assert plugin.vm.memory_size() < 4 * mib
    assert trace(host, "leak")[-2:] == ["done", "delete"]  # the old root said goodbye as at a shutdown
    if plugin.vm.guest.backend == "fast":  # (wasmtime-py's public API keeps linkers' host functions globally)
        assert grown - _rss() > 30 * mib  # the old VM's linear memory went back to the OS
    request()  # the fresh VM serves the next request
    assert plugin.vm.memory_size() < 5 * mib and plugin.failed is None

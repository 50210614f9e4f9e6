"""A mutation fuzzer for HTTP/2 requests, the counterpart of tests/differential/fuzz.py: valid requests (a GET,
a POST with a body, a POST with trailers, CONNECT, OPTIONS *, cookies, te: trailers, several fields) mutated at
the header-list level (bytes in names and values, blanks, connection-specific fields, pseudo-header order and
forms, :path and :authority forms, host, content-length) and at the frame level (CONTINUATION splits, padding,
the PRIORITY flag, trailers, DATA after END_STREAM, even or reused stream ids), each mutant written as the same
bytes to Envoy 1.40 and to the agent, and what each did with every stream compared.

Mutant `n` of seed `s` is a function of (s, n) alone, so a run replays anywhere. A case is a tuple of `Step`s
(frames, header blocks given as fields and HPACK-encoded on the connection's own encoder when sent) that a YAML
entry can hold (`to_yaml` / `from_yaml`: tests/differential/found_h2.yaml). `exchange` sends a case after the
server's SETTINGS were acknowledged and reads frame by frame (no library state machine that could refuse what
a proxy answers); `problems` holds the rules: the agent never answers from the app what Envoy refused, both
forwarding means the app saw the same request, and otherwise each stream ends the same way (a status of the
same class, the same reset code, or the connection ended). `shrink` cuts a diverging case down.
Used by tests/integration/test_differential_h2_fuzz.py.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import json
import random
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import h2.errors
import hpack

from tests.testbed import h2raw

Header = tuple[bytes, bytes]
Fields = tuple[Header, ...]

#: frame types
DATA, HEADERS, PRIORITY, RST_STREAM, WINDOW_UPDATE, CONTINUATION = 0, 1, 2, 3, 8, 9
END_STREAM, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x4, 0x8, 0x20


@dataclass(frozen=True)
class Step:
    """One thing the client writes: a header block (`kind` "headers": `fields`, split into `pieces` frames -- a
    HEADERS and CONTINUATIONs --, `pad` bytes of padding, the PRIORITY flag with `depends` as the stream it
    depends on), a DATA frame of `data` (`pad`), an RST_STREAM or WINDOW_UPDATE (`code`), a PRIORITY frame
    (`depends`); END_STREAM when `end`."""

    kind: str
    stream: int = 1
    fields: Fields = ()
    data: bytes = b""
    end: bool = False
    pieces: int = 1
    pad: int | None = None
    priority: bool = False
    depends: int = 0
    code: int = 0


@dataclass(frozen=True)
class H2Case:
    name: str
    steps: tuple[Step, ...]
    #: why the agent still differs (a found entry that is not fixed yet), else "": on both paths, on the compiled
    #: one only (nghttp2), on the interpreted one only (MESHPLUG_NATIVE=0)
    differs: str = ""
    differs_native: str = ""
    differs_fallback: str = ""

    @property
    def streams(self) -> list[int]:
        return sorted({s.stream for s in self.steps if s.kind in ("headers", "data") and s.stream % 2 == 1})


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream.to_bytes(4, "big") + payload


def _padded(payload: bytes, pad: int | None) -> tuple[bytes, int]:
    if pad is None:
        return payload, 0
    # a pad length over 255 is written as 255 with no padding after it (more than the frame holds)
    return bytes((min(pad, 255),)) + payload + b"\x00" * (pad if pad <= 255 else 0), PADDED


def encode(steps: Sequence[Step]) -> bytes:
    """The bytes of `steps` (header blocks on one HPACK encoder, as one connection's are)."""
    encoder = hpack.Encoder()
    out = []
    for s in steps:
        if s.kind == "headers":
            block = encoder.encode(list(s.fields))
            cut = max(1, -(-len(block) // max(1, s.pieces)))
            parts = [block[i : i + cut] for i in range(0, len(block), cut)] or [b""]
            parts += [b""] * (s.pieces - len(parts))
            first = parts[0]
            flags = END_STREAM if s.end else 0
            if s.priority:
                first = (s.depends & 0x7FFFFFFF).to_bytes(4, "big") + b"\x0f" + first
                flags |= PRIORITY_FLAG
            first, padded = _padded(first, s.pad)
            last = len(parts) == 1
            out.append(_frame(HEADERS, flags | padded | (END_HEADERS if last else 0), s.stream, first))
            for i, part in enumerate(parts[1:], 2):
                out.append(_frame(CONTINUATION, END_HEADERS if i == len(parts) else 0, s.stream, part))
        elif s.kind == "data":
            payload, padded = _padded(s.data, s.pad)
            out.append(_frame(DATA, padded | (END_STREAM if s.end else 0), s.stream, payload))
        elif s.kind == "rst":
            out.append(_frame(RST_STREAM, 0, s.stream, s.code.to_bytes(4, "big")))
        elif s.kind == "window":
            out.append(_frame(WINDOW_UPDATE, 0, s.stream, s.code.to_bytes(4, "big")))
        elif s.kind == "priority":
            out.append(_frame(PRIORITY, 0, s.stream, s.depends.to_bytes(4, "big") + b"\x0f"))
        else:
            raise ValueError(f"unknown step kind {s.kind!r}")
    return b"".join(out)


# --- what a proxy did -------------------------------------------------------------------------------------------
@dataclass
class Seen:
    """Per stream: the final status, the response body, a reset code; how the connection ended."""

    statuses: dict[int, int] = field(default_factory=dict)
    bodies: dict[int, bytes] = field(default_factory=dict)
    resets: dict[int, str] = field(default_factory=dict)
    ended: set[int] = field(default_factory=set)
    goaway: str | None = None
    last_stream: int = 0
    closed: bool = False

    def kind(self, stream: int) -> str:
        """ "status 200", "reset PROTOCOL_ERROR", "ended" (GOAWAY or closed, no answer) or "nothing"."""
        if stream in self.statuses:
            return f"status {self.statuses[stream]}"
        if stream in self.resets:
            return f"reset {self.resets[stream]}"
        return "ended" if self.goaway is not None or self.closed else "nothing"

    def forwarded(self, stream: int) -> dict[str, Any] | None:
        """What the echo app received for `stream` (its record, the response's body), if it answered."""
        body = self.bodies.get(stream, b"")
        if stream not in self.statuses or not body.startswith(b"{"):
            return None
        try:
            record: dict[str, Any] = json.loads(body)
        except ValueError:
            return None
        return record if "method" in record else None


def _code(code: int) -> str:
    try:
        return h2.errors.ErrorCodes(code).name
    except ValueError:
        return str(code)


def exchange(port: int, case: H2Case, *, timeout: float = 1.5) -> Seen:
    """Connect, send the preface and wait for the server's SETTINGS and their ACK, then write the case's bytes in one
    go; read until every stream of the case ended (answered, reset) or the connection did, or `timeout`."""
    seen = Seen()
    decoder = hpack.Decoder()
    decoder.max_allowed_table_size = 1 << 16
    streams = case.streams
    block: dict[int, bytes] = {}
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        got = bytearray()
        sock.sendall(h2raw.CLIENT_PREFACE)
        h2raw.read_until(sock, got, h2raw.settings_acked, time.monotonic() + timeout)
        sock.sendall(_frame(4, 1, 0, b"") + encode(case.steps))
        deadline = time.monotonic() + timeout
        while not all(s in seen.ended or s in seen.resets for s in streams) and not seen.closed:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            sock.settimeout(left)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            except OSError:
                seen.closed = True
                break
            if not chunk:
                seen.closed = True
                break
            got += chunk
            frames = h2raw.frames(bytes(got))
            keep = frames[-1][3] if frames and frames[-1][0] == -1 else b""
            got = bytearray(keep)
            for frame in frames:
                _read_frame(seen, decoder, block, frame)
    return seen


def _read_frame(seen: Seen, decoder: hpack.Decoder, block: dict[int, bytes], frame: h2raw.RawFrame) -> None:
    kind, flags, sid, payload = frame
    if kind in (DATA, HEADERS) and flags & PADDED:
        payload = payload[1 : len(payload) - payload[0]]
    if kind == HEADERS and flags & PRIORITY_FLAG:
        payload = payload[5:]
    if kind in (HEADERS, CONTINUATION):
        block[sid] = block.get(sid, b"") + payload
        if kind == HEADERS and flags & END_STREAM:
            seen.ended.add(sid)
        if flags & END_HEADERS:
            fields = dict(decoder.decode(block.pop(sid), raw=True))
            status = fields.get(b":status", b"")
            if status.isdigit() and int(status) >= 200 and sid not in seen.statuses:
                seen.statuses[sid] = int(status)
    elif kind == DATA:
        seen.bodies[sid] = seen.bodies.get(sid, b"") + payload
        if flags & END_STREAM:
            seen.ended.add(sid)
    elif kind == RST_STREAM:
        seen.resets[sid] = _code(int.from_bytes(payload[:4], "big"))
    elif kind == 7:  # GOAWAY
        seen.last_stream = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
        seen.goaway = _code(int.from_bytes(payload[4:8], "big"))


# --- the rules ----------------------------------------------------------------------------------------------------
#: the app's record fields each proxy sets itself (values compared only by presence)
TIMED = frozenset({"date", "x-request-id", "x-envoy-upstream-service-time"})

#: accepted differences, by (Envoy's kind, the agent's kind): why. Only what test_differential_h2.py accepts.
ACCEPTED: dict[tuple[str, str], str] = {}


def app_view(record: dict[str, Any]) -> tuple[object, ...]:
    headers = sorted((str(k), "*" if k in TIMED else str(v)) for k, v in record["headers"])
    return record["method"], record["path"], tuple(headers), record.get("body_b64", "")


def _class(kind: str) -> str:
    return f"status {kind[7]}xx" if kind.startswith("status ") else kind


def problems(case: H2Case, envoy: Seen, agent: Seen) -> list[str]:
    out = []
    for sid in case.streams:
        e_kind, a_kind = envoy.kind(sid), agent.kind(sid)
        e_app, a_app = envoy.forwarded(sid), agent.forwarded(sid)
        if a_app is not None and e_app is None:
            out.append(f"stream {sid}: the agent forwarded what Envoy did not ({e_kind}); the app saw {a_app}")
        elif a_app is not None and e_app is not None:
            if app_view(a_app) != app_view(e_app):
                out.append(f"stream {sid}: the app saw {app_view(e_app)} via Envoy, {app_view(a_app)} via the agent")
            if e_kind != a_kind:
                out.append(f"stream {sid}: {e_kind} via Envoy, {a_kind} via the agent")
        elif e_app is not None:
            out.append(f"stream {sid}: Envoy forwarded, the agent did not ({a_kind})")
        elif _class(e_kind) != _class(a_kind) and (e_kind, a_kind) not in ACCEPTED:
            out.append(f"stream {sid}: {e_kind} via Envoy, {a_kind} via the agent")
    return out


@dataclass(frozen=True)
class Found:
    case: H2Case
    problems: list[str]


def judge(envoy_port: int, agent_port: int, case: H2Case, timeout: float = 1.5) -> list[str]:
    """The case through both proxies (at once, each on its own connection), what differs."""
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        via_envoy = pool.submit(exchange, envoy_port, case, timeout=timeout)
        via_agent = pool.submit(exchange, agent_port, case, timeout=timeout)
        return problems(case, via_envoy.result(), via_agent.result())


def run(
    envoy_port: int, agent_port: int, cases: Iterator[H2Case], *, seconds: float | None = None, lanes: int = 3
) -> tuple[int, list[Found]]:
    """Every case (until `seconds` passed, when given), `lanes` at a time; (how many ran, the diverging ones)."""
    deadline = None if seconds is None else time.monotonic() + seconds
    found: list[Found] = []
    n = 0
    with concurrent.futures.ThreadPoolExecutor(lanes) as pool:
        while deadline is None or time.monotonic() < deadline:
            batch = list(itertools.islice(cases, lanes))
            if not batch:
                break
            futures = [(c, pool.submit(judge, envoy_port, agent_port, c)) for c in batch]
            for c, future in futures:
                n += 1
                if got := future.result():
                    found.append(Found(c, got))
    return n, found


# --- the generator ------------------------------------------------------------------------------------------------
def _get(path: bytes = b"/fz", *extra: Header, method: bytes = b"GET") -> Fields:
    return ((b":method", method), (b":scheme", b"http"), (b":path", path), (b":authority", b"a.test"), *extra)


STARTS: tuple[tuple[str, tuple[Step, ...]], ...] = (
    ("get", (Step("headers", fields=_get(), end=True),)),
    ("post", (Step("headers", fields=_get(b"/fz/p", (b"content-length", b"5"), method=b"POST")),
              Step("data", data=b"hello", end=True))),
    ("trailers", (Step("headers", fields=_get(b"/fz/t", (b"te", b"trailers"), method=b"POST")),
                  Step("data", data=b"abc"), Step("headers", fields=((b"x-t", b"1"),), end=True))),
    ("connect", (Step("headers", fields=((b":method", b"CONNECT"), (b":authority", b"a.test:80")), end=True),)),
    ("options", (Step("headers", fields=_get(b"*", method=b"OPTIONS"), end=True),)),
    ("cookies", (Step("headers", fields=_get(b"/fz/c", (b"cookie", b"a=1"), (b"cookie", b"b=2")), end=True),)),
    ("fields", (Step("headers", fields=_get(b"/fz/f?q=1", (b"accept", b"a"), (b"accept", b"b"), (b"user-agent", b"u"),
                                            (b"x-a", b"1"), (b"te", b"trailers"), (b"x-b", b"")), end=True),)),
    ("put", (Step("headers", fields=_get(b"/fz/u", (b"content-type", b"text/plain"), method=b"PUT")),
             Step("data", data=b"12"), Step("data", data=b"345", end=True))),
)  # fmt: skip

#: bytes that names and values have rules about
BYTES = b'\x00\x01\t\n\r \x7f\x80\xff"(),/:;=?@[\\]{}_AZ'
CONNECTION_SPECIFIC: Fields = (
    (b"connection", b"close"), (b"connection", b"keep-alive"), (b"keep-alive", b"timeout=5"),
    (b"proxy-connection", b"close"), (b"transfer-encoding", b"chunked"), (b"transfer-encoding", b"identity"),
    (b"upgrade", b"h2c"), (b"upgrade", b"websocket"), (b"http2-settings", b"AAMAAABkAAQAAP__"),
)  # fmt: skip
TE = (b"trailers", b"Trailers", b"gzip", b"trailers, gzip", b"", b" trailers", b"trailers ", b"trailers,", b"TRAILERS")
PATHS = (
    b"", b"abc", b"*", b"http://a.test/x", b"https://b.test:8/x?y", b"/a#f", b"#", b"/?", b"?q", b"/a/../b", b"/..",
    b"/%2e%2e/x", b"/%2E./x", b"//x", b"/a//b", b"/a b", b"/\x7f", b"/%00", b"/a?b#c", b"/\xc3\xa9", b"/a\\b", b"/;x",
    b"/a/./b", b"/%", b"/%zz", b"/" + b"a" * 3000,
)  # fmt: skip
AUTHORITIES = (
    b"", b"u@a.test", b"u:p@a.test", b"a.test:", b"a.test:0", b"a.test:99999", b"a.test:8x", b"a.test:80:80",
    b"[::1]", b"[::1]:80", b"[::1", b"a b", b"a.test\x00", b"A.TEST", b"a.test.", b"a_b", b"*", b"%41", b"@",
    b"a.test/x", b"a.test?x", b"a.test#x", b"-", b"1.2.3.4:80", b"\xc3\xa9",
)  # fmt: skip
METHODS = (b"GET", b"POST", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"CONNECT", b"TRACE", b"get", b"G T", b"",
           b"M-SEARCH", b"PRI", b"G\x00", b"X" * 40)  # fmt: skip
SCHEMES = (b"https", b"HTTP", b"", b"foo", b"ht tp", b"http:", b"h2c")
LENGTHS = (b"0", b"1", b"4", b"5", b"6", b"05", b"+5", b"-1", b" 5", b"5 ", b"5,5", b"abc", b"",
           b"99999999999999999999")  # fmt: skip
PSEUDO_EXTRA: Fields = ((b":foo", b"x"), (b":protocol", b"websocket"), (b":status", b"200"), (b":", b"x"),
                        (b":path", b"/again"), (b":method", b"POST"), (b":authority", b"b.test"))  # fmt: skip

#: other fields with a rule somewhere (merged, joined, dropped, replaced by the proxy)
OTHER_NAMES = (
    b"x-a", b"cookie", b"accept", b"referer", b"x-forwarded-for", b"expect", b"x-envoy-retry-on", b"content-type",
    b"x-forwarded-proto", b"trailer", b"x-request-id", b"x-forwarded-client-cert",
)  # fmt: skip

Mutator = Callable[[random.Random, list[Step]], None]


def _block(rng: random.Random, steps: list[Step], *, first: bool = False) -> int:
    """The index of a header block step (the request's own when `first`, else any)."""
    blocks = [i for i, s in enumerate(steps) if s.kind == "headers"]
    return blocks[0] if first or rng.random() < 0.75 else rng.choice(blocks)


def _set_fields(steps: list[Step], i: int, fields: list[Header]) -> None:
    steps[i] = replace(steps[i], fields=tuple(fields))


def _poke(rng: random.Random, data: bytes) -> bytes:
    where = rng.choice((0, len(data), rng.randrange(len(data) + 1)))
    if data and rng.random() < 0.2:  # upper-case instead
        j = rng.randrange(len(data))
        return data[:j] + data[j : j + 1].upper() + data[j + 1 :]
    return data[:where] + bytes([rng.choice(BYTES)]) + data[where:]


def _name_byte(rng: random.Random, steps: list[Step]) -> None:
    i = _block(rng, steps)
    fields = list(steps[i].fields)
    if fields:
        j = rng.randrange(len(fields))
        fields[j] = (_poke(rng, fields[j][0]), fields[j][1])
        _set_fields(steps, i, fields)


def _value_byte(rng: random.Random, steps: list[Step]) -> None:
    i = _block(rng, steps)
    fields = list(steps[i].fields)
    if fields:
        j = rng.randrange(len(fields))
        name, value = fields[j]
        if rng.random() < 0.4:
            blank = rng.choice((b" ", b"\t", b"  "))
            value = blank + value if rng.random() < 0.5 else value + blank
        else:
            value = _poke(rng, value)
        fields[j] = (name, value)
        _set_fields(steps, i, fields)


def _add_field(rng: random.Random, steps: list[Step]) -> None:
    i = _block(rng, steps)
    fields = list(steps[i].fields)
    choice = rng.random()
    if choice < 0.3:
        new = rng.choice(CONNECTION_SPECIFIC)
    elif choice < 0.45:
        new = (b"te", rng.choice(TE))
    elif choice < 0.6:
        new = (b"host", rng.choice((b"a.test", b"b.test", *AUTHORITIES)))
    elif choice < 0.8:
        new = rng.choice(PSEUDO_EXTRA)
    else:
        new = (rng.choice(OTHER_NAMES), rng.choice((b"1", b"a=1", b"", b"x y")))
    fields.insert(rng.randint(0, len(fields)), new)
    _set_fields(steps, i, fields)


def _pseudo(rng: random.Random, steps: list[Step]) -> None:
    """Pseudo-headers: one moved after the regular fields, duplicated, dropped, emptied, or its form changed."""
    i = _block(rng, steps, first=True)
    fields = list(steps[i].fields)
    pseudo = [j for j, (n, _) in enumerate(fields) if n.startswith(b":")]
    if not pseudo:
        return
    j = rng.choice(pseudo)
    name, value = fields[j]
    op = rng.randrange(5)
    if op == 0:
        fields.append(fields.pop(j))
    elif op == 1:
        fields.insert(j, (name, value))
    elif op == 2:
        del fields[j]
    elif op == 3:
        fields[j] = (name, b"")
    else:
        forms = {b":path": PATHS, b":authority": AUTHORITIES, b":method": METHODS, b":scheme": SCHEMES}
        fields[j] = (name, rng.choice(forms.get(name, (b"",))))
    _set_fields(steps, i, fields)


def _content_length(rng: random.Random, steps: list[Step]) -> None:
    i = _block(rng, steps, first=True)
    fields = [f for f in steps[i].fields if rng.random() < 0.5 or f[0] != b"content-length"]
    for _ in range(rng.choice((1, 1, 2))):
        fields.append((b"content-length", rng.choice(LENGTHS)))
    _set_fields(steps, i, fields)


def _split(rng: random.Random, steps: list[Step]) -> None:
    i = _block(rng, steps)
    steps[i] = replace(steps[i], pieces=rng.choice((2, 3, 4)))


def _pad(rng: random.Random, steps: list[Step]) -> None:
    i = rng.randrange(len(steps))
    if steps[i].kind in ("headers", "data"):
        steps[i] = replace(steps[i], pad=rng.choice((0, 1, 7, 255, 300)))


def _priority_flag(rng: random.Random, steps: list[Step]) -> None:
    i = _block(rng, steps)
    steps[i] = replace(steps[i], priority=True, depends=rng.choice((0, 0, 3, steps[i].stream)))


def _trailers(rng: random.Random, steps: list[Step]) -> None:
    """Trailers after the request's end (or instead of it), odd trailers, or DATA after END_STREAM."""
    last = len(steps) - 1
    op = rng.randrange(5)
    fields = rng.choice((((b"x-t", b"1"),), ((b":path", b"/t"),), ((b"X-T", b"1"),), ((b"content-length", b"1"),),
                         ((b"x-t", b"a\x00"),), ((b"te", b"trailers"),), ()))  # fmt: skip
    if op == 0:  # the request's end moved onto trailers
        steps[last] = replace(steps[last], end=False)
        steps.append(Step("headers", fields=fields, end=True))
    elif op == 1:  # trailers without END_STREAM
        steps[last] = replace(steps[last], end=False)
        steps.append(Step("headers", fields=fields))
        steps.append(Step("data", data=b"z", end=True))
    elif op == 2:
        steps.append(Step("data", data=rng.choice((b"late", b"")), end=rng.random() < 0.5))
    elif op == 3:
        steps.append(Step("headers", fields=fields, end=True))  # headers after END_STREAM
    else:  # END_STREAM on the first block although a body follows
        steps[0] = replace(steps[0], end=True)


def _data(rng: random.Random, steps: list[Step]) -> None:
    """The body cut into more frames, emptied, or grown; or END_STREAM moved."""
    datas = [i for i, s in enumerate(steps) if s.kind == "data"]
    if not datas:
        steps[0] = replace(steps[0], end=False)
        steps.insert(1, Step("data", data=rng.choice((b"", b"x", b"hello")), end=True))
        return
    i = rng.choice(datas)
    s = steps[i]
    op = rng.randrange(3)
    if op == 0 and len(s.data) > 1:
        cut = rng.randrange(1, len(s.data))
        steps[i : i + 1] = [replace(s, data=s.data[:cut], end=False), replace(s, data=s.data[cut:])]
    elif op == 1:
        steps[i] = replace(s, data=s.data + rng.choice((b"x", b"\x00" * 100, b"y" * 20000)))
    else:
        steps[i] = replace(s, data=b"")


def _streams(rng: random.Random, steps: list[Step]) -> None:
    """Another request after this one (stream 3, or the same stream again), on an even stream or stream 0, an RST_STREAM
    or PRIORITY frame on it, a stream id below one already used."""
    op = rng.randrange(6)
    if op == 0:
        steps.append(Step("headers", stream=3, fields=_get(b"/fz/next"), end=True))
    elif op == 1:
        steps.append(Step("headers", stream=1, fields=_get(b"/fz/again"), end=True))
    elif op == 2:
        sid = rng.choice((0, 2, 5))
        steps[:] = [replace(s, stream=sid) if s.stream == 1 else s for s in steps]
        if sid not in (0, 2):
            steps.append(Step("headers", stream=3, fields=_get(b"/fz/lower"), end=True))
    elif op == 3:
        steps.append(Step("rst", code=rng.choice((0, 1, 8))))
    elif op == 4:
        steps.insert(rng.randint(0, len(steps)), Step("priority", depends=rng.choice((0, 1, 3))))
    else:
        steps.insert(rng.randint(0, len(steps)), Step("window", stream=rng.choice((0, 1)), code=rng.choice((0, 1))))


def _drop_or_swap(rng: random.Random, steps: list[Step]) -> None:
    i = _block(rng, steps)
    fields = list(steps[i].fields)
    if len(fields) < 2:
        return
    j, k = rng.sample(range(len(fields)), 2)
    if rng.random() < 0.5:
        fields[j], fields[k] = fields[k], fields[j]
    else:
        del fields[j]
    _set_fields(steps, i, fields)


HEADER_MUTATORS: tuple[Mutator, ...] = (
    _name_byte, _value_byte, _add_field, _add_field, _pseudo, _pseudo, _content_length, _drop_or_swap,
)  # fmt: skip
FRAME_MUTATORS: tuple[Mutator, ...] = (_split, _pad, _priority_flag, _trailers, _data, _streams)


def mutant(seed: int, n: int) -> H2Case:
    """Mutant `n` of `seed`: one of `STARTS`, one to three mutations (mostly of header lists, some of frames)."""
    rng = random.Random(f"h2:{seed}:{n}")
    start, steps = rng.choice(STARTS)
    work = list(steps)
    for _ in range(rng.choice((1, 1, 2, 3))):
        mutators = HEADER_MUTATORS if rng.random() < 0.65 else FRAME_MUTATORS
        rng.choice(mutators)(rng, work)
    return H2Case(f"h2fuzz-{seed}-{n}-{start}", tuple(work))


def mutants(seed: int, count: int | None = None) -> Iterator[H2Case]:
    for n in itertools.count() if count is None else range(count):
        yield mutant(seed, n)


# --- shrinking and the found list ---------------------------------------------------------------------------------
def _smaller(case: H2Case) -> Iterator[H2Case]:
    """Cases one simplification away: a step left out, a field left out, a split, padding or flag undone."""
    steps = case.steps
    for i in range(len(steps)):
        if len(steps) > 1:
            yield replace(case, steps=steps[:i] + steps[i + 1 :])
    for i, s in enumerate(steps):
        simpler = [replace(s, pieces=1), replace(s, pad=None), replace(s, priority=False, depends=0)]
        simpler += [replace(s, fields=s.fields[:j] + s.fields[j + 1 :]) for j in range(len(s.fields))]
        simpler += [replace(s, data=s.data[: len(s.data) // 2])] if len(s.data) > 1 else []
        for t in simpler:
            if t != s:
                yield replace(case, steps=(*steps[:i], t, *steps[i + 1 :]))


def _signature(found: list[str]) -> set[str]:
    """What kind of divergence (the words that say so, not the app's record)."""
    return {p.split(";")[0].split(": the app saw")[0] for p in found}


def kind_of(found: Found) -> tuple[str, frozenset[str]]:
    """Which start a divergence came from and what kind it is, so that a run shrinks one case of each kind."""
    return found.case.name.rsplit("-", 1)[-1], frozenset(_signature(found.problems))


def shrink(test: Callable[[H2Case], list[str]], case: H2Case, first: list[str], *, tries: int = 60) -> Found:
    """`case` simplified while `test` still finds the same kind of divergence (each kept step seen twice)."""
    want = _signature(first)
    best, best_problems = case, first
    progress = True
    while progress and tries > 0:
        progress = False
        for smaller in _smaller(best):
            tries -= 1
            got = test(smaller)
            if got and _signature(got) == want and _signature(test(smaller)) == want:
                best, best_problems, progress = smaller, got, True
                break
            if tries <= 0:
                break
    return Found(best, best_problems)


def _text(data: bytes) -> str:
    return data.decode("latin-1")


#: the found entries' keys that say why the agent still differs
DIFFERS = ("differs", "differs_native", "differs_fallback")


def to_yaml(case: H2Case) -> dict[str, Any]:
    """A found entry: name, steps (fields as [name, value] pairs of latin-1 text, only what differs from a Step's
    defaults), and why it still differs, if it does."""
    steps = []
    default = Step("")
    for s in case.steps:
        entry: dict[str, Any] = {"kind": s.kind}
        for key in ("stream", "end", "pieces", "pad", "priority", "depends", "code"):
            if getattr(s, key) != getattr(default, key):
                entry[key] = getattr(s, key)
        if s.fields:
            entry["fields"] = [[_text(n), _text(v)] for n, v in s.fields]
        if s.data:
            entry["data"] = _text(s.data)
        steps.append(entry)
    marks = {k: getattr(case, k) for k in DIFFERS if getattr(case, k)}
    return {"name": case.name, "steps": steps} | marks


def from_yaml(entry: dict[str, Any]) -> H2Case:
    steps = []
    for raw in entry["steps"]:
        given = dict(raw)
        fields = tuple((n.encode("latin-1"), v.encode("latin-1")) for n, v in given.pop("fields", []))
        data = given.pop("data", "").encode("latin-1")
        steps.append(Step(fields=fields, data=data, **given))
    return H2Case(str(entry["name"]), tuple(steps), **{k: str(entry[k]) for k in DIFFERS if k in entry})

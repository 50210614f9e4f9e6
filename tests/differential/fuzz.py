"""A mutation fuzzer over the differential corpus: byte-level and HTTP-aware mutations of the corpus requests,
each mutant through Envoy and the agent (tests/differential/bed.py). Only the safety rules are held here (the
agent never forwards what Envoy refused, never disagrees on a forwarded message, never sends what the upstream
cannot read); status-class differences of mutants are expected where the agent is stricter by design.

Mutant `n` of seed `s` is a function of (s, n) alone (its own random generator), so a run is reproducible
whatever the machine's speed: `mutants(seed, count)` gives the same bytes everywhere, and one mutant replays
by its (seed, index). The HTTP-aware mutators work where Envoy's codec has rules: absolute-form schemes and
authorities, Host values, header name and value bytes, whitespace around the colon and in the request line,
obs-fold, duplicate or odd Content-Length / Transfer-Encoding, chunk sizes and extensions, methods, versions.
Used by tests/integration/test_differential_http1.py.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from tests.differential.bed import OK_RESPONSE, Bed, Case, compare

#: fragments that smuggling and framing bugs are made of
TOKENS = (
    b"\r\n", b"\n", b"\r", b"\x00", b" ", b"\t", b":", b",", b";", b"0\r\n\r\n", b"chunked", b"Transfer-Encoding: ",
    b"Content-Length: ", b"Host: ", b"\r\n\r\n", b"HTTP/1.1", b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", b"\r\n ", b"\x0b",
    b"0", b"ffffffff", b"-1", b"Connection: close\r\n", b"Upgrade: h2c\r\n", b"Expect: 100-continue\r\n", b"\xff",
)  # fmt: skip
#: single bytes the codecs treat specially somewhere (separators, controls, obs-text, URL and authority marks)
BYTES = b"\x00\x01\t\n\x0b\x0c\r \x7f\x80\xff\"#%&'()*+,/:;<=>?@[\\]^_`{|}~!$-."
SCHEMES = (b"http", b"HTTP", b"hTtP", b"https", b"HTTPS", b"ws", b"wss", b"ftp", b"h2", b"http:", b"", b"http+x")
AUTHORITY_PARTS = (
    b"x.test", b"X", b"1.2.3.4", b"[::1]", b"[fe80::1%eth0]", b"[::1%2]", b"[1.2.3.4]", b"[", b"]", b":", b":80",
    b":65535", b":65536", b":0", b"@", b"user@", b"u:p@", b"%41", b"%", b"-", b".", b"_", b";", b"!", b"~", b"*",
    b"'", b"(", b"=", b"+", b"$", b",", b"&", b"0", b"::",
)  # fmt: skip
AFTER_AUTHORITY = (b"", b"/", b"/p", b"/admin?q=1", b"?q", b"?", b"#f", b"/a#f", b"//", b"/%2e%2e/admin", b";/a")
METHODS = (
    b"GET", b"POST", b"HEAD", b"PUT", b"OPTIONS", b"CONNECT", b"TRACE", b"PRI", b"get", b"G@T", b"GE T", b"", b"-",
    b"M-SEARCH", b"PROPFIND", b"GET\x00", b"\xffGET", b"X" * 40,
)  # fmt: skip
VERSIONS = (
    b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.2", b"HTTP/2.0", b"HTTP/0.9", b"http/1.1", b"HTTP/1.1 ", b"HTTP/1", b"HTTP/11",
    b"HTTP/1.01", b"HTTPS/1.1", b"", b"HTTP/1.1\x00", b" HTTP/1.1",
)  # fmt: skip
FRAMING_VALUES = (
    b"0", b"3", b"4", b"00", b"+3", b"-1", b"3 ", b" 3", b"3,3", b"3, 4", b"0x3", b"", b"18446744073709551619",
    b"chunked", b"Chunked", b"chunked, chunked", b"gzip, chunked", b"chunked, gzip", b"identity", b"xchunked",
    b"chunked;q=1", b"\tchunked", b'"chunked"',
)  # fmt: skip
CHUNK_EXTENSIONS = (b";", b";a", b";a=b", b';a="q"', b" ;a", b";a b", b";a\x00", b"\t", b" ", b";a=\r", b";\x80")


def _split(data: bytes) -> tuple[list[bytes], bytes]:
    """(head lines, rest after the blank line); a request without a blank line is all head."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    return head.split(b"\r\n"), rest if sep else b""


def _join(lines: list[bytes], rest: bytes) -> bytes:
    return b"\r\n".join(lines) + b"\r\n\r\n" + rest


def _flip(rng: random.Random, data: bytes) -> bytes:
    i = rng.randrange(len(data))
    return data[:i] + bytes([rng.randrange(256)]) + data[i + 1 :]


def _insert(rng: random.Random, data: bytes) -> bytes:
    i = rng.randrange(len(data) + 1)
    return data[:i] + rng.choice(TOKENS) + data[i:]


def _delete(rng: random.Random, data: bytes) -> bytes:
    i = rng.randrange(len(data))
    return data[:i] + data[i + rng.randint(1, 8) :]


def _duplicate_line(rng: random.Random, data: bytes) -> bytes:
    lines = data.split(b"\r\n")
    i = rng.randrange(len(lines))
    lines.insert(i, lines[i])
    return b"\r\n".join(lines)


def _splice(rng: random.Random, data: bytes, other: bytes) -> bytes:
    return data[: rng.randrange(len(data) + 1)] + other[rng.randrange(len(other) + 1) :]


def _authority(rng: random.Random) -> bytes:
    return b"".join(rng.choice(AUTHORITY_PARTS) for _ in range(rng.randint(1, 4)))


def _request_line(rng: random.Random, data: bytes, part: int, make: Callable[[random.Random], bytes]) -> bytes:
    lines, rest = _split(data)
    words = lines[0].split(b" ")
    if len(words) == 3:
        words[part] = make(rng)
        lines[0] = b" ".join(words)
    return _join(lines, rest)


def _absolute_target(rng: random.Random, data: bytes) -> bytes:
    def target(rng: random.Random) -> bytes:
        return rng.choice(SCHEMES) + b"://" + _authority(rng) + rng.choice(AFTER_AUTHORITY)

    return _request_line(rng, data, 1, target)


def _method(rng: random.Random, data: bytes) -> bytes:
    return _request_line(rng, data, 0, lambda r: r.choice(METHODS))


def _version(rng: random.Random, data: bytes) -> bytes:
    return _request_line(rng, data, 2, lambda r: r.choice(VERSIONS))


def _host(rng: random.Random, data: bytes) -> bytes:
    lines, rest = _split(data)
    hosts = [i for i, line in enumerate(lines) if line[:5].lower() == b"host:"]
    value = _authority(rng) if rng.random() < 0.7 else b"a" + bytes([rng.choice(BYTES)]) + b"b"
    if hosts and rng.random() < 0.8:
        lines[rng.choice(hosts)] = b"Host: " + value
    else:
        lines.insert(rng.randint(1, len(lines)), b"Host: " + value)
    return _join(lines, rest)


def _header_byte(rng: random.Random, data: bytes) -> bytes:
    """A special byte into a header line's name, around its colon, or into its value."""
    lines, rest = _split(data)
    if len(lines) < 2:
        return data
    i = rng.randrange(1, len(lines))
    line = lines[i]
    colon = line.find(b":")
    where = rng.choice((0, max(colon, 0), max(colon + 1, 0), len(line), rng.randrange(len(line) + 1)))
    lines[i] = line[:where] + bytes([rng.choice(BYTES)]) * rng.randint(1, 2) + line[where:]
    return _join(lines, rest)


def _whitespace(rng: random.Random, data: bytes) -> bytes:
    """Blanks where the grammar has none or one: around the colon, line starts, request-line separators."""
    lines, rest = _split(data)
    i = rng.randrange(len(lines))
    line = lines[i]
    blank = rng.choice((b" ", b"\t", b"  ", b"\x0b", b"\x0c", b" \t"))
    spots = [0, len(line), *[j for j, c in enumerate(line) if c in b": "]]
    j = rng.choice(spots)
    lines[i] = line[:j] + blank + line[j:]
    return _join(lines, rest)


def _obs_fold(rng: random.Random, data: bytes) -> bytes:
    lines, rest = _split(data)
    if len(lines) < 2:
        return data
    i = rng.randrange(1, len(lines))
    fold = rng.choice((b" ", b"\t", b" \t"))
    if rng.random() < 0.5:
        lines[i] = fold + lines[i]  # the line continues the one before
    else:
        name, _, value = lines[i].partition(b":")
        lines[i : i + 1] = [name + b":", fold + value.strip()]
    return _join(lines, rest)


def _framing_header(rng: random.Random, data: bytes) -> bytes:
    """One more (or another) Content-Length / Transfer-Encoding line."""
    lines, rest = _split(data)
    name = rng.choice((b"Content-Length", b"Transfer-Encoding", b"content-length", b"Transfer-encoding"))
    line = name + b": " + rng.choice(FRAMING_VALUES)
    lines.insert(rng.randint(1, len(lines)), line)
    return _join(lines, rest)


def _chunk_line(rng: random.Random, data: bytes) -> bytes:
    """A chunk-size line of the body: an extension, blanks, or another size."""
    lines, rest = _split(data)
    if not rest:
        return data
    body = rest.split(b"\r\n")
    sizes = [i for i, part in enumerate(body) if part[:1] in b"0123456789abcdefABCDEF" and len(part) < 12] or [0]
    i = rng.choice(sizes)
    if rng.random() < 0.6:
        body[i] = body[i] + rng.choice(CHUNK_EXTENSIONS)
    else:
        body[i] = rng.choice((b"3", b"0", b"ff", b"-1", b"0x3", b"3 ", b"", b"00000003", b"fffffffffffffffff"))
    return _join(lines, b"\r\n".join(body))


MUTATIONS: tuple[Callable[[random.Random, bytes], bytes], ...] = (
    _flip, _insert, _delete, _duplicate_line, _absolute_target, _method, _version, _host, _header_byte, _whitespace,
    _obs_fold, _framing_header, _chunk_line,
)  # fmt: skip


def mutate(rng: random.Random, starts: Sequence[bytes]) -> bytes:
    """One to four mutations of one of `starts` (messages: requests, or an upstream's responses)."""
    data = rng.choice(starts)
    for _ in range(rng.randint(1, 4)):
        while not data:  # (a deletion or splice can leave nothing; the starts are never empty)
            data = rng.choice(starts)
        splice = rng.random() < 0.1
        data = _splice(rng, data, rng.choice(starts)) if splice else rng.choice(MUTATIONS)(rng, data)
    return data[:20_000]


def fuzzable(corpus: Sequence[Case]) -> list[Case]:
    """The corpus cases mutants start from: one connection, the default upstream, quick to answer."""
    return [c for c in corpus if not c.upstream and not c.then and len(c.request) < 20_000 and c.deadline < 2]


def mutants(seed: int, corpus: Sequence[Case], count: int | None = None) -> Iterator[Case]:
    """Mutant n of `seed` (n = 0, 1, ...; `count` of them, or without end): a function of (seed, n) alone."""
    starts = [c.request for c in fuzzable(corpus)]
    for n in itertools.count() if count is None else range(count):
        data = mutate(random.Random(f"{seed}:{n}"), starts)
        yield Case(f"fuzz-{seed}-{n}", "fuzz", data, stricter="mutant", deadline=0.8)


#: what an upstream answers that response mutants start from (besides the corpus cases' scripted answers):
#: both framings, trailers, repeated headers, bodiless statuses, HTTP/1.0, a body to the close, an interim 100
RESPONSES = (
    OK_RESPONSE,
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-a: 1\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;e=1\r\nok\r\n0\r\nx-t: 1\r\n\r\n",
    b"HTTP/1.1 404 Not Found\r\ncontent-length: 3\r\nset-cookie: a=1\r\nset-cookie: b=2\r\n\r\nnot",
    b"HTTP/1.1 204 No Content\r\nx-b: 2\r\n\r\n",
    b'HTTP/1.1 304 Not Modified\r\netag: "x"\r\ncontent-length: 5\r\n\r\n',
    b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nx-c: 3\r\n\r\nbody to the close",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
    b"HTTP/1.1 302 Found\r\nlocation: http://a.test/x\r\ncache-control: no-store\r\ncontent-length: 0\r\n\r\n",
)
#: the request every response mutant answers
RESPONSE_MUTANT_REQUEST = b"GET /r HTTP/1.1\r\nHost: a.test\r\n\r\n"


def response_mutants(seed: int, corpus: Sequence[Case], count: int | None = None) -> Iterator[Case]:
    """Mutant n of `seed` of an upstream's answer (the same rules as `mutants`): one GET, the upstream sends the
    mutant and closes; the proxies must agree on what the client gets (`safety_problems`)."""
    # (a corpus case's upstream may send nothing: no mutant starts from an empty answer)
    starts = [*RESPONSES, *(r for c in corpus for r in c.upstream if 0 < len(r) < 20_000)]
    for n in itertools.count() if count is None else range(count):
        data = mutate(random.Random(f"response:{seed}:{n}"), starts)
        yield Case(
            f"fuzz-response-{seed}-{n}", "fuzz", RESPONSE_MUTANT_REQUEST, upstream=(data,), upstream_close=True,
            stricter="mutant", deadline=0.8,
        )  # fmt: skip


#: a maker of mutants: (seed, corpus, count or None for no end) -> cases (`mutants`, `response_mutants`)
MutantSource = Callable[[int, Sequence[Case], "int | None"], Iterator[Case]]


def safety_problems(bed: Bed, case: Case, lane: int) -> list[str]:
    """What the agent did with `case` that breaks a safety rule (forwarding what Envoy refused, disagreeing
    on a forwarded message, sending what the upstream or the client cannot read). The client reads every
    response of a mutant as one to a non-HEAD request, so its reading is not judged when a HEAD is in it."""
    got = bed.run(case, lane)
    head = b"HEAD" in case.request
    answers = bool(case.upstream)  # a response mutant: the client's view is what is judged
    return [
        p
        for pair in case.pairs
        for p in compare(case, pair, got[f"envoy-{pair}"], got[f"agent-{pair}"])
        if "forwarded" in p
        or "differs upstream" in p
        or ("could not read" in p and not (head and "agent's response" in p))
        or (answers and ("from Envoy" in p or "differ" in p) and not _agent_refused(p))
    ]


def _agent_refused(problem: str) -> bool:
    """A response mutant the agent answered 502 where Envoy passed the upstream's answer on: stricter (its
    parser refuses obs-fold and a CR alone, which Envoy's reads), never a safety problem."""
    return "status 502 from the agent" in problem or "got [502" in problem


@dataclass(frozen=True)
class Found:
    case: Case
    problems: list[str]


def run(bed: Bed, cases: Iterator[Case], *, seconds: float | None = None) -> tuple[int, list[Found]]:
    """Every case of `cases` (until `seconds` have passed, when given) through the bed, a lane each;
    (how many ran, the diverging ones)."""
    deadline = None if seconds is None else time.monotonic() + seconds
    found: list[Found] = []
    n = 0
    with concurrent.futures.ThreadPoolExecutor(bed.lanes) as pool:
        while deadline is None or time.monotonic() < deadline:
            batch = list(itertools.islice(cases, bed.lanes))
            if not batch:
                break
            futures = [(case, pool.submit(safety_problems, bed, case, lane)) for lane, case in enumerate(batch)]
            for case, future in futures:
                n += 1
                problems = future.result()
                if problems:
                    found.append(Found(case, problems))
    return n, found

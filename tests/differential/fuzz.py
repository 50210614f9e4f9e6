"""A mutation fuzzer over the differential corpus: byte-level and HTTP-aware mutations of the corpus requests,
each mutant through Envoy and the agent (tests/differential/bed.py), time-boxed. Only the safety rules are
held here (the agent never forwards what Envoy refused, never disagrees on a forwarded message, never sends
what the upstream cannot read, never dies); status-class differences of mutants are expected where the agent is
stricter by design. Used by tests/integration/test_differential_http1.py.
"""

from __future__ import annotations

import concurrent.futures
import random
import time
from collections.abc import Callable, Sequence

from tests.differential.bed import Bed, Case, compare

#: fragments that smuggling and framing bugs are made of
TOKENS = (
    b"\r\n", b"\n", b"\r", b"\x00", b" ", b"\t", b":", b",", b";", b"0\r\n\r\n", b"chunked", b"Transfer-Encoding: ",
    b"Content-Length: ", b"Host: ", b"\r\n\r\n", b"HTTP/1.1", b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", b"\r\n ", b"\x0b",
    b"0", b"ffffffff", b"-1", b"Connection: close\r\n", b"Upgrade: h2c\r\n", b"Expect: 100-continue\r\n", b"\xff",
)  # fmt: skip


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


MUTATIONS: tuple[Callable[[random.Random, bytes], bytes], ...] = (_flip, _insert, _delete, _duplicate_line)


def mutate(rng: random.Random, corpus: Sequence[Case]) -> bytes:
    data = rng.choice(corpus).request
    for _ in range(rng.randint(1, 4)):
        if not data:
            data = rng.choice(corpus).request
        if rng.random() < 0.15:
            data = _splice(rng, data, rng.choice(corpus).request)
        else:
            data = rng.choice(MUTATIONS)(rng, data)
    return data[:20_000]


def run(bed: Bed, corpus: Sequence[Case], rng: random.Random, *, seconds: float) -> list[tuple[Case, list[str]]]:
    """Mutants until `seconds` have passed; the diverging ones (safety rules only) with their problems."""
    seeds = [c for c in corpus if not c.upstream and not c.then and len(c.request) < 20_000 and c.deadline < 2]
    found: list[tuple[Case, list[str]]] = []
    deadline = time.monotonic() + seconds
    n = 0

    def one(case: Case, lane: int) -> tuple[Case, list[str]]:
        got = bed.run(case, lane)
        probs = []
        for pair in case.pairs:
            e, a = got[f"envoy-{pair}"], got[f"agent-{pair}"]
            probs += [
                p
                for p in compare(case, pair, e, a)
                if "forwarded" in p or "differs upstream" in p or "could not read" in p
            ]
        return case, probs

    with concurrent.futures.ThreadPoolExecutor(bed.lanes) as pool:
        while time.monotonic() < deadline:
            batch = []
            for lane in range(bed.lanes):
                n += 1
                case = Case(f"mutant-{n}", "fuzz", mutate(rng, seeds), stricter="mutant", deadline=0.8)
                batch.append(pool.submit(one, case, lane))
            for future in batch:
                case, probs = future.result()
                if probs:
                    found.append((case, probs))
    print(f"fuzz: {n} mutants, {len(found)} divergence(s)")
    return found

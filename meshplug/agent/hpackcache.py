"""HPACK with memory: the `hpack` library's encoder and decoder, answering a header block they have just
produced or read again from a small per-connection cache while the dynamic table has not changed since.

The agent's fallback HTTP/2 codec (`meshplug.agent.h2wire.PyCodec`, without a native build) swaps the `h2`
library's HPACK objects for these. The same client sends the same request headers call after call (all of them
indexed after the first: the same bytes, no table change), an upstream answers with the same response head and
trailers, and the agent sends the same response head within a second (`date` changes once a second): HPACK was a
quarter of the agent's HTTP/2 CPU (bench/h2_vs_envoy.py, profile in the README). Correctness rests on one fact:
decoding (or encoding) is a function of the input and the dynamic table, so a result is reused only when the table
is the one it was computed against (`_Table.changes` counts every insertion, eviction and resize) and computing it
changed nothing. Limits still hold: a block is only cached after it decoded within the current header list and
table size limits, and a cached answer is only reused under the same limits.

`VOLATILE` headers (x-request-id: new on every request) go out as literals never indexed and not
Huffman-coded, so they neither churn the dynamic table nor keep the rest of the block from being reused;
the runs between them are encoded and cached on their own (the encoding of a header list is the
concatenation of its headers' encodings).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from hpack import Decoder, Encoder, HeaderTuple, NeverIndexedHeaderTuple
from hpack.table import HeaderTable

Header = tuple[bytes, bytes]

#: header blocks (and header lists) up to this size are cached, and this many per connection and direction
MAX_CACHED_BLOCK: Final = 2048
MAX_CACHED_BLOCKS: Final = 16
#: request headers whose value is new on every request: never indexed (see the module docstring)
VOLATILE: Final = frozenset({b"x-request-id"})


class _Table(HeaderTable):
    """A dynamic table that counts its changes (insertions with their evictions, resizes)."""

    def __init__(self) -> None:
        super().__init__()
        self.changes = 0

    def add(self, name: bytes, value: bytes) -> None:
        self.changes += 1
        super().add(name, value)

    @property
    def maxsize(self) -> int:
        return self._maxsize

    @maxsize.setter
    def maxsize(self, newmax: int) -> None:
        self.changes += 1
        HeaderTable.maxsize.fset(self, newmax)  # type: ignore[attr-defined]


class CachedDecoder(Decoder):
    """hpack's Decoder; a block read again under the same table and limits is answered from the cache."""

    def __init__(self, max_header_list_size: int) -> None:
        super().__init__(max_header_list_size)
        self.header_table = self.table = _Table()
        self._cache: dict[bytes, tuple[int, int, int, list[HeaderTuple]]] = {}

    def decode(self, data: bytes, raw: bool = False) -> Iterable[HeaderTuple]:
        table = self.table
        cache = self._cache
        if raw and type(data) is bytes:
            hit = cache.get(data)
            if (
                hit is not None
                and hit[0] == table.changes
                and hit[1] == self.max_header_list_size
                and hit[2] == self.max_allowed_table_size
            ):
                return list(hit[3])
            before = table.changes
            headers = list(super().decode(data, raw=True))
            if table.changes == before and len(data) <= MAX_CACHED_BLOCK:
                if len(cache) >= MAX_CACHED_BLOCKS:
                    cache.clear()
                cache[data] = (before, self.max_header_list_size, self.max_allowed_table_size, headers)
            return list(headers)
        return super().decode(data, raw)


class CachedEncoder(Encoder):
    """hpack's Encoder; a run of headers encoded again under the same table comes from the cache; `VOLATILE`
    headers are never indexed."""

    def __init__(self) -> None:
        super().__init__()
        self.header_table = self.table = _Table()
        self._cache: dict[tuple[Header, ...], tuple[int, bytes]] = {}

    def encode(self, headers: Iterable[tuple[bytes, bytes]], huffman: bool = True) -> bytes:  # type: ignore[override]
        out: list[bytes] = []
        run: list[Header] = []
        for header in headers:
            if type(header) is not tuple and not (type(header) is HeaderTuple and header.indexable):
                out.append(self._run(run, huffman))  # a header with its own indexing wish: as hpack does
                run = []
                out.append(super().encode([header], huffman))
            elif header[0] in VOLATILE:
                out.append(self._run(run, huffman))
                run = []
                # raw, not Huffman-coded: a value seen once is not worth the CPU (a few bytes more on the wire)
                out.append(super().encode([NeverIndexedHeaderTuple(header[0], header[1])], huffman=False))
            else:
                run.append((header[0], header[1]))
        out.append(self._run(run, huffman))
        return b"".join(out)

    def _run(self, run: list[Header], huffman: bool) -> bytes:
        """The encoding of indexable headers (from the cache when the table is as it was)."""
        table = self.table
        if not run and not table.resized:
            return b""
        key = tuple(run)
        cache = self._cache
        if not table.resized and huffman:
            hit = cache.get(key)
            if hit is not None and hit[0] == table.changes:
                return hit[1]
        before = table.changes
        encoded = super().encode(run, huffman)
        if table.changes == before and huffman and len(encoded) <= MAX_CACHED_BLOCK:
            if len(cache) >= MAX_CACHED_BLOCKS:
                cache.clear()
            cache[key] = (before, encoded)
        return encoded

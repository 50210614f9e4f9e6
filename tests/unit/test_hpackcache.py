"""meshplug.agent.hpackcache against the hpack library itself: whatever the cache answers, a plain hpack peer
decodes the same headers (and the cached decoder reads what a plain encoder wrote), across table changes,
resizes, volatile headers and the header-list limit."""

from __future__ import annotations

import random

import hpack
import pytest

from meshplug.agent.hpackcache import CachedDecoder, CachedEncoder

pytestmark = pytest.mark.unit

Header = tuple[bytes, bytes]


def _request(rng: random.Random, i: int) -> list[Header]:
    headers = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/svc/%d" % rng.randint(0, 2))]
    headers += [(b":authority", b"app"), (b"content-type", b"application/grpc"), (b"te", b"trailers")]
    if rng.random() < 0.5:
        headers.append((b"x-request-id", b"id-%d" % i))
    if rng.random() < 0.3:
        headers.append((b"x-new-%d" % rng.randint(0, 50), b"v" * rng.randint(0, 300)))
    return headers


def test_cached_encoder_blocks_decode_as_written_by_a_plain_peer() -> None:
    rng = random.Random(7)
    enc, dec = CachedEncoder(), hpack.Decoder()
    for i in range(2000):
        if i in (700, 1400):  # the peer's SETTINGS_HEADER_TABLE_SIZE changed
            enc.header_table_size = 256 if i == 700 else 4096
        headers = _request(rng, i)
        assert dec.decode(enc.encode(headers), raw=True) == headers


def test_a_repeated_header_list_is_served_from_the_cache() -> None:
    enc = CachedEncoder()
    headers = [(b":status", b"200"), (b"content-type", b"application/grpc"), (b"x-bench", b"1")]
    first, second = enc.encode(headers), enc.encode(headers)
    assert first != second  # the first one indexed them
    assert enc.encode(headers) is second  # the same block, from the cache


def test_volatile_headers_are_never_indexed() -> None:
    enc, dec = CachedEncoder(), hpack.Decoder()
    for i in range(3):
        block = enc.encode([(b":method", b"GET"), (b"x-request-id", b"id-%d" % i), (b"x-a", b"1")])
        decoded = dec.decode(block, raw=True)
        assert decoded[1] == (b"x-request-id", b"id-%d" % i)
        assert isinstance(decoded[1], hpack.NeverIndexedHeaderTuple)
    assert all(name != b"x-request-id" for name, _ in enc.table.dynamic_entries)


def test_cached_decoder_reads_what_a_plain_encoder_writes() -> None:
    rng = random.Random(11)
    enc, dec, plain = hpack.Encoder(), CachedDecoder(65536), hpack.Decoder(65536)
    blocks = []
    for i in range(500):
        headers = _request(rng, i)
        block = enc.encode(headers)
        blocks.append(block)
        assert dec.decode(block, raw=True) == plain.decode(block, raw=True) == headers
    enc.header_table_size = 128  # a size update in the next block
    block = enc.encode(_request(rng, 0))
    assert dec.decode(block, raw=True) == plain.decode(block, raw=True)


def test_the_header_list_limit_holds_for_cached_blocks() -> None:
    enc, dec = hpack.Encoder(), CachedDecoder(65536)
    block = enc.encode([(b":method", b"GET"), (b"x-big", b"a" * 1000)])
    dec.decode(block, raw=True)
    block = enc.encode([(b":method", b"GET"), (b"x-big", b"a" * 1000)])  # all indexed now: a cacheable block
    assert len(dec.decode(block, raw=True)) == 2
    dec.max_header_list_size = 500
    with pytest.raises(hpack.OversizedHeaderListError):
        dec.decode(block, raw=True)

"""meshplug.agent.server's pure helpers: request ids, close-delimited responses."""

from __future__ import annotations

import uuid

from meshplug.agent import server


def test_request_ids_are_uuid4_shaped_and_unique() -> None:
    ids = server._RequestIds()
    values = [ids.new() for _ in range(10_000)]
    assert len(set(values)) == len(values)
    for raw in (values[0], values[-1]):
        parsed = uuid.UUID(raw.decode())
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
        assert str(parsed).encode() == raw
    # two processes (two generators) do not share a prefix
    assert server._RequestIds().new()[:24] != values[0][:24]


def test_close_delimited() -> None:
    assert server._close_delimited(b"GET", 200, [])
    assert not server._close_delimited(b"GET", 200, [(b"content-length", b"3")])
    assert not server._close_delimited(b"GET", 200, [(b"transfer-encoding", b"Chunked")])
    assert not server._close_delimited(b"HEAD", 200, [])
    assert not server._close_delimited(b"GET", 204, [])

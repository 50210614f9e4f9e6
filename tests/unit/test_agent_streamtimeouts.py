"""meshplug.agent.streamtimeouts: a stream's duration limit and idle timeout from its route (held to Envoy 1.40 by
tests/integration/test_differential_stream_limits.py; these tables pin the arithmetic and the header forms)."""

from __future__ import annotations

import pytest

from meshplug.agent import config, streamtimeouts

pytestmark = pytest.mark.unit

H = list[tuple[bytes, bytes]]
MSD = config.MaxStreamDuration
OFF = streamtimeouts.OFF
GRPC: H = [(b":path", b"/s/M"), (b"content-type", b"application/grpc")]


@pytest.mark.parametrize(
    ("value", "ms"),
    [
        (b"10S", 10_000), (b"2H", 7_200_000), (b"3M", 180_000), (b"250m", 250), (b"1500u", 2), (b"1u", 1),
        (b"1000000n", 1), (b"1n", 1), (b"0S", 0), (b"99999999m", 99_999_999),
        (b"123456789m", None),  # past 8 digits: not a grpc-timeout
        (b"000000000001S", 1000), (b" 10S", 10_000), (b"+10 S", 10_000),  # as absl::SimpleAtoi reads the number
        (b"10", None), (b"S", None), (b"10s", None), (b"1.5S", None), (b"-1S", None), (b"", None),
    ],
)  # fmt: skip
def test_grpc_timeout_ms(value: bytes, ms: int | None) -> None:
    assert streamtimeouts.grpc_timeout_ms([(b"x-a", b"1"), (b"grpc-timeout", value)]) == ms


def test_grpc_timeout_ms_without_the_header() -> None:
    assert streamtimeouts.grpc_timeout_ms([(b"x-a", b"1")]) is None


@pytest.mark.parametrize(
    ("limit", "hcm_max", "headers", "expected"),
    [
        (None, 0.0, [], (OFF, None)),
        (None, 0.5, [*GRPC, (b"grpc-timeout", b"1S")], (0.5, None)),  # no route limit: the HCM's, header as is
        (MSD(), 0.5, [], (0.5, None)),
        (MSD(), 0.0, [], (OFF, None)),
        (MSD(max_stream_duration_s=1.0), 0.5, [], (1.0, None)),
        (MSD(max_stream_duration_s=0.0), 0.5, [], (OFF, None)),
        (MSD(max_stream_duration_s=0.0), 0.5, GRPC, (OFF, b"")),  # the HCM's timer stops, the header goes
        (MSD(max_stream_duration_s=0.0), 0.0, [*GRPC, (b"grpc-timeout", b"1S")], (OFF, None)),
        (MSD(max_stream_duration_s=0.3), 0.0, [*GRPC, (b"grpc-timeout", b"10S")], (0.3, b"300m")),
        (MSD(max_stream_duration_s=0.3, grpc_timeout_header_max_s=2.0), 0.0, GRPC, (0.3, b"300m")),
        (MSD(grpc_timeout_header_max_s=0.4), 0.0, [*GRPC, (b"grpc-timeout", b"10S")], (0.4, b"400m")),
        (MSD(grpc_timeout_header_max_s=0.4), 0.0, [(b"grpc-timeout", b"10S")], (0.4, None)),  # not gRPC
        (MSD(grpc_timeout_header_max_s=0.4), 0.0, [(b"grpc-timeout", b"200m")], (0.2, None)),
        (MSD(grpc_timeout_header_max_s=0.4), 0.0, [(b"grpc-timeout", b"2s")], (OFF, None)),  # invalid: none
        (MSD(grpc_timeout_header_max_s=0.0), 0.0, [*GRPC, (b"grpc-timeout", b"10S")], (10.0, b"10000m")),
        (MSD(grpc_timeout_header_max_s=0.0), 0.0, [*GRPC, (b"grpc-timeout", b"0S")], (0.0, b"0m")),
        (MSD(grpc_timeout_header_max_s=0.0, grpc_timeout_header_offset_s=0.2), 0.0,
         [*GRPC, (b"grpc-timeout", b"1S")], (0.8, b"800m")),
        (MSD(grpc_timeout_header_max_s=0.0, grpc_timeout_header_offset_s=0.2), 0.0,
         [*GRPC, (b"grpc-timeout", b"100m")], (0.0, b"0m")),  # the offset eats it all: ends at once
    ],
)  # fmt: skip
def test_route_duration(limit: config.MaxStreamDuration | None, hcm_max: float, headers: H, expected: object) -> None:
    route = config.Route(match=config.RouteMatch(prefix="/"), cluster="c", max_stream_duration=limit)
    assert streamtimeouts.route_duration(route, hcm_max, headers) == expected


@pytest.mark.parametrize(
    ("headers", "value", "expected"),
    [
        ([(b"a", b"1"), (b"grpc-timeout", b"1S"), (b"b", b"2")], b"300m",
         [(b"a", b"1"), (b"grpc-timeout", b"300m"), (b"b", b"2")]),
        ([(b"a", b"1")], b"300m", [(b"a", b"1"), (b"grpc-timeout", b"300m")]),
        ([(b"grpc-timeout", b"1S"), (b"a", b"1"), (b"grpc-timeout", b"2S")], b"", [(b"a", b"1")]),
    ],
)  # fmt: skip
def test_with_grpc_timeout(headers: H, value: bytes, expected: H) -> None:
    headers = list(headers)
    streamtimeouts.with_grpc_timeout(headers, value)
    assert headers == expected


@pytest.mark.parametrize(
    ("route_idle", "hcm_idle", "expected"), [(None, 300.0, 300.0), (0.0, 300.0, 0.0), (0.5, 5.0, 0.5)]
)
def test_route_idle(route_idle: float | None, hcm_idle: float, expected: float) -> None:
    route = config.Route(match=config.RouteMatch(prefix="/"), cluster="c", idle_timeout_s=route_idle)
    assert streamtimeouts.route_idle(route, hcm_idle) == expected

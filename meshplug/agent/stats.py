"""The proxy's counters (Envoy-style names: downstream_rq_2xx, upstream_cx_connect_fail, ...).

One `Stats` per `meshplug.agent.server.Proxy`, incremented by the data path modules and rendered by the admin
endpoint (`meshplug.agent.runtime` -> `meshplug.agent.admin.prometheus`).
"""

from __future__ import annotations

from meshplug import limits


class Stats:
    """Proxy counters; rendered by the admin endpoint. Plain ints: the data path only increments."""

    NAMES = (
        "downstream_cx_active",
        "downstream_cx_http2_total",
        "downstream_cx_total",
        "downstream_cx_upgrades_total",
        "downstream_rq_1xx",
        "downstream_rq_2xx",
        "downstream_rq_3xx",
        "downstream_rq_4xx",
        "downstream_rq_5xx",
        "downstream_rq_active",
        "downstream_rq_header_timeout",
        "downstream_rq_idle_timeout",
        "downstream_rq_local_reply",
        "downstream_rq_max_duration_reached",
        "downstream_rq_rx_reset",
        "downstream_rq_timeout",
        "downstream_rq_too_many_premature_resets",
        "downstream_rq_total",
        "http2_inbound_empty_frames_flood",
        "http2_inbound_priority_frames_flood",
        "http2_inbound_window_update_frames_flood",
        "http2_outbound_control_flood",
        "http2_outbound_flood",
        "upstream_cx_active",
        "upstream_cx_connect_fail",
        "upstream_cx_total",
        "upstream_rq_reset",
        "upstream_rq_retry_stale",
        "upstream_rq_timeout",
        "upstream_rq_total",
    )

    def __init__(self) -> None:
        self.downstream_cx_active = 0
        self.downstream_cx_total = 0
        self.downstream_cx_http2_total = 0
        self.downstream_cx_upgrades_total = 0
        self.downstream_rq_rx_reset = 0
        #: requests ended by the HCM's own timers (Envoy's names): request_timeout, request_headers_timeout,
        #: stream_idle_timeout (the HCM's or a route's idle_timeout), max_stream_duration (the HCM's or a route's)
        self.downstream_rq_timeout = 0
        self.downstream_rq_header_timeout = 0
        self.downstream_rq_idle_timeout = 0
        self.downstream_rq_max_duration_reached = 0
        self.downstream_rq_too_many_premature_resets = 0
        self.downstream_rq_1xx = 0
        self.downstream_rq_2xx = 0
        self.downstream_rq_3xx = 0
        self.downstream_rq_4xx = 0
        self.downstream_rq_5xx = 0
        self.downstream_rq_active = 0
        self.downstream_rq_local_reply = 0
        self.downstream_rq_total = 0
        self.http2_inbound_empty_frames_flood = 0
        self.http2_inbound_priority_frames_flood = 0
        self.http2_inbound_window_update_frames_flood = 0
        self.http2_outbound_flood = 0
        self.http2_outbound_control_flood = 0
        self.upstream_cx_active = 0
        self.upstream_cx_connect_fail = 0
        self.upstream_cx_total = 0
        self.upstream_rq_reset = 0
        self.upstream_rq_retry_stale = 0
        self.upstream_rq_timeout = 0
        self.upstream_rq_total = 0

    def as_dict(self) -> dict[str, int]:
        return {name: int(getattr(self, name)) for name in self.NAMES}

    def count_status(self, status: int) -> None:
        klass = status // 100
        if klass == 2:
            self.downstream_rq_2xx += 1
        elif klass == 5:
            self.downstream_rq_5xx += 1
        elif klass == 4:
            self.downstream_rq_4xx += 1
        elif klass == 3:
            self.downstream_rq_3xx += 1
        else:
            self.downstream_rq_1xx += 1

    def count_h2_flood(self, code: int) -> None:
        """An HTTP/2 connection closed for a flood; `code`: the limit it passed (limits.H2_FLOOD_*: the codecs'
        FloodError.code, or the outbound check's), counted as Envoy's http2.* flood counter of that limit."""
        if code == limits.H2_FLOOD_OUTBOUND_CONTROL:
            self.http2_outbound_control_flood += 1
        elif code == limits.H2_FLOOD_OUTBOUND:
            self.http2_outbound_flood += 1
        elif code == limits.H2_FLOOD_PRIORITY:
            self.http2_inbound_priority_frames_flood += 1
        elif code == limits.H2_FLOOD_WINDOW_UPDATE:
            self.http2_inbound_window_update_frames_flood += 1
        else:
            self.http2_inbound_empty_frames_flood += 1

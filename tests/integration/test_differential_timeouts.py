"""Requests the proxy's own timeouts end (the request headers timeout, the stream idle timeout, the stream duration
limit): what the client reads and what a plugin reads of response.flags and response.code_details per callback,
Envoy 1.40 and the agent (its own config's `http` options) on the same requests, compared in the same run.

Envoy's HCM answers all three 408; the stream idle timeout flags the stream SI (StreamIdleTimeout, 0x10000) before
its reply -- the plugins' response callbacks already read it when the head had reached them, only their log when it
had not --, the request headers timeout and max_stream_duration ("downstream duration timeout",
max_duration_timeout) set no flag. The plugin is the corpus module c/propdump
(tests/differential/propdump.py). Each timeout has its own listener (Envoy) / agent (the agent's `http` options
are its listeners' all), 0.5 s, the others left at their defaults.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.corpus import modules as corpus_modules
from tests.differential import bed as diff_bed
from tests.differential import propdump
from tests.differential.propdump import Proxy
from tests.testbed import agent as tb_agent
from tests.testbed import envoy as tb_envoy
from tests.testbed import h2raw, procs, upstream

pytestmark = pytest.mark.integration

TIMEOUT_S = 0.5
#: per timeout: Envoy's HCM field (a dotted path inside the HCM), the agent's `http` option
TIMEOUTS: dict[str, tuple[str, str]] = {
    "headers": ("request_headers_timeout", "request_headers_timeout_s"),
    "idle": ("stream_idle_timeout", "stream_idle_timeout_s"),
    "duration": ("common_http_protocol_options.max_stream_duration", "max_stream_duration_s"),
}


@pytest.fixture(scope="module")
def proxies(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Proxy]]:
    """Per "<plane>/<timeout>": a proxy with propdump whose only shortened timeout is that one."""
    tmp: Path = tmp_path_factory.mktemp("timeouts")
    logs = tmp / "logs"
    started: list[Any] = []
    try:
        echo = upstream.start_service("echo", log_dir=logs)
        started.append(echo)
        out: dict[str, Proxy] = {}
        admin, listeners = procs.free_port(), []
        envoy_ports = {name: procs.free_port() for name in TIMEOUTS}
        for name, (field, _) in TIMEOUTS.items():
            lst = tb_envoy.http_listener(name, envoy_ports[name], cluster="echo", http_filters=[propdump.wasm_filter()])
            hcm = lst["filter_chains"][0]["filters"][0]["typed_config"]
            *outer, last = field.split(".")
            holder = hcm
            for key in outer:
                holder = holder.setdefault(key, {})
            holder[last] = f"{TIMEOUT_S}s"
            hcm["server_name"] = "istio-envoy"  # the agent's native default
            listeners.append(lst)
        config = tb_envoy.bootstrap(admin, listeners, [tb_envoy.static_cluster("echo", echo.port)])
        envoy = tb_envoy.start_envoy(tb_envoy.write_config(config, tmp / "envoy"), admin_port=admin, log_dir=logs)
        started.append(envoy)
        for name, port in envoy_ports.items():
            out[f"envoy/{name}"] = Proxy(port, envoy.plugin_logs)
        plugin = {
            "name": "propdump",
            "root_id": "propdump-root",
            "module": {"file": str(corpus_modules.module("c/propdump").path)},
            "configuration": "\n".join(propdump.PROPERTIES),
        }
        for name, (_, option) in TIMEOUTS.items():
            raw = tb_agent.base_config(
                port=procs.free_port(), admin_port=procs.free_port(), clusters={"echo": echo.port},
                listener_cluster="echo", plugins=[plugin],
            )  # fmt: skip
            raw["http"] = {option: TIMEOUT_S}
            agent = tb_agent.start_agent(raw, work_dir=tmp / f"agent-{name}", log_dir=logs, name=f"agent-{name}")
            started.append(agent)
            out[f"agent/{name}"] = Proxy(agent.port, functools.partial(_agent_logs, agent))
        yield out
    finally:
        for item in reversed(started):
            item.stop()


def _agent_logs(agent: tb_agent.Agent) -> list[tuple[str, str]]:
    """The agent's plugin log lines (admin /plugin_logs) as Envoy's `plugin_logs` gives them: (level, text)."""
    return [(str(r["level"]), str(r["message"])) for r in agent.admin_json("/plugin_logs")]


def _h1(request: bytes) -> Callable[[int], object]:
    """Send `request` (which never ends), read what comes back: the replies (status line, headers, body)."""

    def run(port: int) -> object:
        got = diff_bed.converse(port, request, head=False, deadline=3.0)
        return tuple(diff_bed.local_reply(r) for r in got.responses)

    return run


def _h2(headers: tuple[h2raw.Header, ...], body: bytes | None) -> Callable[[int], object]:
    """An HTTP/2 request that never ends (HEADERS without END_STREAM, then `body` if given): its outcome."""

    def case(client: h2raw.RawClient) -> None:
        client.h2.send_headers(1, list(headers), end_stream=False)
        if body is not None:
            client.h2.send_data(1, body, end_stream=False)
        client.flush()

    def run(port: int) -> object:
        out = h2raw.run(port, case, until=lambda o: 1 in o.ended or 1 in o.resets, timeout=3.0)
        return out.kind(1), out.bodies.get(1, b"")

    return run


_POST = ((b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/ok"), (b":authority", b"x"))

# name, the timeout that ends it, how the client sends (and reads) the request that never ends
CASES: list[tuple[str, str, Callable[[int], object]]] = [
    ("head never ends", "headers", _h1(b"GET /ok HTTP/1.1\r\nhost: x\r\n")),
    ("head never ends, stream idle", "idle", _h1(b"GET /ok HTTP/1.1\r\nhost: x\r\n")),
    ("body never ends, stream idle", "idle", _h1(b"POST /ok HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nab")),
    ("chunked body never ends, stream idle", "idle",
     _h1(b"POST /ok HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n2\r\nab\r\n")),
    ("HTTP/2 request never ends, stream idle", "idle", _h2(_POST, None)),
    ("HTTP/2 body never ends, stream idle", "idle", _h2(_POST, b"ab")),
    ("head never ends, duration", "duration", _h1(b"GET /ok HTTP/1.1\r\nhost: x\r\n")),
    ("body never ends, duration", "duration", _h1(b"POST /ok HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nab")),
    ("HTTP/2 body never ends, duration", "duration", _h2(_POST, b"ab")),
]  # fmt: skip


@pytest.mark.parametrize(("name", "timeout", "run"), CASES, ids=[c[0] for c in CASES])
def test_timeouts_answer_and_flag_as_envoy(
    proxies: dict[str, Proxy], name: str, timeout: str, run: Callable[[int], object]
) -> None:
    got = {}
    for plane in ("envoy", "agent"):
        proxy = proxies[f"{plane}/{timeout}"]
        got[plane] = propdump.props_after(proxy, lambda p=proxy: run(p.port))  # type: ignore[misc]
    assert "lg" in got["envoy"][1], got  # Envoy's plugin logged the stream: there is something to compare
    assert got["agent"] == got["envoy"]

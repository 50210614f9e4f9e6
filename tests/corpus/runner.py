"""Run one behaviour spec against one data plane: `run_spec(spec, plane, log_dir=...)`.

The runner owns everything that is not the data plane: it starts the test-bed services a spec names
(tests/testbed/upstream.py), resolves the built modules (tests/corpus/modules.py), asks the plane to start
the chain, sends each case's request (or TCP bytes), and checks status, headers, body, what the upstream
saw, plugin logs and metrics. A data plane is anything implementing `DataPlane` (tests/corpus/planes/):
Envoy today, meshplug's agent later, run with the very same specs. Called by tests/integration/test_corpus_*.py.
Failures of all cases are collected and raised together as one `SpecFailure`.
"""

from __future__ import annotations

import dataclasses
import http.client
import re
import socket
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from tests.corpus import modules as corpus_modules
from tests.corpus import spec as S
from tests.testbed import grpcpeer, upstream

#: how long a case waits for expected logs or metrics to show up after its request
SETTLE_S = 15.0
REQUEST_TIMEOUT_S = 20.0

LogRecord = tuple[str, str]  # (level as in spec.LOG_LEVELS, message)


class SpecFailure(AssertionError):
    """Some cases of a spec did not behave as the spec says; the message lists every mismatch."""


class PlaneStartError(RuntimeError):
    """The data plane refused to start the chain (e.g. a plugin's on_configure returned false)."""

    def __init__(self, message: str, logs: Sequence[LogRecord] = ()) -> None:
        super().__init__(message)
        self.logs = list(logs)


@dataclass(frozen=True)
class Endpoint:
    """A service a cluster points at: the plane routes cluster `name` to 127.0.0.1:`port`."""

    name: str
    kind: str
    port: int


class RunningPlane(Protocol):
    """A started chain: a listener port (HTTP or TCP by spec type), its plugins' logs and metrics."""

    @property
    def port(self) -> int: ...

    def logs(self) -> list[LogRecord]:
        """Every plugin log record since start, in order."""
        ...

    def metrics(self) -> dict[str, int | None]:
        """Plugin-defined metrics by the name the plugin gave (histograms: None)."""
        ...

    def stop(self) -> None: ...


class DataPlane(Protocol):
    name: str

    def start(
        self, spec: S.Spec, modules: Mapping[str, Path], services: Mapping[str, Endpoint], log_dir: Path
    ) -> RunningPlane:
        """Start spec.plugins (chain order) routing to services["upstream"]; raise PlaneStartError if refused."""
        ...


@dataclass
class RunReport:
    spec: str
    plane: str
    cases: list[str] = field(default_factory=list)
    start_failures: list[str] = field(default_factory=list)


# --- matching helpers ----------------------------------------------------------------------------


def log_matches(expect: S.LogExpect, record: LogRecord) -> bool:
    return (expect.level is None or expect.level == record[0]) and expect.contains in record[1]


def missing_logs(expects: Sequence[S.LogExpect], records: Sequence[LogRecord]) -> list[S.LogExpect]:
    return [e for e in expects if not any(log_matches(e, r) for r in records)]


def _poll(check: Callable[[], list[str]], timeout: float) -> list[str]:
    """Re-run `check` (returns problems) until it returns none or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        problems = check()
        if not problems or time.monotonic() >= deadline:
            return problems
        time.sleep(0.05)


def _show(data: bytes, limit: int = 300) -> str:
    text = repr(data[:limit])
    return text + (f"... ({len(data)} bytes)" if len(data) > limit else "")


def _check_logs(plane: RunningPlane, expects: Sequence[S.LogExpect], since: int, timeout: float) -> list[str]:
    def check() -> list[str]:
        return [
            f"no log line {'[' + e.level + '] ' if e.level else ''}containing {e.contains!r}"
            for e in missing_logs(expects, plane.logs()[since:])
        ]

    problems = _poll(check, timeout) if expects else []
    if problems:
        tail = plane.logs()[since:][-15:]
        problems.append(f"plugin logs seen: {tail}")
    return problems


def _check_metrics(plane: RunningPlane, expects: Sequence[S.MetricExpect], timeout: float) -> list[str]:
    def check() -> list[str]:
        have = plane.metrics()
        out: list[str] = []
        for m in expects:
            if m.name not in have:
                out.append(f"metric {m.name!r} missing (have {sorted(have)[:20]})")
            elif m.value is not None and have[m.name] != m.value:
                out.append(f"metric {m.name!r} is {have[m.name]}, expected {m.value}")
        return out

    return _poll(check, timeout) if expects else []


def _headers_problems(
    where: str, have: Sequence[tuple[str, str]], want: Sequence[tuple[str, str]], absent: Sequence[str]
) -> list[str]:
    out: list[str] = []
    for name, value in want:
        values = [v for k, v in have if k == name]
        if value not in values:
            out.append(f"{where} header {name!r}: expected {value!r}, got {values or 'nothing'}")
    for name in absent:
        values = [v for k, v in have if k == name]
        if values:
            out.append(f"{where} header {name!r} should be absent, got {values}")
    return out


def _body_problems(where: str, have: bytes, body: bytes | None, contains: bytes | None) -> list[str]:
    if body is not None and have != body:
        return [f"{where} body: expected {_show(body)}, got {_show(have)}"]
    if contains is not None and contains not in have:
        return [f"{where} body: expected to contain {_show(contains)}, got {_show(have)}"]
    return []


# --- sending -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HttpResult:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


def send_http(port: int, request: S.Request, extra_headers: Sequence[tuple[str, str]] = ()) -> HttpResult:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_S)
    try:
        headers = dict(request.headers)
        headers.update(extra_headers)
        chunks = request.body_chunks
        if len(chunks) > 1:
            conn.request(request.method, request.path, body=iter(chunks), headers=headers, encode_chunked=True)
        else:
            conn.request(request.method, request.path, body=chunks[0] if chunks else None, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        return HttpResult(resp.status, tuple((k.lower(), v) for k, v in resp.getheaders()), body)
    finally:
        conn.close()


def send_tcp(port: int, chunks: Sequence[bytes], timeout: float = REQUEST_TIMEOUT_S) -> bytes:
    """Send `chunks` one write each, half-close, read until the other side closes."""
    received = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        for chunk in chunks:
            sock.sendall(chunk)
        sock.shutdown(socket.SHUT_WR)
        while True:
            data = sock.recv(65536)
            if not data:
                break
            received += data
    return bytes(received)


# --- the run -------------------------------------------------------------------------------------


def _wait(plane: RunningPlane, wait_for: S.WaitFor | None) -> list[str]:
    if wait_for is None:
        return []
    return ["wait_for: " + p for p in _check_logs(plane, wait_for.logs, 0, wait_for.timeout_s)]


def _run_grpc_case(case: S.HttpCase, call: S.GrpcRequest, plane: RunningPlane) -> list[str]:
    since = len(plane.logs())
    out = grpcpeer.call(plane.port, call.method, call.messages, metadata=call.metadata, timeout=call.timeout_s)
    problems: list[str] = []
    g = case.expect.grpc
    if g is not None:
        if g.status is not None and out.code.value[0] != g.status:
            problems.append(
                f"grpc status: expected {g.status}, got {out.code.value[0]} ({out.code.name}: {out.details!r})"
            )
        if g.message is not None and out.details != g.message:
            problems.append(f"grpc message: expected {g.message!r}, got {out.details!r}")
        if g.messages is not None and tuple(out.messages) != g.messages:
            problems.append(f"grpc messages: expected {list(g.messages)}, got {out.messages}")
        problems += _headers_problems("initial metadata", out.initial, g.initial_metadata, ())
        problems += _headers_problems("trailing metadata", out.trailing, g.trailing_metadata, ())
        problems += _headers_problems("metadata", out.initial + out.trailing, (), g.absent_metadata)
    problems += _check_logs(plane, case.expect.logs, since, SETTLE_S)
    problems += _check_metrics(plane, case.expect.metrics, SETTLE_S)
    return problems


def _run_http_case(case: S.HttpCase, plane: RunningPlane, echo: upstream.Service) -> list[str]:  # noqa: PLR0912 - one branch per expectation of the spec format
    waited = _wait(plane, case.wait_for)
    if waited:
        return waited
    if case.grpc is not None:
        return _run_grpc_case(case, case.grpc, plane)
    case_id = f"c-{uuid.uuid4().hex[:12]}"
    extra = [(upstream.CASE_HEADER, case_id)]
    if case.upstream_response is not None:
        r = case.upstream_response
        told = upstream.encode_response(r.status, list(r.headers), list(r.body_chunks))
        extra.append((upstream.RESPOND_HEADER, told))
    since = len(plane.logs())
    result = send_http(plane.port, case.request, extra)
    e = case.expect
    problems = []
    if e.status is not None and result.status != e.status:
        problems.append(f"status: expected {e.status}, got {result.status} (body {_show(result.body, 200)})")
    problems += _headers_problems("response", result.headers, e.headers, e.absent_headers)
    for name, pattern in e.headers_match:
        values = [v for k, v in result.headers if k == name]
        if not any(re.fullmatch(pattern, v) for v in values):
            problems.append(
                f"response header {name!r}: expected a value matching {pattern!r}, got {values or 'nothing'}"
            )
    problems += _body_problems("response", result.body, e.body, e.body_contains)
    if e.upstream_reached is not None:
        seen = echo.seen(case_id)
        if e.upstream_reached is False and seen is not None:
            problems.append(f"upstream should not be reached, but saw {seen['method']} {seen['path']}")
        elif e.upstream is not None:
            if seen is None:
                problems.append("upstream was not reached")
            else:
                u = e.upstream
                if u.method is not None and seen["method"] != u.method:
                    problems.append(f"upstream method: expected {u.method}, got {seen['method']}")
                if u.path is not None and seen["path"] != u.path:
                    problems.append(f"upstream path: expected {u.path!r}, got {seen['path']!r}")
                problems += _headers_problems("upstream", seen["headers"], u.headers, u.absent_headers)
                problems += _body_problems("upstream", seen["body"], u.body, u.body_contains)
    problems += _check_logs(plane, e.logs, since, SETTLE_S)
    problems += _check_metrics(plane, e.metrics, SETTLE_S)
    return problems


def _run_network_case(case: S.NetworkCase, plane: RunningPlane) -> list[str]:
    waited = _wait(plane, case.wait_for)
    if waited:
        return waited
    since = len(plane.logs())
    received = send_tcp(plane.port, case.send)
    e = case.expect
    problems = _body_problems("received", received, e.received, e.received_contains)
    problems += _check_logs(plane, e.logs, since, SETTLE_S)
    problems += _check_metrics(plane, e.metrics, SETTLE_S)
    return problems


def resolve_modules(spec: S.Spec) -> dict[str, Path]:
    built = corpus_modules.all_modules()
    missing = [k for k in spec.modules if k not in built]
    if missing:
        raise FileNotFoundError(f"{spec.key}: modules {missing} not built; run `make plugins`")
    return {k: built[k].path for k in spec.modules}


def _start_services(spec: S.Spec, log_dir: Path) -> dict[str, upstream.Service]:
    services: dict[str, upstream.Service] = {}
    wanted = [(S.UPSTREAM_CLUSTER, spec.upstream if spec.type == "http" else "tcp_echo")]
    wanted += [(c.name, c.service) for c in spec.clusters]
    try:
        for name, kind in wanted:
            services[name] = upstream.start_service(kind, log_dir=log_dir, name=f"{name}-{kind}")
    except BaseException:
        for svc in services.values():
            svc.stop()
        raise
    return services


def _start_failure(
    spec: S.Spec, failure: S.StartFailure, plane: DataPlane, *, modules: Mapping[str, Path],
    endpoints: Mapping[str, Endpoint], echo: upstream.Service, log_dir: Path,
) -> list[str]:  # fmt: skip
    plugins = list(spec.plugins)
    if failure.lua is not None:
        plugins[failure.plugin] = dataclasses.replace(plugins[failure.plugin], lua=failure.lua)
    else:
        plugins[failure.plugin] = dataclasses.replace(plugins[failure.plugin], configuration=failure.configuration)
    bad = dataclasses.replace(spec, plugins=tuple(plugins))
    try:
        running = plane.start(bad, modules, endpoints, log_dir / f"start-failure-{failure.name.replace(' ', '_')}")
    except PlaneStartError as exc:
        missing = missing_logs(failure.logs, exc.logs)
        refusal = [f"no log containing {m.contains!r} (logs: {exc.logs[-10:]})" for m in missing]
        if failure.error is not None and failure.error not in str(exc):
            refusal.append(f"the refusal does not say {failure.error!r}: {str(exc)[-1500:]}")
        return refusal
    if failure.lua is not None:  # a script that does not load is refused outright: no plane may start with it
        running.stop()
        return ["the plane started with a script it should have refused"]
    # the plane started: then the refused plugin must fail requests closed, without reaching the upstream
    try:
        problems: list[str] = []
        if spec.type == "http":
            case_id = f"f-{uuid.uuid4().hex[:12]}"
            result = send_http(running.port, S.Request("GET", "/", (), ()), [(upstream.CASE_HEADER, case_id)])
            if result.status < 500:
                problems.append(f"plane started and answered {result.status}; expected a refused plugin (5xx)")
            if echo.seen(case_id) is not None:
                problems.append("plane started and the request reached the upstream through a refused plugin")
        problems += _check_logs(running, failure.logs, 0, SETTLE_S)
        return problems
    finally:
        running.stop()


def run_spec(spec: S.Spec, plane: DataPlane, *, log_dir: Path, modules: Mapping[str, Path] | None = None) -> RunReport:
    """Run every case and start failure of `spec` on `plane`; raise SpecFailure listing all mismatches."""
    log_dir.mkdir(parents=True, exist_ok=True)
    modules = dict(modules) if modules is not None else resolve_modules(spec)
    report = RunReport(spec=spec.key, plane=plane.name)
    failures: list[str] = []
    services = _start_services(spec, log_dir)
    try:
        endpoints = {name: Endpoint(name, svc.kind, svc.port) for name, svc in services.items()}
        echo = services[S.UPSTREAM_CLUSTER]
        try:
            running = plane.start(spec, modules, endpoints, log_dir / "plane")
        except PlaneStartError as exc:
            raise SpecFailure(f"{spec.key} on {plane.name}: the chain did not start: {exc}") from None
        try:
            problems = _check_logs(running, spec.start_logs, 0, SETTLE_S)
            failures += [f"start: {p}" for p in problems]
            for http_case in spec.http_cases:
                problems = _run_http_case(http_case, running, echo)
                failures += [f"case {http_case.name!r}: {p}" for p in problems]
                report.cases.append(http_case.name)
            for net_case in spec.network_cases:
                problems = _run_network_case(net_case, running)
                failures += [f"case {net_case.name!r}: {p}" for p in problems]
                report.cases.append(net_case.name)
        finally:
            running.stop()
        for failure in spec.start_failures:
            problems = _start_failure(
                spec, failure, plane, modules=modules, endpoints=endpoints, echo=echo, log_dir=log_dir
            )
            failures += [f"start failure {failure.name!r}: {p}" for p in problems]
            report.start_failures.append(failure.name)
    finally:
        for svc in services.values():
            svc.stop()
    if failures:
        raise SpecFailure(f"{spec.key} on {plane.name}: {len(failures)} problem(s):\n  " + "\n  ".join(failures))
    return report

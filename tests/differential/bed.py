"""The differential test bed: Envoy 1.40 and meshplug's agent side by side, same plugins, same scripted upstream.

Four targets, each with `lanes` listeners so that cases run in parallel (one case per lane at a time):

* ``envoy-plain`` / ``agent-plain``: no plugin (the agent's fast path, `Exchange`);
* ``envoy-filtered`` / ``agent-filtered``: the same chain of two corpus plugins: rust/deny_path (403 for
  paths under /admin) then rust/header_rules (adds a request and a response header). Envoy runs them on V8.

Every listener has an upstream port of its own on one `Recorder`, so what each proxy forwarded is recorded
apart (method, target, headers, body, message boundaries, as a plain HTTP/1.1 peer reads them) and answered
as the case scripts it (default: 200 "ok"). A `Case` is raw bytes for one client connection (and optionally a
second connection afterwards, `then`); `run` sends them to all four targets and `compare` holds the agent to
Envoy: it may never forward what Envoy refused nor disagree on where a message ends, and its client must see
the same status classes and framing, unless the case marks the agent `stricter` by design (it then may
refuse what Envoy forwards, never the reverse).

Both proxies get the same limits and timeouts (Envoy's defaults, stream idle timeout shortened to
`STREAM_IDLE_S` for both so that timeout cases end quickly) and the same server_name (Istio's sidecar value, the
agent's native default). Beyond framing, `compare` holds the agent to Envoy on every request header the upstream
got (x-request-id by presence), the headers of a response from the upstream (times by presence), the server
header of a local reply, and a connection Envoy keeps open.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import queue
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.corpus import modules
from tests.differential import messages
from tests.testbed import agent as tb_agent
from tests.testbed import envoy as tb_envoy
from tests.testbed import procs

#: both proxies' stream idle timeout in the bed (Envoy's default is 5 min; the agent's follows it)
STREAM_IDLE_S = 2.0
#: how long a client waits for more after a complete response before it calls the exchange finished
QUIET_S = 0.25
OK_RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok"
PAIRS = ("plain", "filtered")
TARGETS = tuple(f"{proxy}-{pair}" for pair in PAIRS for proxy in ("envoy", "agent"))
PLUGINS = (
    ("deny", "rust/deny_path", {"prefixes": ["/admin"]}),
    ("rules", "rust/header_rules", {"request": {"add": {"x-diff": "req"}}, "response": {"add": {"x-diff": "resp"}}}),
)
#: request headers that the proxies add or frame in their own way: not compared (x-request-id: its presence is)
IGNORED_HEADERS = frozenset({b"content-length", b"transfer-encoding"})
#: response headers whose value is the proxy's own (a time): only their presence is compared; framing headers not
TIMED_HEADERS = frozenset({b"date", b"x-envoy-upstream-service-time", b"x-request-id"})
FRAMING_HEADERS = frozenset({b"content-length", b"transfer-encoding", b"connection", b"keep-alive"})
#: the HCM's server_name both proxies run with: Istio's sidecar inbound value, the agent's native default
SERVER_NAME = "istio-envoy"


@dataclass(frozen=True)
class Case:
    """One differential case. `request`: the bytes of one client connection, sent in one write; `upstream`:
    the raw responses the upstream gives, one per request it reads (then the default); `then`: a second
    client connection's bytes, sent when the first is done; `stricter`: why the agent may refuse what Envoy
    forwards; `head`: the client's requests are HEAD (responses without body)."""

    name: str
    family: str
    request: bytes
    upstream: tuple[bytes, ...] = ()
    upstream_close: bool = False
    then: bytes = b""
    stricter: str = ""
    #: a documented difference in what the first client sees (the upstream and second-client checks still hold)
    divergence: str = ""
    #: a documented difference in the bytes of a reply both proxies give the same status (why it is left)
    reply_differs: str = ""
    head: bool = False
    deadline: float = 1.5
    pairs: tuple[str, ...] = PAIRS


# --- the upstream ------------------------------------------------------------------------------------


@dataclass
class Seen:
    """What one upstream port received during a case."""

    messages: list[messages.Message] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    connections: int = 0


class Recorder:
    """Upstream ports on 127.0.0.1 that read requests as a plain peer does, record them per case and answer as
    the case scripts it. One thread per connection; `begin(key, case)` / `end(key)` bracket a case."""

    def __init__(self, keys: Sequence[str]) -> None:
        self._lock = threading.Lock()
        self._case: dict[str, Case | None] = dict.fromkeys(keys)
        self._seen: dict[str, Seen] = {k: Seen() for k in keys}
        self._socks = {k: socket.create_server(("127.0.0.1", 0)) for k in keys}
        self.ports = {k: int(s.getsockname()[1]) for k, s in self._socks.items()}
        self._conns: set[socket.socket] = set()
        for key, sock in self._socks.items():
            threading.Thread(target=self._accept, args=(key, sock), daemon=True).start()

    def begin(self, key: str, case: Case) -> None:
        with self._lock:
            self._case[key] = case
            self._seen[key] = Seen()

    def end(self, key: str) -> Seen:
        with self._lock:
            self._case[key] = None
            return self._seen[key]

    def close(self) -> None:
        for sock in self._socks.values():
            sock.close()
        with self._lock:
            for conn in list(self._conns):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()

    def _accept(self, key: str, sock: socket.socket) -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            with self._lock:
                self._conns.add(conn)
                self._seen[key].connections += 1
            threading.Thread(target=self._serve, args=(key, conn), daemon=True).start()

    def _serve(self, key: str, conn: socket.socket) -> None:
        data = b""
        try:
            while True:
                try:
                    msg, end = messages.read_request(data)
                except messages.Incomplete:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                    continue
                except messages.Unreadable as exc:
                    with self._lock:
                        self._seen[key].unreadable.append(str(exc))
                    return
                data = data[end:]
                with self._lock:
                    seen = self._seen[key]
                    seen.messages.append(msg)
                    case = self._case[key]
                    index = len(seen.messages) - 1
                script = case.upstream if case is not None else ()
                conn.sendall(script[index] if index < len(script) else OK_RESPONSE)
                if case is not None and case.upstream_close and index + 1 >= len(script):
                    return
        except OSError:
            return
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()


# --- the client --------------------------------------------------------------------------------------


@dataclass
class Client:
    """What a client connection got: the responses read (interim 1xx left out), whether the proxy closed."""

    responses: list[messages.Message] = field(default_factory=list)
    closed: bool = False
    unreadable: str = ""
    raw: bytes = b""

    def summary(self) -> str:
        parts = [str(r.status) for r in self.responses]
        if self.unreadable:
            parts.append(f"unreadable({self.unreadable})")
        parts.append("closed" if self.closed else "open")
        return " ".join(parts)


def converse(port: int, data: bytes, *, head: bool, deadline: float) -> Client:
    """Send `data` in one write; read until the proxy closes, or QUIET_S after complete responses, or the
    deadline (a proxy still waiting for more of the request)."""
    out = Client()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(data)
        buf = b""
        end_at = time.monotonic() + deadline
        complete = False
        while True:
            now = time.monotonic()
            wait = (min(end_at, now + QUIET_S) if complete else end_at) - now
            if wait <= 0:
                break
            sock.settimeout(wait)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            except OSError:
                chunk = b""
            if not chunk:
                out.closed = True
            out.raw += chunk
            buf += chunk
            complete = False
            while buf:
                try:
                    msg, end = messages.read_response(buf, head_request=head, closed=out.closed)
                except messages.Incomplete:
                    break
                except messages.Unreadable as exc:
                    out.unreadable = str(exc)
                    buf = b""
                    break
                buf = buf[end:]
                if msg.status >= 200:
                    out.responses.append(msg)
                complete = not buf
            if out.closed:
                if buf and not out.unreadable:
                    out.unreadable = f"{len(buf)} bytes of an unfinished response"
                break
    return out


@dataclass
class Outcome:
    client: Client
    then: Client | None
    upstream: Seen


# --- the proxies -------------------------------------------------------------------------------------


@dataclass
class Bed:
    recorder: Recorder
    ports: dict[str, int]  # "<target>/<lane>" -> listener port
    lanes: int
    stopped: list[procs.Proc]

    def run(self, case: Case, lane: int) -> dict[str, Outcome]:
        """`case` through every target of its pairs, all at once, on `lane`."""
        targets = [t for t in TARGETS if t.split("-", 1)[1] in case.pairs]
        for target in targets:
            self.recorder.begin(f"{target}/{lane}", case)
        with concurrent.futures.ThreadPoolExecutor(len(targets)) as pool:
            futures = {t: pool.submit(self._one, case, self.ports[f"{t}/{lane}"]) for t in targets}
            clients = {t: f.result() for t, f in futures.items()}
        return {t: Outcome(c[0], c[1], self.recorder.end(f"{t}/{lane}")) for t, c in clients.items()}

    @staticmethod
    def _one(case: Case, port: int) -> tuple[Client, Client | None]:
        first = converse(port, case.request, head=case.head, deadline=case.deadline)
        then = converse(port, case.then, head=case.head, deadline=case.deadline) if case.then else None
        return first, then

    def run_all(self, cases: Sequence[Case]) -> dict[str, dict[str, Outcome]]:
        lanes: queue.Queue[int] = queue.Queue()
        for lane in range(self.lanes):
            lanes.put(lane)

        def job(case: Case) -> dict[str, Outcome]:
            lane = lanes.get()
            try:
                return self.run(case, lane)
            finally:
                lanes.put(lane)

        with concurrent.futures.ThreadPoolExecutor(self.lanes) as pool:
            return dict(zip([c.name for c in cases], pool.map(job, cases), strict=True))

    def stop(self) -> None:
        for proc in self.stopped:
            proc.stop()
        self.recorder.close()


def wasm_filter(name: str, key: str, conf: object) -> dict[str, Any]:
    config = {
        "name": name,
        "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": json.dumps(conf)},
        "vm_config": {
            "runtime": "envoy.wasm.runtime.v8",
            "code": {"local": {"filename": str(modules.module(key).path)}},
        },
    }
    return {
        "name": f"wasm.{name}",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm", "config": config},
    }


def _envoy_config(bed_ports: dict[str, int], upstream: dict[str, int], lanes: int, admin: int) -> dict[str, Any]:
    filters = [wasm_filter(name, key, conf) for name, key, conf in PLUGINS]
    listeners, clusters = [], []
    for pair in PAIRS:
        for lane in range(lanes):
            name = f"envoy-{pair}/{lane}"
            cluster = f"up-{pair}-{lane}"
            lst = tb_envoy.http_listener(
                f"{pair}-{lane}", bed_ports[name], cluster=cluster, http_filters=filters if pair == "filtered" else ()
            )
            hcm = lst["filter_chains"][0]["filters"][0]["typed_config"]
            hcm["stream_idle_timeout"] = f"{STREAM_IDLE_S}s"
            hcm["server_name"] = SERVER_NAME
            listeners.append(lst)
            clusters.append(tb_envoy.static_cluster(cluster, upstream[name]))
    return tb_envoy.bootstrap(admin, listeners, clusters)


def _agent_config(pair: str, bed_ports: dict[str, int], upstream: dict[str, int], lanes: int) -> dict[str, Any]:
    plugins = [
        {"name": name, "module": {"file": str(modules.module(key).path)}, "configuration": conf}
        for name, key, conf in PLUGINS
    ]
    target = f"agent-{pair}"
    return {
        "listeners": [
            {"name": f"l{lane}", "address": "127.0.0.1", "port": bed_ports[f"{target}/{lane}"], "cluster": f"c{lane}"}
            for lane in range(lanes)
        ],
        "clusters": [
            {"name": f"c{lane}", "address": "127.0.0.1", "port": upstream[f"{target}/{lane}"]} for lane in range(lanes)
        ],
        "admin": {"address": "127.0.0.1", "port": procs.free_port()},
        "http": {"stream_idle_timeout_s": STREAM_IDLE_S},
        "plugins": plugins if pair == "filtered" else [],
    }


@contextlib.contextmanager
def started(work: Path, *, lanes: int = 6) -> Iterator[Bed]:
    """Envoy, the two agents and the recorder; everything stopped (by pid) on exit."""
    keys = [f"{t}/{lane}" for t in TARGETS for lane in range(lanes)]
    recorder = Recorder(keys)
    bed = Bed(recorder, {k: procs.free_port() for k in keys}, lanes, [])
    try:
        for pair in PAIRS:
            raw = _agent_config(pair, bed.ports, recorder.ports, lanes)
            agent = tb_agent.start_agent(raw, work_dir=work / f"agent-{pair}", log_dir=work, name=f"agent-{pair}",
                                         log_level="warning")  # fmt: skip
            bed.stopped.append(agent.proc)
        admin = procs.free_port()
        path = tb_envoy.write_config(_envoy_config(bed.ports, recorder.ports, lanes, admin), work / "envoy")
        envoy = tb_envoy.start_envoy(
            path, admin_port=admin, log_dir=work, name="envoy", component_log_levels="wasm:warn"
        )
        bed.stopped.append(envoy.proc)
        yield bed
    finally:
        bed.stop()


# --- the comparison ----------------------------------------------------------------------------------


def _norm(msg: messages.Message) -> tuple[Any, ...]:
    """A request as the upstream received it, for comparison: x-request-id's value aside, framing aside."""
    headers = sorted((n, b"*" if n in TIMED_HEADERS else v) for n, v in msg.headers if n not in IGNORED_HEADERS)
    return msg.start, tuple(headers), msg.body


def response_headers(msg: messages.Message) -> tuple[tuple[bytes, bytes], ...]:
    """A response's headers for comparison: in order, framing left out, timed values as "*"."""
    return tuple((n, b"*" if n in TIMED_HEADERS else v) for n, v in msg.headers if n not in FRAMING_HEADERS)


def _kept_open(client: Client) -> bool:
    """The proxy left the connection open after its last response (Envoy closes a connection it ends after its
    delayed-close time, so a `connection: close` response counts as closing)."""
    if client.closed:
        return False
    return not client.responses or client.responses[-1].header(b"connection") != [b"close"]


def local_reply(msg: messages.Message) -> tuple[Any, ...]:
    """A reply the proxy made itself, for comparison byte by byte: the status line, every header in order (framing
    ones too, times as "*") and the body."""
    headers = tuple((n, b"*" if n in TIMED_HEADERS else v) for n, v in msg.headers)
    return msg.start, headers, msg.body


def _headers_differ(which: str, pair: str, e: Client, a: Client) -> list[str]:
    """What the agent sent where Envoy answered the same status: the status line (Envoy writes its own reason
    phrase); for a response that came from the upstream (Envoy's carries x-envoy-upstream-service-time) its
    headers in order, framing aside; for a local reply all of it (`local_reply`); and the bytes after the last
    response a client could not read (Envoy's body on a refused HEAD)."""
    out = []
    for i, (er, ar) in enumerate(zip(e.responses, a.responses, strict=False)):
        if er.status != ar.status:
            out.append(f"{pair}: {which} response #{i + 1}: status {ar.status} from the agent, {er.status} from Envoy")
            continue
        if er.header(b"x-envoy-upstream-service-time"):
            eh, ah = (er.start, response_headers(er)), (ar.start, response_headers(ar))
        else:
            eh, ah = local_reply(er), local_reply(ar)
        if eh != ah:
            out.append(f"{pair}: {which} response #{i + 1} differs:\n  envoy {eh!r}\n  agent {ah!r}")
    if bool(e.unreadable) != bool(a.unreadable):
        out.append(f"{pair}: {which}: unreadable after the responses: envoy {e.unreadable!r}, agent {a.unreadable!r}")
    return out


def _klass(client: Client) -> list[int]:
    return [r.status // 100 for r in client.responses]


def compare(case: Case, pair: str, envoy: Outcome, agent: Outcome) -> list[str]:  # noqa: PLR0912 - one branch per way an agent may differ from Envoy
    """What the agent did that it may not (empty: it behaves like Envoy, or stricter where the case allows)."""
    problems: list[str] = []
    e_up, a_up = envoy.upstream.messages, agent.upstream.messages
    for i, msg in enumerate(a_up):
        if i >= len(e_up):
            problems.append(f"{pair}: the agent forwarded request #{i + 1} that Envoy refused: {msg.start!r}")
        elif _norm(msg) != _norm(e_up[i]):
            problems.append(
                f"{pair}: request #{i + 1} differs upstream:\n  envoy {_norm(e_up[i])!r}\n  agent {_norm(msg)!r}"
            )
    if agent.upstream.unreadable:
        problems.append(f"{pair}: the upstream could not read what the agent sent: {agent.upstream.unreadable}")
    if len(e_up) > len(a_up) and not case.stricter:
        problems.append(f"{pair}: the agent forwarded {len(a_up)} request(s), Envoy {len(e_up)} (not marked stricter)")
    for which, e, a in (("client", envoy.client, agent.client), ("then", envoy.then, agent.then)):
        if e is None or a is None:
            continue
        ek, ak = _klass(e), _klass(a)
        if ek != ak and not (case.divergence and which == "client"):
            same = 0
            while same < min(len(ek), len(ak)) and ek[same] == ak[same]:
                same += 1
            # stricter: from where they part, the agent only refuses (4xx/5xx), at most once more
            allowed = bool(case.stricter) and len(ak) <= max(len(ek), same + 1) and all(k in (4, 5) for k in ak[same:])
            if not allowed:
                problems.append(f"{pair}: {which} got [{a.summary()}] from the agent, [{e.summary()}] from Envoy")
        if a.unreadable and not e.unreadable:
            problems.append(f"{pair}: {which} could not read the agent's response: {a.unreadable}")
        for er, ar in zip(e.responses, a.responses, strict=False):
            if er.status // 100 == 2 and ar.status == er.status and er.body != ar.body:
                problems.append(
                    f"{pair}: {which} response bodies differ: envoy {er.body[:80]!r} agent {ar.body[:80]!r}"
                )
        if e.closed and not a.closed and ek == ak and ek and ek[-1] != 2:
            problems.append(
                f"{pair}: {which}: Envoy closed the connection after [{e.summary()}], the agent kept it open"
            )
        if _kept_open(e) and a.closed and ek == ak and ek:
            problems.append(
                f"{pair}: {which}: Envoy kept the connection open after [{e.summary()}], the agent closed it"
            )
        if ek == ak and not (case.reply_differs and which == "client"):
            problems += _headers_differ(which, pair, e, a)
    return problems

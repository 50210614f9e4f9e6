"""A raw HTTP/2 client for frame-level cases: the `h2` library with its own checks off, so a test can send
what a well-behaved client never would, and record what the proxy answered as a comparable `H2Outcome`; and a
raw HTTP/2 upstream (`RawServer`, h2c) that answers each request with the frames a case scripts, response header
blocks no conforming server would send included.

Used by tests/integration/test_differential_h2.py to run the same bytes through Envoy and the agent. Only 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import hpack
from hyperframe.frame import DataFrame, GoAwayFrame, HeadersFrame, RstStreamFrame

Header = tuple[bytes, bytes]
BASE: tuple[Header, ...] = ((b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"x"))


@dataclass
class H2Outcome:
    """What came back: per stream its status (or reset code), and how the connection ended."""

    statuses: dict[int, int] = field(default_factory=dict)
    resets: dict[int, str] = field(default_factory=dict)
    bodies: dict[int, bytes] = field(default_factory=dict)
    headers: dict[int, list[Header]] = field(default_factory=dict)
    trailers: dict[int, list[Header]] = field(default_factory=dict)
    goaway: str | None = None
    closed: bool = False
    settings: dict[int, int] = field(default_factory=dict)
    #: streams whose response ended (END_STREAM)
    ended: set[int] = field(default_factory=set)

    def kind(self, stream_id: int = 1) -> str:
        """ "status 200", "reset PROTOCOL_ERROR", "goaway ..." or "closed" for one stream."""
        if stream_id in self.statuses:
            return f"status {self.statuses[stream_id]}"
        if stream_id in self.resets:
            return f"reset {self.resets[stream_id]}"
        if self.goaway is not None:
            return f"goaway {self.goaway}"
        return "closed" if self.closed else "nothing"

    def refused(self, stream_id: int = 1) -> bool:
        """The request got no response: reset, GOAWAY or closed connection."""
        return stream_id not in self.statuses


def _name(code: int) -> str:
    try:
        return h2.errors.ErrorCodes(code).name
    except ValueError:
        return str(code)


class RawClient:
    """One connection; `send(fn)` lets a case drive the h2 state machine, `read()` collects the outcome."""

    def __init__(self, port: int, timeout: float = 3.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.settimeout(timeout)
        config = h2.config.H2Configuration(
            client_side=True,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
            validate_inbound_headers=False,
        )
        self.h2 = h2.connection.H2Connection(config)
        self.h2.initiate_connection()
        self.outcome = H2Outcome()
        self.flush()

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data:
            try:
                self.sock.sendall(data)
            except OSError:
                self.outcome.closed = True

    def send_raw(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError:
            self.outcome.closed = True

    def request(self, stream_id: int, headers: Sequence[Header], body: bytes | None = None) -> None:
        self.h2.send_headers(stream_id, list(headers), end_stream=body is None)
        if body is not None:
            self.h2.send_data(stream_id, body, end_stream=True)
        self.flush()

    def read(self, *, until: Callable[[H2Outcome], bool] | None = None, timeout: float = 3.0) -> H2Outcome:
        out = self.outcome
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not out.closed:
            if until is not None and until(out):
                break
            self.sock.settimeout(max(0.05, min(0.5, deadline - time.monotonic())))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue  # nothing yet: wait on until the deadline
            except OSError:
                out.closed = True
                break
            if not data:
                out.closed = True
                break
            try:
                events = self.h2.receive_data(data)
            except h2.exceptions.ProtocolError:
                out.closed = True
                break
            for ev in events:
                self._event(ev)
            self.flush()
        return out

    def _event(self, ev: h2.events.Event) -> None:
        out = self.outcome
        if isinstance(ev, h2.events.ResponseReceived):
            sid = int(ev.stream_id or 0)
            hdrs = list(ev.headers or [])
            out.statuses[sid] = int(dict(hdrs)[b":status"])
            out.headers[sid] = hdrs
        elif isinstance(ev, h2.events.DataReceived):
            sid = int(ev.stream_id or 0)
            out.bodies[sid] = out.bodies.get(sid, b"") + bytes(ev.data or b"")
            self.h2.acknowledge_received_data(int(ev.flow_controlled_length or 0), sid)
        elif isinstance(ev, h2.events.TrailersReceived):
            out.trailers[int(ev.stream_id or 0)] = list(ev.headers or [])
        elif isinstance(ev, h2.events.StreamEnded):
            out.ended.add(int(ev.stream_id or 0))
        elif isinstance(ev, h2.events.StreamReset):
            out.resets[int(ev.stream_id or 0)] = _name(int(ev.error_code or 0))
        elif isinstance(ev, h2.events.ConnectionTerminated):
            out.goaway = _name(int(ev.error_code or 0))
        elif isinstance(ev, h2.events.RemoteSettingsChanged):
            out.settings.update({int(k): int(v.new_value) for k, v in ev.changed_settings.items()})

    def close(self) -> None:
        self.sock.close()


def run(port: int, case: Callable[[RawClient], None], *, timeout: float = 3.0,
        until: Callable[[H2Outcome], bool] | None = None) -> H2Outcome:  # fmt: skip
    """Connect to 127.0.0.1:`port`, let `case` send, read what comes back for up to `timeout` seconds."""
    client = RawClient(port, timeout=min(timeout, 2.0))
    try:
        case(client)
        return client.read(until=until, timeout=timeout)
    finally:
        client.close()


@dataclass(frozen=True)
class Part:
    """One frame of a scripted response: a header block (`headers`, sent as given: no lower-casing, no checks) or,
    when `headers` is None, a DATA frame of `data`; `end`: END_STREAM on it."""

    headers: tuple[Header, ...] | None = None
    data: bytes = b""
    end: bool = False
    #: an RST_STREAM with this error code instead of a HEADERS or DATA frame
    reset: int | None = None
    #: a GOAWAY with this error code instead (its last-stream-id: `last_stream`, else the answered stream's id)
    goaway: int | None = None
    last_stream: int | None = None
    #: no frame: the server closes the connection here (what follows is not sent)
    close: bool = False
    #: these bytes as they are instead (a frame no library would build: DATA on stream 0, a bad length, ...)
    raw: bytes | None = None


class RawServer:
    """An h2c upstream on 127.0.0.1: the `h2` library reads the proxy's requests, and each is answered with the
    frames `respond(path)` gives, HPACK-encoded by this server's own encoder (the library sends no header block
    of its own on the connection, so the two never disagree on the dynamic table)."""

    def __init__(self, respond: Callable[[bytes], Sequence[Part]]) -> None:
        self._respond = respond
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        #: per answered path, what the proxy sent on that connection after the answer (its last one), until it
        #: closed the connection or sent another request; the paths whose connection has ended since
        self.after: dict[bytes, bytes] = {}
        self.ended: set[bytes] = set()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with self._lock:
                self._conns.add(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        config = h2.config.H2Configuration(client_side=False, header_encoding=None, validate_inbound_headers=False)
        h2c = h2.connection.H2Connection(config)
        encoder = hpack.Encoder()
        answered: bytes | None = None
        try:
            h2c.initiate_connection()
            conn.sendall(h2c.data_to_send())
            while data := conn.recv(65536):
                try:
                    events = h2c.receive_data(data)
                except h2.exceptions.ProtocolError:
                    if answered is not None:  # what broke h2 (a GOAWAY after our own bad frame, ...)
                        with self._lock:
                            self.after[answered] = self.after.get(answered, b"") + data
                    return
                out = h2c.data_to_send()
                closing = False
                if answered is not None and not any(isinstance(ev, h2.events.RequestReceived) for ev in events):
                    with self._lock:
                        self.after[answered] = self.after.get(answered, b"") + data
                for ev in events:
                    if isinstance(ev, h2.events.RequestReceived) and not closing:
                        path = answered = dict(ev.headers or []).get(b":path", b"")
                        with self._lock:
                            self.after[path] = b""
                            self.ended.discard(path)
                        for p in self._respond(path):
                            if p.close:
                                closing = True
                                break
                            out += _frame(encoder, int(ev.stream_id or 0), p)
                conn.sendall(out)
                if closing:
                    return
        except OSError:
            return
        finally:
            with self._lock:
                self._conns.discard(conn)
                if answered is not None:
                    self.ended.add(answered)
            conn.close()

    def after_answer(
        self, path: bytes, done: Callable[[bytes, bool], bool], timeout: float = 3.0
    ) -> tuple[bytes, bool]:
        """What the proxy sent after the answer to `path` and whether its connection ended, once `done(sent, ended)`
        or `timeout` passed (polled: the proxy's frames arrive on the server's own thread)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                sent, ended = self.after.get(path, b""), path in self.ended
            if done(sent, ended) or time.monotonic() >= deadline:
                return sent, ended
            time.sleep(0.01)

    def close(self) -> None:
        self._sock.close()
        with self._lock:
            for conn in list(self._conns):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)


def _frame(encoder: hpack.Encoder, stream_id: int, part: Part) -> bytes:
    frame: HeadersFrame | DataFrame | RstStreamFrame | GoAwayFrame
    if part.raw is not None:
        return part.raw
    if part.goaway is not None:
        frame = GoAwayFrame(0)
        frame.error_code = part.goaway
        frame.last_stream_id = stream_id if part.last_stream is None else part.last_stream
        return bytes(frame.serialize())
    if part.reset is not None:
        frame = RstStreamFrame(stream_id)
        frame.error_code = part.reset
        return bytes(frame.serialize())
    if part.headers is None:
        frame = DataFrame(stream_id)
        frame.data = part.data
    else:
        frame = HeadersFrame(stream_id)
        frame.data = encoder.encode(list(part.headers))
        frame.flags.add("END_HEADERS")
    if part.end:
        frame.flags.add("END_STREAM")
    return bytes(frame.serialize())


#: a client's connection preface and an empty SETTINGS frame
CLIENT_PREFACE: bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
#: a frame as `frames` gives it: type, flags, stream id, payload
RawFrame = tuple[int, int, int, bytes]


def frames(data: bytes) -> list[RawFrame]:
    """`data` cut into frames (a trailing partial frame is kept as type -1 with what came of it)."""
    out: list[RawFrame] = []
    while data:
        if len(data) < 9 or len(data) < 9 + int.from_bytes(data[:3], "big"):
            out.append((-1, 0, 0, data))
            break
        length = int.from_bytes(data[:3], "big")
        out.append((data[3], data[4], int.from_bytes(data[5:9], "big") & 0x7FFFFFFF, data[9 : 9 + length]))
        data = data[9 + length :]
    return out


@dataclass(frozen=True)
class Wire:
    """What a server wrote, frame by frame: before the client's `bad` bytes (`before`: only when the client
    waited for the server's SETTINGS first), after them, and how the connection ended ("eof", "reset" or "open"
    when it was still open at the deadline)."""

    before: tuple[RawFrame, ...]
    after: tuple[RawFrame, ...]
    end: str


def read_until(sock: socket.socket, got: bytearray, done: Callable[[bytes], bool], deadline: float) -> str:
    """Read into `got` until the server closes ("eof" / "reset"), `deadline` passes or `done(got)` ("open")."""
    while not done(bytes(got)):
        left = deadline - time.monotonic()
        if left <= 0:
            return "open"
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return "open"
        except ConnectionResetError:
            return "reset"
        if not chunk:
            return "eof"
        got += chunk
    return "open"


def settings_acked(data: bytes) -> bool:
    """Whether `data` (a server's frames) holds a SETTINGS ACK."""
    return any(t == 4 and flags & 1 for t, flags, _, _ in frames(data))


def wire(port: int, bad: bytes, *, settings_first: bool, until_reset: bool = False, timeout: float = 3.0) -> Wire:
    """Connect to 127.0.0.1:`port` and send the preface (an empty SETTINGS) and `bad` in one write, or -- when
    `settings_first` -- the preface alone, read until the server acknowledged it, then `bad`; read what the server
    writes until it closes, `timeout` passes or (`until_reset`) an RST_STREAM came."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        before = bytearray()
        if settings_first:
            sock.sendall(CLIENT_PREFACE)
            read_until(sock, before, settings_acked, time.monotonic() + timeout)
            sock.sendall(bad)
        else:
            sock.sendall(CLIENT_PREFACE + bad)
        after = bytearray()
        done = (lambda got: any(f[0] == 3 for f in frames(got))) if until_reset else (lambda _: False)
        end = read_until(sock, after, done, time.monotonic() + timeout)
    return Wire(tuple(frames(bytes(before))), tuple(frames(bytes(after))), end)

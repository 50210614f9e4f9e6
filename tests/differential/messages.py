"""A plain reading of HTTP/1.1 bytes as a typical peer would read them: the requests an upstream server sees
(recorded by the test bed's upstream), the responses a client sees. Deliberately simple and independent of
both proxies: header lines split at CRLF, bodies framed by chunked transfer coding, then Content-Length.

Used by tests/differential/bed.py (and its fuzzer) only.
"""

from __future__ import annotations

from dataclasses import dataclass


class Incomplete(Exception):
    """More bytes are needed for the next message."""


class Unreadable(Exception):
    """The bytes are not an HTTP/1.1 message a plain reader accepts."""


@dataclass(frozen=True)
class Message:
    """One request (`start` = method, target, version) or response (`start` = version, status, reason)."""

    start: tuple[bytes, ...]
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    chunked: bool = False

    def header(self, name: bytes) -> list[bytes]:
        return [v for n, v in self.headers if n == name]

    @property
    def status(self) -> int:
        return int(self.start[1])


def _head(data: bytes) -> tuple[bytes, tuple[tuple[bytes, bytes], ...], int]:
    end = data.find(b"\r\n\r\n")
    if end < 0:
        raise Incomplete
    lines = data[:end].split(b"\r\n")
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            raise Unreadable(f"header line without a colon: {line[:80]!r}")
        headers.append((name.strip().lower(), value.strip(b" \t")))
    return lines[0], tuple(headers), end + 4


def _chunked(data: bytes, pos: int) -> tuple[bytes, int]:
    body = []
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            raise Incomplete
        size_text = data[pos:eol].split(b";")[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise Unreadable(f"bad chunk size {data[pos:eol][:40]!r}") from None
        pos = eol + 2
        if size == 0:
            end = data.find(b"\r\n", pos)
            while end >= 0 and end != pos:  # trailer lines
                pos = end + 2
                end = data.find(b"\r\n", pos)
            if end < 0:
                raise Incomplete
            return b"".join(body), end + 2
        if len(data) < pos + size + 2:
            raise Incomplete
        body.append(data[pos : pos + size])
        if data[pos + size : pos + size + 2] != b"\r\n":
            raise Unreadable("chunk data not followed by CRLF")
        pos += size + 2


def _framed(data: bytes, pos: int, headers: tuple[tuple[bytes, bytes], ...]) -> tuple[bytes, int, bool] | None:
    """(body, end, chunked) by Transfer-Encoding / Content-Length; None when neither frames it."""
    te = [v.lower() for n, v in headers if n == b"transfer-encoding"]
    if te:
        if te[-1].split(b",")[-1].strip() != b"chunked":
            return None
        body, end = _chunked(data, pos)
        return body, end, True
    lengths = {v for n, v in headers if n == b"content-length"}
    if lengths:
        if len(lengths) > 1 or not next(iter(lengths)).isdigit():
            raise Unreadable(f"content-length {sorted(lengths)!r}")
        n = int(next(iter(lengths)))
        if len(data) < pos + n:
            raise Incomplete
        return data[pos : pos + n], pos + n, False
    return b"", pos, False


def read_request(data: bytes) -> tuple[Message, int]:
    """The first request in `data` and where it ends; raises Incomplete or Unreadable."""
    line, headers, pos = _head(data)
    parts = line.split(b" ")
    if len(parts) != 3:
        raise Unreadable(f"request line {line[:80]!r}")
    framed = _framed(data, pos, headers)
    if framed is None:
        raise Unreadable("request transfer-encoding does not end in chunked")
    body, end, chunked = framed
    return Message(tuple(parts), headers, body, chunked), end


def read_response(data: bytes, *, head_request: bool = False, closed: bool = False) -> tuple[Message, int]:
    """The first response in `data`; a body without length runs to the close (`closed`: the peer closed)."""
    line, headers, pos = _head(data)
    parts = line.split(b" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise Unreadable(f"status line {line[:80]!r}")
    status = int(parts[1])
    if head_request or status in (204, 304) or status < 200:
        return Message(tuple(parts), headers, b""), pos
    has_length = any(n in (b"content-length", b"transfer-encoding") for n, _ in headers)
    framed = _framed(data, pos, headers) if has_length else None
    if framed is None:
        if not closed:
            raise Incomplete
        return Message(tuple(parts), headers, data[pos:]), len(data)
    body, end, chunked = framed
    return Message(tuple(parts), headers, body, chunked), end

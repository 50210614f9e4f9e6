"""One direction of a stream's filter pipeline (`Lane`): the frames waiting at each position and the body each
position's filter sees, sans-IO; meshplug.agent.stream drives it.

A body is copied as little as its filters need: the chunk a filter is shown while nothing is held passes on as
is (`shown`); chunks a filter keeps (it stopped on them) stay as they came (`kept`), in order, until the filter
reads or writes its body (`buffer`: one join into its buffer) or lets them go (`take`: one join, or the chunk
itself); a whole rewrite (`replace`) is the bytes the filter wrote, passed on as they are. What a position
holds is `body` (its buffer), then `kept`, then `shown`.
"""

from __future__ import annotations

from collections import deque
from typing import Final, final

HEADERS: Final = 0
DATA: Final = 1
TRAILERS: Final = 2


@final
class Frame:
    """One event of a direction: its kind (HEADERS, DATA, TRAILERS), end_stream, and the bytes of a DATA frame.
    Never changed once made (frames without data are shared: `headers_frame`, `TRAILERS_FRAME`). An object, not a
    tuple: compiled (mypyc), a tuple of an int, a bool and bytes is unboxed, and boxed anew each time a frame is
    returned, queued or held -- twice per position and frame on the data path."""

    __slots__ = ("data", "end", "kind")

    def __init__(self, kind: int, end: bool, data: bytes = b"") -> None:
        self.kind: Final = kind
        self.end: Final = end
        self.data: Final = data


#: the headers frames (with and without end_stream), the trailers frame and the bare end of a body, made once
HEADERS_END: Final = Frame(HEADERS, True)
HEADERS_MORE: Final = Frame(HEADERS, False)
TRAILERS_FRAME: Final = Frame(TRAILERS, True)
#: the end of a body on its own (an empty chunk with end_stream: the end of most messages)
DATA_END: Final = Frame(DATA, True)


def headers_frame(end_stream: bool) -> Frame:
    """The (shared) headers frame with this end_stream."""
    return HEADERS_END if end_stream else HEADERS_MORE


def data_frame(data: bytes, end_stream: bool) -> Frame:
    """A body chunk's frame: the shared one for an empty end; `data` kept as it is when it is bytes (no call of
    the type), else copied."""
    if not data and end_stream:
        return DATA_END
    return Frame(DATA, end_stream, data if type(data) is bytes else bytes(data))


class Lane:
    """One direction's pipeline. Position i is filter i in this direction's order (the response lane runs
    the chain backwards); frames that must wait for position i queue in ``inbox[i]`` (i == n: output)."""

    __slots__ = (
        "bodied",
        "body",
        "body_end",
        "buffering",
        "closed",
        "flight",
        "flight_pos",
        "grown",
        "held",
        "hold",
        "inbox",
        "kept",
        "kept_bytes",
        "n",
        "shown",
        "stalled",
        "stash",
    )

    # per position, made by `grow` the first time one is needed (a frame stops or queues): the headers-only
    # lanes of most requests never need them
    held: list[Frame | None]  # headers/trailers (or a failed frame) held by a stop
    buffering: list[bool]
    body_end: list[bool]
    # per position, made by `_bodies` the first time a body is held or read (a stopped headers-only lane, e.g.
    # a local reply's, never needs them)
    body: list[bytearray | None]
    shown: list[bytes | None]
    kept: list[list[bytes] | None]
    kept_bytes: list[int]

    def __init__(self, n: int) -> None:
        self.n = n
        self.inbox: list[deque[Frame]] | None = None  # created the first time a frame has to wait
        self.stash: dict[int, bytearray] | None = None  # data kept out of a filter's view (WATERMARK)
        self.hold: list[Frame | None] | None = None  # headers a filter holds while it sees the body (HOLD)
        self.closed = False
        #: some position holds a frame or buffers a body, or frames are queued: new frames must queue too
        self.stalled = False
        self.grown = False  # the per-position lists of stops exist
        self.bodied = False  # the per-position lists of bodies exist
        #: before the lists of bodies exist: the chunk shown to position `flight_pos` (while its callback runs,
        #: until `take`); `_bodies` moves it to `shown`. A chunk every filter lets go costs no per-position list.
        self.flight: bytes | None = None
        self.flight_pos = -1

    def grow(self) -> None:
        """Make the per-position lists of stops (once)."""
        if self.grown:
            return
        self.grown = True
        n = self.n
        self.held = [None] * n
        self.buffering = [False] * n
        #: end_stream of the chunk a buffering position stopped on
        self.body_end = [False] * n

    def _bodies(self) -> None:
        """Make the per-position lists of bodies (once; those of stops too: a lane with bodies is grown, and the
        stream reads a grown lane's bodies through `held_body`)."""
        if self.bodied:
            return
        if not self.grown:
            self.grow()
        self.bodied = True
        n = self.n
        #: position i's body buffer, made the first time one is needed (`buf`): most chunks only pass
        self.body = [None] * n
        #: the chunk position i is shown while nothing is held, not copied unless the filter reads or writes
        #: its buffer (`buffer`): a chunk that only passes costs no copy
        self.shown = [None] * n
        #: chunks position i's filter kept (stopped on), after `body`, not copied yet; their total size
        self.kept = [None] * n
        self.kept_bytes = [0] * n
        if self.flight is not None:
            self.shown[self.flight_pos] = self.flight
            self.flight = None

    def buf(self, pos: int) -> bytearray:
        """Position `pos`'s body buffer as it is (made now if it was not yet)."""
        if not self.bodied:
            self._bodies()
        body = self.body[pos]
        if body is None:
            body = self.body[pos] = bytearray()
        return body

    def show(self, pos: int, chunk: bytes) -> int:
        """`chunk` for position `pos`'s filter: shown as is while nothing is held, else kept after what is
        (not copied); returns the size of the body the filter sees."""
        if not self.bodied:
            if self.flight is None:  # no body is held in the lane
                self.flight_pos = pos
                self.flight = chunk
                return len(chunk)
            self._bodies()  # (defensive: a chunk in flight elsewhere goes to its position's `shown`)
        if self.stash is not None and pos in self.stash:
            body = self.buffer(pos)
            body += chunk
            return len(body)
        if self.body[pos] or self.kept[pos] is not None or self.shown[pos] is not None:
            self.keep(pos)  # (a whole rewrite the filter made outside a callback is shown: `replace`)
            self.shown[pos] = chunk
            return self.size(pos)
        self.shown[pos] = chunk
        return len(chunk)

    def keep(self, pos: int) -> None:
        """The filter keeps the chunk it is shown (it stopped on it): held after the rest, not copied."""
        if not self.bodied:
            self._bodies()
        shown = self.shown[pos]
        if shown is not None:
            self.shown[pos] = None
            kept = self.kept[pos]
            if kept is None:
                self.kept[pos] = [shown]
            else:
                kept.append(shown)
            self.kept_bytes[pos] += len(shown)

    def buffer(self, pos: int) -> bytearray:
        """Position `pos`'s body buffer with everything it holds in it (one copy of what was not yet)."""
        if not self.bodied:
            self._bodies()
        self.keep(pos)
        kept = self.kept[pos]
        body = self.body[pos]
        if kept is None:
            return self.buf(pos)
        self.kept[pos] = None
        self.kept_bytes[pos] = 0
        if body:
            body += b"".join(kept) if len(kept) > 1 else kept[0]
            return body
        body = self.body[pos] = bytearray().join(kept)
        return body

    def take(self, pos: int) -> bytes | None:
        """What position `pos` holds, for passing on, emptied (None: it holds nothing but its buffer, which the
        caller passes on itself): the chunk shown or kept alone as it is, several kept ones joined."""
        if not self.bodied:
            if self.flight_pos != pos:
                return None
            chunk = self.flight
            self.flight = None
            return chunk
        if self.body[pos]:
            return None
        kept = self.kept[pos]
        if kept is None:  # (the common case: a chunk shown and let go, no list made for it)
            shown = self.shown[pos]
            self.shown[pos] = None
            return shown
        self.keep(pos)
        self.kept[pos] = None
        self.kept_bytes[pos] = 0
        return kept[0] if len(kept) == 1 else b"".join(kept)

    def held_body(self, pos: int, chunk: bytes) -> bytes:
        """What position `pos` of a grown lane passes on as its body, emptied: its buffer (WATERMARK-kept chunks
        first), kept and shown chunks; `chunk` (the frame's bytes) itself when the buffer holds just that."""
        if not self.bodied:  # (no body was ever held or read here: at most the chunk in flight)
            data = self.take(pos)
            return b"" if data is None else data
        body = self.body[pos]
        if self.stash is not None and pos in self.stash:  # kept chunks go first
            body = self.buffer(pos)
            body[0:0] = self.stash.pop(pos)
        # what the position holds outside its buffer, as it came (a chunk passes untouched: no copy)
        data = self.take(pos)
        if data is None:
            if body:  # (`take` leaves a buffer with bytes in it, and what follows it, to this)
                body = self.buffer(pos)
                # the chunk as it came when the filter left it as it was (one compare, no copy), else the new bytes
                data = chunk if body == chunk else bytes(body)
                body.clear()
            else:
                data = b""
        return data

    def drop(self, pos: int) -> None:
        """Position `pos` holds nothing any more (NO_BUFFER)."""
        if not self.bodied:
            self._bodies()
        self.shown[pos] = None
        self.kept[pos] = None
        self.kept_bytes[pos] = 0
        body = self.body[pos]
        if body is not None:
            body.clear()

    def replace(self, pos: int, data: bytes) -> None:
        """Position `pos`'s whole body becomes `data` (a filter rewrote all of it): shown as is, so it passes on
        without the copy out of a buffer (`buffer` copies it in if the filter touches the body again). With
        data kept out of the filter's view (WATERMARK) it goes into the buffer, which passes on after that."""
        if not self.bodied:
            self._bodies()
        if self.stash is not None and pos in self.stash:
            self.buffer(pos)[:] = data
            return
        self.drop(pos)
        self.shown[pos] = data

    def size(self, pos: int) -> int:
        """The size of the body position `pos`'s filter sees."""
        if not self.bodied:
            self._bodies()
        body = self.body[pos]
        shown = self.shown[pos]
        return (0 if body is None else len(body)) + self.kept_bytes[pos] + (0 if shown is None else len(shown))

    def parts(self, pos: int) -> list[bytes | bytearray]:
        """The body position `pos`'s filter sees, in the pieces it is held in, in order (its buffer if not empty,
        the chunks kept, the chunk shown): nothing joined or copied, nothing changed (`buffer` joins them)."""
        if not self.bodied:
            self._bodies()
        out: list[bytes | bytearray] = []
        body = self.body[pos]
        if body:
            out.append(body)
        kept = self.kept[pos]
        if kept is not None:
            out.extend(kept)
        shown = self.shown[pos]
        if shown is not None:
            out.append(shown)
        return out

    def queue(self, pos: int) -> deque[Frame]:
        if not self.grown:
            self.grow()
        if self.inbox is None:
            self.inbox = [deque() for _ in range(self.n + 1)]
        self.stalled = True
        return self.inbox[pos]

    def settle(self) -> None:
        """Recompute `stalled` once the stream is idle."""
        if self.stalled:
            if not self.grown:  # (stalled is set only with the lists made: defensive)
                self.grow()
            self.stalled = (
                any(h is not None for h in self.held)
                or any(self.buffering)
                or bool(self.stash)
                or (self.hold is not None and any(h is not None for h in self.hold))
                or (self.inbox is not None and any(self.inbox))
            )

#!/usr/bin/env python3
"""An open-loop HTTP/1.1 load generator: requests at a fixed rate, whatever the server's speed (wrk2-style).

wrk is closed loop (a connection sends its next request when the previous answer arrived), so a slow server
slows the load and hides its queueing; Debian has no wrk2. Here request i is due at start + i / rate; it goes out
on an idle keep-alive connection, or a new one when all are busy (up to `--max-conns`), and its latency is
measured from the time it was due, not from when it was sent: a server that falls behind shows its whole queueing
delay (no coordinated omission). Prints one JSON line: due, ok (answered with the expected status), bad (other
status or a failed connection), seconds, p50/p90/p99/max latency in ms, the connections opened.

Usage: bench/openloop.py PORT --rate 500 --seconds 5 [--method POST --body-bytes 1048576] [--path /]
       [--header 'name: value'] [--expect 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import uvloop


class Client:
    def __init__(self, args: argparse.Namespace) -> None:
        self.port = args.port
        self.expect = args.expect
        self.max_conns = args.max_conns
        body = b"x" * args.body_bytes
        head = [f"{args.method} {args.path} HTTP/1.1", "host: bench.local"]
        head += args.header
        if body or args.method in ("POST", "PUT"):
            head.append(f"content-length: {len(body)}")
        self.request = ("\r\n".join(head) + "\r\n\r\n").encode() + body
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.conns = 0
        self.opened = 0
        self.latencies: list[float] = []
        self.ok = 0
        self.bad = 0
        self.errors: dict[str, int] = {}

    async def _conn(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.idle:
            return self.idle.pop()
        self.conns += 1
        self.opened += 1
        try:
            return await asyncio.open_connection("127.0.0.1", self.port, limit=1 << 22)
        except OSError:
            self.conns -= 1
            raise

    async def one(self, due: float) -> None:
        try:
            reader, writer = await self._conn()
        except Exception as exc:  # counted by its kind, as below
            self._fail(f"connect: {exc}")
            return
        try:
            writer.write(self.request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            fields = {}
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                fields[name.strip().lower()] = value.strip()
            if b"content-length" in fields:
                await reader.readexactly(int(fields[b"content-length"]))
            elif fields.get(b"transfer-encoding", b"").lower() == b"chunked":
                while True:
                    size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                    await reader.readexactly(size + 2)
                    if size == 0:
                        break
            keep = fields.get(b"connection", b"").lower() != b"close"
        except Exception as exc:  # any failure of one request: counted by its kind
            writer.close()
            self.conns -= 1
            self._fail(f"{type(exc).__name__}: {exc}"[:100])  # the kind and its text (a reset, a closed transport)
            return
        self.latencies.append(time.monotonic() - due)
        if status == self.expect:
            self.ok += 1
        else:
            self._fail(f"status {status}")
        if keep:
            self.idle.append((reader, writer))
        else:
            writer.close()
            self.conns -= 1

    def _fail(self, what: str) -> None:
        self.bad += 1
        self.errors[what] = self.errors.get(what, 0) + 1


async def run(args: argparse.Namespace) -> dict[str, object]:
    loop = asyncio.get_running_loop()  # (its clock counts milliseconds: time.monotonic() for due times)
    client = Client(args)
    total = int(args.rate * args.seconds)
    tasks: set[asyncio.Task[None]] = set()
    start = time.monotonic() + 0.05
    skipped = 0
    for i in range(total):
        due = start + i / args.rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if client.conns >= client.max_conns and not client.idle:
            skipped += 1  # the server holds every connection we may open: the request counts as failed
            client._fail("no connection free")
            continue
        task = loop.create_task(client.one(due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=args.drain)
        if pending:
            client.errors["no answer"] = len(pending)
    elapsed = time.monotonic() - start
    lat = sorted(client.latencies) or [float("nan")]

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p / 100 * len(lat)))] * 1000

    return {
        "due": total,
        "ok": client.ok,
        "bad": total - client.ok,  # every request not answered as expected, whatever happened to it
        "errors": client.errors,
        "seconds": elapsed,
        "p50_ms": pct(50),
        "p90_ms": pct(90),
        "p99_ms": pct(99),
        "max_ms": lat[-1] * 1000,
        "conns": client.opened,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("port", type=int)
    ap.add_argument("--rate", type=float, default=500.0, help="requests per second")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--method", default="GET")
    ap.add_argument("--path", default="/")
    ap.add_argument("--header", action="append", default=[])
    ap.add_argument("--body-bytes", type=int, default=0)
    ap.add_argument("--expect", type=int, default=200)
    ap.add_argument("--max-conns", type=int, default=256)
    ap.add_argument("--drain", type=float, default=10.0, help="seconds to wait for the last answers")
    args = ap.parse_args()
    t0 = time.monotonic()
    out = uvloop.run(run(args))
    out["wall_s"] = time.monotonic() - t0
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

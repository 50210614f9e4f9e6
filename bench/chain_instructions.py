#!/usr/bin/env python3
"""Instructions per plugin per request, counted (callgrind) rather than timed: the stable signal on a noisy machine.

The host and chain in process (the loop of bench/host_vs_envoy.py: a stream with request headers, response
headers, a response body and `complete`), for a chain of `--plugins` copies of the module and for an empty
chain, each run under `valgrind --tool=callgrind` counting only inside the request loop (run by
functools.reduce: `--toggle-collect=functools_reduce`), after a first request outside it: no import, module
load or VM start in the count. Per plugin = (chain of k - empty chain) / k.
With `--annotate` it also prints callgrind_annotate's top functions (inclusive) of the chain's run.

Usage: bench/chain_instructions.py [--module rust/header_rules] [--plugins 10] [--requests 1000] [--annotate]
       bench/chain_instructions.py --child PLUGINS REQUESTS MODULE   (what valgrind runs)
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("MESHPLUG_REQUIRE_NATIVE", "1")

CONFIG = {
    "request": {"add": {}, "set": {}, "remove": []},
    "response": {"add": {"x-bench": "1"}, "set": {}, "remove": []},
}
REQ_HEADERS = [(b"host", b"svc"), (b"user-agent", b"wrk"), (b"accept", b"*/*")]
RESP_HEADERS = [(b"content-type", b"text/plain"), (b"content-length", b"2"), (b"server", b"nginx")]


def child(plugins: int, requests: int, module: str) -> int:
    from meshplug.agent import chain as C  # the child imports the data path, the parent not
    from meshplug.agent import host as H
    from tests.corpus import modules

    data = modules.module(module).path.read_bytes()
    host = H.Host()
    config = json.dumps(CONFIG).encode()
    ch = C.Chain([host.load(H.PluginConfig(name=f"bench-{i}", configuration=config), data) for i in range(plugins)])

    def one(_acc: None, _i: int) -> None:
        s = ch.new_stream()
        s.recv_request_headers(C.http1_request_headers(b"GET", b"/", REQ_HEADERS), True)
        s.recv_response_headers(C.http1_response_headers(200, RESP_HEADERS), False)
        s.recv_response_data(b"ok", True)
        s.complete()

    one(None, 0)  # the first request makes what every later one reuses
    # the loop inside one C function (functools.reduce): callgrind counts only inside it (--toggle-collect)
    functools.reduce(one, range(requests), None)
    host.close()
    return 0


def _count(out: Path, plugins: int, requests: int, module: str) -> int:
    """Instructions per request of the child's loop (callgrind counts inside functools.reduce only)."""
    cmd = [
        "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--collect-atstart=no",
        "--toggle-collect=functools_reduce", sys.executable, __file__, "--child", str(plugins), str(requests), module,
    ]  # fmt: skip
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for line in out.read_text(errors="replace").splitlines():
        m = re.match(r"(?:summary|totals):\s+(\d+)", line)
        if m:
            return int(m.group(1)) // requests
    raise SystemExit(f"no totals in {out}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--module", default="rust/header_rules")
    ap.add_argument("--plugins", type=int, default=10)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--annotate", action="store_true")
    ap.add_argument("--child", nargs=3, metavar=("PLUGINS", "REQUESTS", "MODULE"))
    args = ap.parse_args()
    if args.child:
        return child(int(args.child[0]), int(args.child[1]), args.child[2])
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    # the module's precompiled artifact is made outside valgrind (compiling under it takes minutes)
    subprocess.run([sys.executable, __file__, "--child", "1", "1", args.module], check=True)
    n, k = args.requests, args.plugins
    per: dict[int, int] = {}
    with tempfile.TemporaryDirectory(prefix="mp-callgrind-") as tmp:
        for plugins in (0, k):
            per[plugins] = _count(Path(tmp) / f"p{plugins}.out", plugins, n, args.module)
            print(f"chain of {plugins:>2}: {per[plugins]:>9,} instructions per request")
        if args.annotate:
            subprocess.run(
                ["callgrind_annotate", "--inclusive=yes", "--threshold=95", str(Path(tmp) / f"p{k}.out")], check=True
            )
    print(f"per plugin per request ({args.module}, chain of {k} minus none): {(per[k] - per[0]) / k:,.0f} instructions")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

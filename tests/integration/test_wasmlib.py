"""meshplug.wasmlib: each libwasmtime a process can run (wasmtime-py's own, and the one scripts/build_wasmtime.py
builds with compiler inlining) really runs the agent, in a fresh process per library (the choice is made before
wasmtime is imported): the engine the agent builds keeps epoch interruption (a looping guest is stopped), an
AssemblyScript plugin rewrites a buffered body through the host and chain to the same bytes on both, and the two
libraries key their compiled artifacts apart (neither loads the other's). The stock library is the default;
`auto` takes the built one when it is there. A bad MESHPLUG_WASMTIME, or `built` where there is none, is a clear
ImportError.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from meshplug import wasmlib
from tests.corpus import modules

pytestmark = pytest.mark.integration

#: run in a fresh interpreter with MESHPLUG_WASMTIME set; prints one JSON line
CHILD = r"""
import hashlib, json, sys
import meshplug
import wasmtime
from wasmtime import _ffi
from meshplug import compiled
from meshplug.agent import chain as C, host as H

engine = compiled.new_engine()
loop = wasmtime.Module(engine, wasmtime.wat2wasm(
    '(module (func $one (result i32) (i32.const 1))'
    ' (func (export "spin") (loop $l (br_if $l (call $one)))))'))
store = wasmtime.Store(engine)
store.set_epoch_deadline(1)
spin = wasmtime.Instance(store, loop, []).exports(store)["spin"]
engine.increment_epoch()  # the deadline is reached: the loop's first epoch check stops it
try:
    spin(store)
    stopped = ""
except wasmtime.Trap as trap:
    stopped = str(trap.trap_code)

host = H.Host()
plugin = host.load(H.PluginConfig(name="b", root_id="body", configuration=sys.argv[2].encode()),
                   open(sys.argv[1], "rb").read())
stream = C.Chain([plugin]).new_stream()
body = b"a secret, " * 1000
out = stream.recv_request_headers(C.http1_request_headers(b"POST", b"/", [(b"host", b"svc")]), False)
out += stream.recv_request_data(body[:4000], False)
out += stream.recv_request_data(body[4000:], True)
data = b"".join(bytes(o.data) for o in out if type(o).__name__ == "SendData")
host.close()
print(json.dumps({
    "selected": meshplug.WASMTIME_LIB, "built": compiled.BUILT_LIBRARY, "library": _ffi.filename.as_posix(),
    "settings": dict(compiled.ENGINE_SETTINGS), "fingerprints": [compiled.ENGINE_FINGERPRINT,
    compiled.BASELINE_FINGERPRINT], "stopped": stopped, "body": data.decode(),
}))
"""
CONFIG = "request.replace=secret|[redacted]\nrequest.append=|req-tail\n"
EXPECTED_BODY = "a [redacted], " * 1000 + "|req-tail"


def run_child(mode: str, **env: str) -> subprocess.CompletedProcess[str]:
    path = str(modules.module("assemblyscript/body").path)
    return subprocess.run(
        [sys.executable, "-c", CHILD, path, CONFIG],
        env={**os.environ, "MESHPLUG_WASMTIME": mode, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def child(mode: str) -> dict[str, Any]:
    if mode == "built" and wasmlib.usable():
        pytest.fail(f"the built library is missing ({wasmlib.usable()}): `make native` builds it")
    proc = run_child(mode)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize(
    ("mode", "built", "inlining"),
    [("stock", False, None), ("built", True, "yes")],
)
def test_each_library_runs_the_agent(mode: str, built: bool, inlining: str | None) -> None:
    got = child(mode)
    assert got["selected"] == mode
    assert got["built"] is built
    assert got["library"].startswith(wasmlib.overlay().as_posix()) is built
    assert got["settings"]["epoch_interruption"] == "1"
    assert got["settings"].get("inlining") == inlining
    assert got["stopped"] == "TrapCode.INTERRUPT"
    assert got["body"] == EXPECTED_BODY


def test_libraries_key_their_artifacts_apart() -> None:
    stock, built = child("stock"), child("built")
    assert not set(stock["fingerprints"]) & set(built["fingerprints"])


@pytest.mark.parametrize(
    ("mode", "env", "message"),
    [
        ("fast", {}, "MESHPLUG_WASMTIME='fast': expected one of stock, built, auto"),
        ("built", {"MESHPLUG_WASMTIME_DIR": "/nonexistent/meshplug-wasmtime"}, "MESHPLUG_WASMTIME=built: no built"),
    ],
)
def test_bad_choice_is_a_clear_error(mode: str, env: dict[str, str], message: str) -> None:
    proc = run_child(mode, **env)
    assert proc.returncode == 1
    assert f"ImportError: {message}" in proc.stderr


SHOW = "import meshplug, meshplug.compiled as c; print(meshplug.WASMTIME_LIB, c.BUILT_LIBRARY)"


@pytest.mark.parametrize(
    ("env", "selected"),
    [
        ({}, "stock"),  # the default, built library or not
        ({"MESHPLUG_WASMTIME": "auto"}, "built"),
        ({"MESHPLUG_WASMTIME": "auto", "MESHPLUG_WASMTIME_DIR": "/nonexistent/meshplug-wasmtime"}, "stock"),
    ],
)
def test_which_library_is_selected(env: dict[str, str], selected: str) -> None:
    if selected == "built" and wasmlib.usable():
        pytest.fail(f"the built library is missing ({wasmlib.usable()}): `make native` builds it")
    base = {k: v for k, v in os.environ.items() if k not in ("MESHPLUG_WASMTIME", "MESHPLUG_WASMTIME_DIR")}
    proc = subprocess.run(
        [sys.executable, "-c", SHOW], env={**base, **env}, capture_output=True, text=True, timeout=60, check=True
    )
    assert proc.stdout.split() == [selected, str(selected == "built")]

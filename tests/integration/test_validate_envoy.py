"""Envoy 1.40 (V8) agrees with meshplug's validator: it refuses the guests we reject for a missing or unknown
ABI marker (and the others it checks), and runs the guests we accept, adding their `x-guest` header."""

from __future__ import annotations

import http.client
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import wasmtime

from meshplug import validate
from tests.guests import catalog
from tests.testbed import envoy, procs, upstream

HTTP_WASM = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"


def _wasm_file(name: str, tmp_path: Path) -> tuple[Path, bytes]:
    data = bytes(wasmtime.wat2wasm((catalog.HERE / f"{name}.wat").read_text()))
    path = tmp_path / f"{name}.wasm"
    path.write_bytes(data)
    return path, data


def _config(name: str, wasm: Path, *, admin: int, port: int, upstream_port: int) -> dict[str, Any]:
    wasm_filter = {
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": HTTP_WASM,
            "config": {
                "name": name,
                "root_id": "",
                "vm_config": {
                    "vm_id": name,
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": str(wasm)}},
                },
            },
        },
    }
    listener = envoy.http_listener("guest", port, cluster="upstream", http_filters=[wasm_filter])
    return envoy.bootstrap(admin, [listener], [envoy.static_cluster("upstream", upstream_port)])


def _envoy_validate(config: dict[str, Any], path: Path) -> subprocess.CompletedProcess[str]:
    cfg = envoy.write_config(config, path)
    return subprocess.run(
        [envoy.envoy_binary(), "--mode", "validate", "-c", str(cfg), "-l", "info", "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("guest", "code", "envoy_says"),
    [
        ("no_marker", validate.Code.NO_ABI_MARKER, "Missing or unknown Proxy-Wasm ABI version"),
        ("unknown_marker_0_x_x", validate.Code.UNKNOWN_ABI_MARKER, "Missing or unknown Proxy-Wasm ABI version"),
        ("no_allocator", validate.Code.NO_ALLOCATOR, "missing malloc function"),
    ],
)
def test_envoy_refuses_what_we_reject(guest: str, code: validate.Code, envoy_says: str, tmp_path: Path) -> None:
    wasm, data = _wasm_file(guest, tmp_path)
    info = validate.describe(data)
    assert info.errors and info.errors[0].code is code

    result = _envoy_validate(
        _config(guest, wasm, admin=procs.free_port(), port=procs.free_port(), upstream_port=procs.free_port()),
        tmp_path / guest,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-2000:]
    assert envoy_says in output
    assert f"Unable to create Wasm plugin {guest}" in output


def test_envoy_refuses_a_header_arity_unlike_the_marker_which_we_warn_about(tmp_path: Path) -> None:
    guest = "abi_0_1_0_three_arg"
    wasm, data = _wasm_file(guest, tmp_path)
    info = validate.describe(data)
    assert info.accepted
    assert info.codes() == (validate.Code.HEADER_ARITY_UNLIKE_MARKER,)
    result = _envoy_validate(
        _config(guest, wasm, admin=procs.free_port(), port=procs.free_port(), upstream_port=procs.free_port()),
        tmp_path / guest,
    )
    assert result.returncode != 0
    assert "Bad function signature for: proxy_on_request_headers" in result.stdout + result.stderr


@pytest.mark.parametrize(
    "guest",
    ["abi_0_2_1", "abi_0_2_0", "abi_0_1_0_two_arg", "entry_start", "entry_start_section", "entry_none",
     "allocator_malloc"],
)  # fmt: skip
def test_envoy_runs_what_we_accept(
    guest: str, tmp_path: Path, upstream_service: Callable[[str], upstream.Service]
) -> None:
    wasm, data = _wasm_file(guest, tmp_path)
    assert validate.validate(data, kind=validate.FilterKind.HTTP).warnings == ()

    echo = upstream_service("echo")
    admin, port = procs.free_port(), procs.free_port()
    config = _config(guest, wasm, admin=admin, port=port, upstream_port=echo.port)
    assert _envoy_validate(config, tmp_path / f"{guest}-validate").returncode == 0
    proxy = envoy.start_envoy(
        envoy.write_config(config, tmp_path / guest), admin_port=admin, log_dir=tmp_path / "logs", name=guest
    )
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", "/hello")
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
        assert resp.status == 200, body[:500]
        assert resp.getheader("x-guest") == guest  # proxy_on_response_headers ran
        seen = json.loads(body)["headers"]
        pairs = seen if isinstance(seen, list) else list(seen.items())
        assert ["x-guest", guest] in [list(p) for p in pairs]  # proxy_on_request_headers ran
        assert ("info", f"guest {guest}: vm started") in proxy.wasm_logs()  # vm_start ran after the entry
    finally:
        proxy.stop()

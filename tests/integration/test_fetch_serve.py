"""The module server on a real socket: bearer and signed-URL auth, ETag/digest headers, 304, 404, HEAD."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from meshplug.fetch import cache
from meshplug.fetch.serve import ModuleServer
from tests.testbed.origin import wasm_module

WASM = wasm_module(41)
SHA = hashlib.sha256(WASM).hexdigest()
TOKEN = "t0ken-for-the-module-server"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ModuleServer]:
    store = cache.Cache(tmp_path / "cache")
    store.put_blob(WASM)
    with ModuleServer(store, token=TOKEN) as srv:
        yield srv


CASES = [
    ("bearer", "", {"Authorization": f"Bearer {TOKEN}"}, "GET", 200),
    ("no auth", "", {}, "GET", 401),
    ("wrong token", "", {"Authorization": "Bearer nope-nope-nope-nope"}, "GET", 401),
    ("basic is not bearer", "", {"Authorization": f"Basic {TOKEN}"}, "GET", 401),
    ("signed url", "signed", {}, "GET", 200),
    ("bad signature", "?sig=" + "0" * 64, {}, "GET", 401),
    ("head", "", {"Authorization": f"Bearer {TOKEN}"}, "HEAD", 200),
    ("etag matches", "", {"Authorization": f"Bearer {TOKEN}", "If-None-Match": f'"sha256:{SHA}"'}, "GET", 304),
]


@pytest.mark.parametrize(("suffix", "headers", "method", "status"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_module_route(server: ModuleServer, suffix: str, headers: dict[str, str], method: str, status: int) -> None:
    url = server.url_for(SHA, signed=True) if suffix == "signed" else server.url_for(SHA) + suffix
    resp = requests.request(method, url, headers=headers, timeout=10)
    assert resp.status_code == status
    if status == 200:
        assert resp.headers["ETag"] == f'"sha256:{SHA}"'
        assert resp.headers["Digest"] == "sha-256=" + base64.b64encode(bytes.fromhex(SHA)).decode()
        assert resp.headers["Content-Type"] == "application/wasm"
        assert int(resp.headers["Content-Length"]) == len(WASM)
        assert resp.content == (WASM if method == "GET" else b"")
    if status == 401:
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    ("path", "status"),
    [
        (f"/modules/sha256/{'0' * 64}", 404),
        ("/modules/sha256/../../etc/passwd", 404),
        ("/modules/sha256/ABC", 404),
        ("/healthz", 200),
    ],
)
def test_other_paths(server: ModuleServer, path: str, status: int) -> None:
    resp = requests.get(server.base_url + path, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert resp.status_code == status


def test_a_corrupted_cache_file_is_not_served(server: ModuleServer, tmp_path: Path) -> None:
    cache.Cache(tmp_path / "cache").blob_path(SHA).write_bytes(b"\0asm tampered")
    resp = requests.get(server.url_for(SHA), headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert resp.status_code == 404


def test_short_tokens_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 16"):
        ModuleServer(cache.Cache(tmp_path), token="short")

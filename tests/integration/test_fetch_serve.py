"""The module server on a real socket: signed URLs over HTTP; over HTTPS also bearer tokens, decided by its `Access`
(401 / 403 as it says); ETag/digest headers, 304, 404, HEAD; a client that never finishes its TLS handshake holds
nobody else up."""

from __future__ import annotations

import base64
import hashlib
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from meshplug import errors
from meshplug.fetch import cache
from meshplug.fetch.serve import ModuleServer, signature
from meshplug.render import model
from tests.testbed import pki, procs
from tests.testbed.origin import wasm_module

WASM = wasm_module(41)
SHA = hashlib.sha256(WASM).hexdigest()
KEY = "signing-key-of-the-module-server"


class Access:
    """Stands in for the operator's TokenReview-based access (tested against the API server elsewhere): token
    ``pod-a`` may fetch SHA, ``pod-b`` is a valid caller that runs no such module, anything else is not valid."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str]] = []

    def check(self, token: str, sha256: str) -> None:
        self.asked.append((token, sha256))
        if token == "pod-b":
            raise errors.ProtocolError("pod b runs no such module", reason="forbidden")
        if token != "pod-a":
            raise errors.ProtocolError("token not accepted", reason="unauthorized")


@pytest.fixture
def store(tmp_path: Path) -> cache.Cache:
    c = cache.Cache(tmp_path / "cache")
    c.put_blob(WASM)
    return c


@pytest.fixture
def plain(store: cache.Cache) -> Iterator[ModuleServer]:
    with ModuleServer(store, signing_key=KEY, access=Access()) as srv:
        yield srv


@pytest.fixture
def tls(store: cache.Cache, tmp_path: Path) -> Iterator[tuple[ModuleServer, Path, Access]]:
    files = pki.serving_pki(tmp_path / "tls", ca_cn="ca", server_cn="modules", dns_names=["localhost"], ip_addresses=[])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(files.cert, files.key)
    access = Access()
    with ModuleServer(store, signing_key=KEY, access=access, ssl_context=context) as srv:
        yield srv, files.ca_cert, access


CASES = [
    ("signed url", "signed", {}, "GET", 200),
    ("bad signature", "?sig=" + "0" * 64, {}, "GET", 401),
    ("no auth", "", {}, "GET", 401),
    ("a valid pod's token", "", {"Authorization": "Bearer pod-a"}, "GET", 200),
    ("a pod that runs no such module", "", {"Authorization": "Bearer pod-b"}, "GET", 403),
    ("an invalid token", "", {"Authorization": "Bearer nope-nope-nope-nope"}, "GET", 401),
    ("basic is not bearer", "", {"Authorization": "Basic pod-a"}, "GET", 401),
    ("head", "", {"Authorization": "Bearer pod-a"}, "HEAD", 200),
    ("etag matches", "", {"Authorization": "Bearer pod-a", "If-None-Match": f'"sha256:{SHA}"'}, "GET", 304),
]


@pytest.mark.parametrize(("suffix", "headers", "method", "status"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_module_route_over_tls(
    tls: tuple[ModuleServer, Path, Access], suffix: str, headers: dict[str, str], method: str, status: int
) -> None:
    server, ca, _ = tls
    url = server.url_for(SHA, signed=True) if suffix == "signed" else server.url_for(SHA) + suffix
    resp = requests.request(method, url.replace("127.0.0.1", "localhost"), headers=headers, timeout=10, verify=str(ca))
    assert resp.status_code == status, resp.text
    if status == 200:
        assert resp.headers["ETag"] == f'"sha256:{SHA}"'
        assert resp.headers["Digest"] == "sha-256=" + base64.b64encode(bytes.fromhex(SHA)).decode()
        assert resp.headers["Content-Type"] == "application/wasm"
        assert int(resp.headers["Content-Length"]) == len(WASM)
        assert resp.content == (WASM if method == "GET" else b"")
    if status == 401:
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")


def test_plain_http_takes_signed_urls_only(plain: ModuleServer) -> None:
    """A bearer token sent in clear text is refused (and never reaches the access check)."""
    assert requests.get(plain.url_for(SHA, signed=True), timeout=10).status_code == 200
    resp = requests.get(plain.url_for(SHA), headers={"Authorization": "Bearer pod-a"}, timeout=10)
    assert resp.status_code == 401 and "TLS only" in resp.text


@pytest.mark.parametrize(
    ("path", "status"),
    [
        (f"/modules/sha256/{'0' * 64}", 404),
        ("/modules/sha256/../../etc/passwd", 404),
        ("/modules/sha256/ABC", 404),
        ("/healthz", 200),
    ],
)
def test_other_paths(tls: tuple[ModuleServer, Path, Access], path: str, status: int) -> None:
    server, ca, _ = tls
    base = server.base_url.replace("127.0.0.1", "localhost")
    resp = requests.get(base + path, headers={"Authorization": "Bearer pod-a"}, timeout=10, verify=str(ca))
    assert resp.status_code == status


def test_a_corrupted_cache_file_is_not_served(plain: ModuleServer, tmp_path: Path) -> None:
    cache.Cache(tmp_path / "cache").blob_path(SHA).write_bytes(b"\0asm tampered")
    assert requests.get(plain.url_for(SHA, signed=True), timeout=10).status_code == 404


def test_short_signing_keys_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 16"):
        ModuleServer(cache.Cache(tmp_path), signing_key="short")


def test_a_stalled_handshake_holds_no_one_up(tls: tuple[ModuleServer, Path, Access]) -> None:
    server, ca, _ = tls
    with socket.create_connection(("127.0.0.1", server.port)):  # connects, never says hello
        t0 = time.monotonic()
        resp = requests.get(
            server.url_for(SHA).replace("127.0.0.1", "localhost"),
            headers={"Authorization": "Bearer pod-a"},
            timeout=10,
            verify=str(ca),
        )
        assert resp.status_code == 200 and time.monotonic() - t0 < 5


def test_compiled_route_serves_the_operators_artifacts_with_the_modules_access(
    store: cache.Cache, tmp_path: Path
) -> None:
    key = f"{SHA}.50.0.1.{'b' * 16}.cwasm"
    root = tmp_path / "compiled"
    (root / SHA[:2]).mkdir(parents=True)
    (root / SHA[:2] / key).write_bytes(b"MPWASM1\n artifact bytes")
    with ModuleServer(store, signing_key=KEY, compiled_root=root) as srv:
        ref = model.ModuleServer(host="127.0.0.1", port=srv.port, token=KEY)
        signed = requests.get(ref.compiled_url(key), timeout=10)
        assert signed.status_code == 200 and signed.content == b"MPWASM1\n artifact bytes"
        digest = base64.b64encode(hashlib.sha256(signed.content).digest()).decode()
        assert signed.headers["Digest"] == f"sha-256={digest}"
        bare = f"{srv.base_url}/compiled/{key}"
        assert requests.get(bare, timeout=10).status_code == 401
        assert requests.get(f"{bare}?sig={signature(KEY, SHA)}", timeout=10).status_code == 401  # the module's sig
        other = f"{srv.base_url}/compiled/{'0' * 64}.50.0.1.{'b' * 16}.cwasm"
        assert requests.get(f"{other}?sig={signature(KEY, other.rpartition('/')[2])}", timeout=10).status_code == 404
        assert requests.get(f"{srv.base_url}/compiled/../{SHA[:2]}/{key}", timeout=10).status_code == 404
    with ModuleServer(store, signing_key=KEY) as srv:  # no artifact root: none served
        assert requests.get(f"{srv.base_url}/compiled/{key}?sig={signature(KEY, key)}", timeout=10).status_code == 404


def test_downloads_are_heard_only_once_complete(tmp_path: Path) -> None:
    """``on_request`` hears each module GET (client, sha256, status): a refusal at once, a 200 only once the whole
    body went out; a client that hangs up midway downloaded nothing (the istio plane counts a pod loaded on it)."""
    big = wasm_module(1) + bytes(8 * 1024 * 1024)  # more than the socket buffers hold: the server blocks writing
    store = cache.Cache(tmp_path / "cache")
    store.put_blob(big)
    sha = hashlib.sha256(big).hexdigest()
    heard: list[tuple[str, str, int]] = []
    with ModuleServer(store, signing_key=KEY, on_request=lambda *e: heard.append(e)) as srv:
        assert requests.get(srv.url_for(sha), timeout=10).status_code == 401
        assert heard == [("127.0.0.1", sha, 401)]
        path = srv.url_for(sha, signed=True).split(f":{srv.port}", 1)[1]
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as conn:
            conn.sendall(f"GET {path} HTTP/1.1\r\nHost: modules\r\n\r\n".encode())
            assert conn.recv(64).split(b"\r\n")[0].endswith(b" 200 OK")  # the head is out, the body is not
            assert heard == [("127.0.0.1", sha, 401)]
        assert len(requests.get(srv.url_for(sha, signed=True), timeout=30).content) == len(big)
        procs.wait_until(lambda: len(heard) > 1, timeout=10, what="the complete download heard")
        assert heard == [("127.0.0.1", sha, 401), ("127.0.0.1", sha, 200)]

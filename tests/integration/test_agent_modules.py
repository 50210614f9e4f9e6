"""The agent fetches pushed modules through meshplug.fetch: the operator's module server (over HTTPS with the
token file's bearer token, checked against the CA file; or a signed URL), sha256 pinning, the content cache under
the agent's state directory.

A real `meshplug agent` process; the module server is meshplug.fetch.serve's (real HTTPS on a free port, in this
process, with an access check that accepts one token: the operator's TokenReview-based check runs against the
API server in test_operator_agent.py); nginx is the upstream. The guest module (tests/guests/abi_0_2_0.wat) adds
`x-guest`.
"""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import wasmtime

from meshplug import errors, protocol
from meshplug.fetch import cache as fetch_cache
from meshplug.fetch import serve
from tests.testbed import agent as tb_agent
from tests.testbed import nginx as tb_nginx
from tests.testbed import pki, procs

GUESTS = Path(__file__).resolve().parents[1] / "guests"
PUSH_TOKEN = "push-token-0123456789"
MODULE_TOKEN = "module-token-0123456789"


class OneToken:
    def check(self, token: str, sha256: str) -> None:
        if token != MODULE_TOKEN:
            raise errors.ProtocolError("token not accepted", reason="unauthorized")


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("modules")


@pytest.fixture(scope="module")
def module(work: Path) -> tuple[bytes, str]:
    data = bytes(wasmtime.wat2wasm((GUESTS / "abi_0_2_0.wat").read_text()))
    return data, hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def tls(work: Path) -> pki.ServingPki:
    return pki.serving_pki(work / "tls", ca_cn="ca", server_cn="modules", dns_names=[], ip_addresses=["127.0.0.1"])


@pytest.fixture(scope="module")
def server(work: Path, module: tuple[bytes, str], tls: pki.ServingPki) -> Iterator[serve.ModuleServer]:
    cache = fetch_cache.Cache(work / "operator-cache")
    cache.put_blob(module[0])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls.cert, tls.key)
    with serve.ModuleServer(cache, signing_key="k" * 32, access=OneToken(), ssl_context=context) as srv:
        yield srv


@pytest.fixture(scope="module")
def upstream(work: Path) -> Iterator[procs.Proc]:
    proc = tb_nginx.start_nginx(log_dir=work / "logs")
    yield proc
    proc.stop()


def _agent(
    tmp_path: Path,
    upstream: procs.Proc,
    server: serve.ModuleServer,
    module_token: str,
    ca: Path,
    *,
    guard: dict[str, Any] | None = None,
) -> tb_agent.Agent:
    """The agent; ``guard``: its SSRF settings (default: the test bed's loopback opt-in)."""
    (tmp_path / "push-token").write_text(PUSH_TOKEN)
    (tmp_path / "module-token").write_text(module_token + "\n")
    raw = tb_agent.base_config(
        port=procs.free_port(),
        admin_port=procs.free_port(),
        clusters={"upstream": upstream.ports["http"]},
        push={
            "address": "127.0.0.1",
            "port": procs.free_port(),
            "token_file": str(tmp_path / "push-token"),
            "allow_plaintext": True,
        },
        state_dir=tmp_path / "state",
    )
    raw["modules"] = {
        # the module server of this test listens on 127.0.0.1
        **({"allow_loopback": True} if guard is None else guard),
        "server": {"url": server.base_url, "token_file": str(tmp_path / "module-token"), "ca_file": str(ca)},
    }
    return tb_agent.start_agent(raw, work_dir=tmp_path / "cfg", log_dir=tmp_path)


def _push(agent: tb_agent.Agent, version: str, url: str, sha256: str) -> protocol.Reply:
    resource = protocol.ExtensionConfig(name="guest", root_id="", url=url, sha256=sha256)
    return agent.push(version, [resource], token=PUSH_TOKEN)


def _served_by(agent: tb_agent.Agent) -> str | None:
    return tb_agent.http_request(agent.port, "GET", "/")[1].get("x-guest")


def test_module_server_with_bearer_token_then_signed_url(
    tmp_path: Path, upstream: procs.Proc, server: serve.ModuleServer, module: tuple[bytes, str], tls: pki.ServingPki
) -> None:
    data, sha = module
    agent = _agent(tmp_path, upstream, server, MODULE_TOKEN, tls.ca_cert)
    try:
        reply = _push(agent, "v1", server.url_for(sha), sha)
        assert reply.ack, reply.error_detail
        assert _served_by(agent) == "abi_0_2_0"
        # the fetched module sits in the content cache under the state directory
        blobs = [p for p in (tmp_path / "state" / "cache").rglob("*") if p.is_file() and p.read_bytes() == data]
        assert blobs
        # a signed URL needs no token (and a version change makes the agent load it again)
        reply = _push(agent, "v2", server.url_for(sha, signed=True), sha)
        assert reply.ack, reply.error_detail
    finally:
        agent.stop()


def test_wrong_module_token_or_sha256_is_a_nack(
    tmp_path: Path, upstream: procs.Proc, server: serve.ModuleServer, module: tuple[bytes, str], tls: pki.ServingPki
) -> None:
    _, sha = module
    agent = _agent(tmp_path, upstream, server, "not-the-module-token", tls.ca_cert)
    try:
        reply = _push(agent, "v1", server.url_for(sha), sha)
        assert not reply.ack and reply.error_detail is not None
        # the module server refused the fetch (a refused push would name no resource)
        assert reply.error_detail.resource == "guest"
        assert "HTTP 401" in reply.error_detail.message
        assert reply.error_detail.reason == "unauthorized"
        # served the signed URL, but pinned to another digest: refused before anything is loaded
        reply = _push(agent, "v2", server.url_for(sha, signed=True), "0" * 64)
        assert not reply.ack and reply.error_detail is not None
        assert reply.error_detail.reason in ("checksum_mismatched", "not_found")
        assert agent.config_dump()["version_info"] == protocol.STATIC_VERSION
    finally:
        agent.stop()


def test_a_module_server_the_ca_file_does_not_vouch_for_is_a_nack(
    tmp_path: Path, upstream: procs.Proc, server: serve.ModuleServer, module: tuple[bytes, str]
) -> None:
    """The bearer token never reaches a server whose certificate the operator's CA did not issue."""
    _, sha = module
    other = pki.serving_pki(tmp_path / "other", ca_cn="other", server_cn="x", dns_names=[], ip_addresses=["127.0.0.1"])
    agent = _agent(tmp_path, upstream, server, MODULE_TOKEN, other.ca_cert)
    try:
        reply = _push(agent, "v1", server.url_for(sha), sha)
        assert not reply.ack and reply.error_detail is not None
        assert reply.error_detail.resource == "guest"
        assert "certificate" in reply.error_detail.message.lower(), reply.error_detail.message
    finally:
        agent.stop()


@pytest.mark.parametrize(
    "guard",
    [{}, {"allow_loopback": True, "block_cidrs": ["127.0.0.0/8"]}],
    ids=["default-refuses-loopback", "block-cidrs-refuse-more"],
)
def test_the_ssrf_guard_refuses_loopback_by_default_and_blocked_cidrs(  # noqa: PLR0917 - pytest fixtures
    tmp_path: Path,
    upstream: procs.Proc,
    server: serve.ModuleServer,
    module: tuple[bytes, str],
    tls: pki.ServingPki,
    guard: dict[str, Any],
) -> None:
    """An agent's config without ``modules.allow_loopback`` (what the chart injects by default) refuses a module on
    127.0.0.1 before connecting, as ``modules.block_cidrs`` refuses its networks; the allowed case is above."""
    _, sha = module
    agent = _agent(tmp_path, upstream, server, MODULE_TOKEN, tls.ca_cert, guard=guard)
    try:
        reply = _push(agent, "v1", server.url_for(sha), sha)
        assert not reply.ack and reply.error_detail is not None
        assert reply.error_detail.resource == "guest"
        assert "127.0.0.1" in reply.error_detail.message and "blocked address" in reply.error_detail.message
        assert reply.error_detail.reason == "blocked", reply.error_detail
        assert _served_by(agent) is None
    finally:
        agent.stop()

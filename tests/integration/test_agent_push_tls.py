"""The push channel's mutual TLS, against a real agent, with certificates the operator's CA code issues
(`meshplug.controller.pki`) and the operator's own push client (`meshplug.controller.agents.push`).

Accepted: the operator's client certificate plus a token of the token file (the older one of a rotation too).
Refused, with nothing applied: no client certificate, another CA's, a certificate of our CA issued for serving
(another agent's), a client certificate of our CA with another name, plain HTTP, a wrong token (401). The operator
refuses an agent whose certificate names another namespace. Rotated files apply to the next connection without a
restart; an agent configured without TLS and without ``allow_plaintext`` does not start.
"""

from __future__ import annotations

import datetime
import http.client
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from meshplug import protocol
from meshplug.controller import agents, identity, pki
from tests.testbed import agent as tb_agent
from tests.testbed import procs

DAY = datetime.timedelta(days=1)
NS = "shop"


@dataclass
class Certs:
    ca: pki.Authority
    operator: pki.Issued
    dir: Path

    def context(self, issued: pki.Issued | None, ca: pki.Authority | None = None) -> ssl.SSLContext:
        """A client context trusting ``ca`` (default ours), presenting ``issued`` (None: no certificate)."""
        context = ssl.create_default_context(cadata=(ca or self.ca).cert_pem.decode())
        if issued is not None:
            identity.load_chain(context, issued)
        return context


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    directory = tmp_path_factory.mktemp("tls")
    ca = pki.Authority.generate("meshplug-operator-ca", days=10)
    served = ca.issue("meshplug-agent", client=False, validity=DAY, dns_names=[identity.agent_server_name(NS)])
    (directory / "ca.crt").write_bytes(ca.cert_pem)
    (directory / "tls.crt").write_bytes(served.cert_pem)
    (directory / "tls.key").write_bytes(served.key_pem)
    (directory / "token").write_text("new-token\nold-token\n")
    return Certs(ca, ca.issue(identity.OPERATOR_NAME, client=True, validity=DAY), directory)


@pytest.fixture(scope="module")
def agent(certs: Certs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tb_agent.Agent]:
    work = tmp_path_factory.mktemp("agent")
    raw = tb_agent.base_config(
        port=procs.free_port(),
        admin_port=procs.free_port(),
        clusters={"upstream": procs.free_port()},
        push=tb_agent.injected_push(certs.dir, address="127.0.0.1", port=procs.free_port()),
    )
    a = tb_agent.start_agent(raw, work_dir=work, log_dir=work)
    yield a
    a.stop()


def target(agent: tb_agent.Agent) -> agents.Target:
    assert agent.push_port is not None
    return agents.Target(namespace=NS, pod="p", ip="127.0.0.1", port=agent.push_port)


def creds(certs: Certs, tokens: tuple[str, ...] = ("new-token",), **kw: object) -> identity.PushCredentials:
    context = kw.get("context", certs.context(certs.operator))
    name = str(kw.get("server_name", identity.agent_server_name(NS)))
    return identity.PushCredentials(tokens=tokens, context=context, server_name=name)  # type: ignore[arg-type]


def test_the_operator_pushes_with_its_certificate_and_token(certs: Certs, agent: tb_agent.Agent) -> None:
    out = agents.push(target(agent), "v1", (), creds(certs))
    assert out.result is agents.Result.ACK, out
    # mid-rotation: the operator holds a token the agent's mounted file does not have yet, and the older one
    out = agents.push(target(agent), "v2", (), creds(certs, ("newest-token", "new-token")))
    assert out.result is agents.Result.ACK, out
    # the older token of the agent's file (the previous one of a rotation) is accepted too
    assert agents.push(target(agent), "v3", (), creds(certs, ("old-token",))).result is agents.Result.ACK


def test_a_wrong_token_is_401_even_over_mutual_tls(certs: Certs, agent: tb_agent.Agent) -> None:
    before = agent.config_dump()["version_info"]
    out = agents.push(target(agent), "nope", (), creds(certs, ("wrong",)))
    assert out.result is agents.Result.UNAUTHORIZED, out
    assert agent.config_dump()["version_info"] == before


def _refused(certs: Certs, agent: tb_agent.Agent, context: ssl.SSLContext) -> None:
    before = agent.config_dump()["version_info"]
    out = agents.push(target(agent), "refused", (), creds(certs, context=context))
    assert out.result is agents.Result.UNREACHABLE and out.reason in ("AgentTLSFailed", "AgentUnreachable"), out
    assert agent.config_dump()["version_info"] == before


def test_no_client_certificate_is_refused(certs: Certs, agent: tb_agent.Agent) -> None:
    _refused(certs, agent, certs.context(None))


def test_a_client_certificate_of_another_ca_is_refused(certs: Certs, agent: tb_agent.Agent) -> None:
    other = pki.Authority.generate("another-ca", days=1)
    _refused(certs, agent, certs.context(other.issue(identity.OPERATOR_NAME, client=True, validity=DAY)))


def test_another_agents_serving_certificate_is_not_a_client_certificate(certs: Certs, agent: tb_agent.Agent) -> None:
    """Issued by our CA, but for serving (serverAuth only): a compromised agent cannot push to its peers."""
    stolen = certs.ca.issue("meshplug-agent", client=False, validity=DAY, dns_names=["meshplug-agent.other"])
    _refused(certs, agent, certs.context(stolen))


def test_a_client_certificate_with_another_name_is_refused(certs: Certs, agent: tb_agent.Agent) -> None:
    _refused(certs, agent, certs.context(certs.ca.issue("somebody-else", client=True, validity=DAY)))


def test_plain_http_to_the_push_port_gets_nothing(certs: Certs, agent: tb_agent.Agent) -> None:
    assert agent.push_port is not None
    conn = http.client.HTTPConnection("127.0.0.1", agent.push_port, timeout=10)
    try:
        conn.request("PUT", protocol.PUSH_PATH, body=b"{}", headers=protocol.bearer("new-token"))
        with pytest.raises((OSError, http.client.HTTPException)):
            conn.getresponse().read()
    finally:
        conn.close()


def test_the_operator_refuses_an_agent_of_another_namespace(certs: Certs, agent: tb_agent.Agent) -> None:
    out = agents.push(target(agent), "x", (), creds(certs, server_name=identity.agent_server_name("bank")))
    assert out.result is agents.Result.UNREACHABLE and out.reason == "AgentTLSFailed", out


def _served_serial(port: int, certs: Certs) -> int:
    context = certs.context(certs.operator)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=identity.agent_server_name(NS)) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return pki.load_cert(ssl.DER_cert_to_PEM_cert(der).encode()).serial_number


def test_rotated_files_apply_to_the_next_connection(certs: Certs, agent: tb_agent.Agent) -> None:
    assert agent.push_port is not None
    first = _served_serial(agent.push_port, certs)
    renewed = certs.ca.issue("meshplug-agent", client=False, validity=DAY, dns_names=[identity.agent_server_name(NS)])
    # as the kubelet updates a mounted Secret: new files swapped in
    for name, data in (("tls.key", renewed.key_pem), ("tls.crt", renewed.cert_pem)):
        tmp = certs.dir / f".{name}.new"
        tmp.write_bytes(data)
        tmp.replace(certs.dir / name)
    second = _served_serial(agent.push_port, certs)
    assert second != first and second == pki.load_cert(renewed.cert_pem).serial_number
    assert agents.push(target(agent), "after-rotation", (), creds(certs)).result is agents.Result.ACK


def test_an_agent_without_tls_or_the_plaintext_switch_does_not_start(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("t\n")
    raw = tb_agent.base_config(
        port=procs.free_port(),
        admin_port=procs.free_port(),
        clusters={"upstream": procs.free_port()},
        push={"address": "127.0.0.1", "port": procs.free_port(), "token_file": str(tmp_path / "token")},
    )
    with pytest.raises(RuntimeError, match="exited with 2") as info:
        tb_agent.start_agent(raw, work_dir=tmp_path, log_dir=tmp_path, timeout=30)
    assert "push.allow_plaintext: true" in str(info.value)

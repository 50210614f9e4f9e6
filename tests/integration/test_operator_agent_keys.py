"""Signing keys end to end on the agent plane: `meshplug operator` (a process) against the real kube-apiserver, the
real cosign's signatures in the test bed's registry, and an injected pod's agent (a real process) run as the
injection webhook runs it -- ``--trusted-keys`` on its namespace's agent Secret, ``--require-signatures`` (chart
``agent.requireSignatures``) -- with what the kubelet mounts, mounted again when the Secret changes (the test bed
has no kubelet: the test is its Secret sync, after the operator wrote the Secret).

A key rotation: a module signed with the new key while the pod's Secret holds only the old key is a NACK
(``signature_untrusted`` naming both keys) in the plugin's status and an Event, the old module serving; the operator
restarted with the new key beside the old updates the Secret, and the refusal heals by itself once the pod's mount
has it (the operator pushes such a refusal again on its backoff: nothing the operator watches changes). The old
key removed, what runs keeps running. Every key removed: the Secret says "none" in so many words, and this agent,
which requires signatures, refuses the next set saying it trusts no key; the last good set keeps serving.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshplug import fetch, protocol
from meshplug.controller import identity
from tests.guests import minimal
from tests.testbed import agent as agent_mod
from tests.testbed import agentplane, procs
from tests.testbed import kube as kube_mod
from tests.testbed import operator as operator_mod
from tests.testbed.fixtures_cosign import CosignKit
from tests.testbed.registry import Registry

OLD_SIGNED = minimal.passthrough('(data (i32.const 2048) "signed under the old key")')
NEW_SIGNED = minimal.passthrough('(data (i32.const 2048) "signed under the new key")')
_hosts = itertools.count(200)  # this module's pods: 127.0.0.200 and up


def _key_id(pub: Path) -> str:
    return fetch.load_public_key(pub.read_bytes()).key_id


class Bed(agentplane.AgentPlane):
    registry: Registry

    @property
    def ports(self) -> tuple[int, int]:
        """The module server's ports: a restarted operator keeps them (as behind its Service)."""
        return self.op.module_port, self.op.module_tls_port

    def restart_operator(self, *keys: Path, require: bool = True) -> None:
        """The operator again (a chart upgrade rolls its Deployment), with these trusted keys."""
        ports = self.ports
        self.op.stop()
        self.op = _operator(self.kube, self.ns, self.work, self.registry, keys, require=require, ports=ports)

    def secret_keys(self) -> bytes:
        status, secret = self.kube.request("GET", f"/api/v1/namespaces/{self.ns}/secrets/meshplug-agent")
        assert status == 200, secret
        return base64.b64decode(secret["data"][identity.AGENT_TRUSTED_KEYS])

    def kubelet_sync(self, pod: str, wanted: bytes) -> None:
        """Once the operator wrote ``wanted`` into the agent Secret, the pod's mount gets it (as the kubelet's
        periodic Secret sync does, a while later)."""
        procs.wait_until(lambda: self.secret_keys() == wanted, timeout=60, what="the operator's Secret update")
        agent_mod.mount_identity(self.kube, self.ns, pod, self.mounted(pod))


def _operator(
    kube: kube_mod.Kube,
    ns: str,
    work: Path,
    registry: Registry,
    keys: tuple[Path, ...],
    *,
    require: bool,
    ports: tuple[int, int] | None = None,
) -> operator_mod.Operator:
    extra = [f"--insecure-registry={registry.host}", *(f"--trusted-key={k}" for k in keys)]
    return operator_mod.start_operator(
        kube.kubeconfig,
        work,
        namespaces=[ns],
        extra=[*extra, *(["--require-signatures"] if require else [])],
        module_ports=ports,
    )


@pytest.fixture
def bed(  # noqa: PLR0917 (pytest fixtures)
    kube: kube_mod.Kube,
    wasmplugin_crd: str,
    kube_namespace: str,
    registries: dict[str, Registry],
    cosign: CosignKit,
    tmp_path: Path,
) -> Iterator[Bed]:
    registry = registries["plain"]
    for tag, data, signer in (("old", OLD_SIGNED, cosign.signer), ("new", NEW_SIGNED, cosign.other)):
        digest = registry.push_layout("wasm-content-single-layer", "rotation/app", tag, data)
        cosign.cosign.sign(registry, f"rotation/app@{digest}", signer)
    (tmp_path / "modules").mkdir()
    op = _operator(kube, kube_namespace, tmp_path, registry, (cosign.signer.pub,), require=True)
    b = Bed(kube, kube_namespace, tmp_path / "modules", tmp_path, op, _hosts)
    b.registry = registry
    try:
        yield b
    finally:
        b.stop()
        print(b.op.proc.log()[-8000:])


def _failing(bed: Bed, name: str) -> dict[str, Any]:
    st = bed.wait_ready(name, "False", "AgentNACK", "0/1")
    failing: dict[str, Any] = st["failingPods"][0]
    assert failing["name"] == "a", failing
    return failing


def test_a_key_rotation_and_removing_every_key(bed: Bed, cosign: CosignKit) -> None:
    old_pub, new_pub = cosign.signer.pub, cosign.other.pub
    old, new = _key_id(old_pub), _key_id(new_pub)
    keys_file = bed.mounted("a") / identity.AGENT_TRUSTED_KEYS
    agent = bed.pod("a", {"app": "rot"}, args=("--trusted-keys", str(keys_file), "--require-signatures"))
    assert agent is not None
    assert "every pushed module must be signed (--require-signatures)" in agent.proc.log()
    spec = {"selector": {"matchLabels": {"app": "rot"}}, "dataPlane": "agent"}
    bed.plugin("app", {**spec, "url": bed.registry.url("rotation/app", "old")})
    assert bed.wait_ready("app", "True", "Confirmed", "1/1")["digest"] == f"sha256:{_sha(OLD_SIGNED)}"
    name = f"{bed.ns}.app"

    # the publisher signs with the new key; the plugin names it, the operator verifies it -- but the pod's Secret
    # still holds the old key only: the agent refuses, the old module keeps serving
    bed.patch_plugin("app", {"url": bed.registry.url("rotation/app", "new"), "verificationKey": new_pub.read_text()})
    failing = _failing(bed, "app")
    assert failing["message"].startswith(f"signature_untrusted: {name}: module sha256:{_sha(NEW_SIGNED)}: "), failing
    assert (
        f"the push's signature key {new} is not one of the agent's trusted keys ({old}; {keys_file})"
        in (failing["message"])
    ), failing
    procs.wait_until(
        lambda: any(r == "AgentNACK" and f"signature key {new} is not one" in m for _, r, m, _ in bed.events("app")),
        timeout=30,
        what="an AgentNACK Event naming the new key",
    )
    assert _running(agent) == [(name, _sha(OLD_SIGNED))]

    # rotation, step 1: the new key beside the old one (a chart upgrade restarts the operator). The new operator
    # pushes at once -- to an agent whose mount has not caught up: refused again -- and again on its backoff
    bed.op.stop()
    nacks = agent.proc.log().count("NACK ")
    bed.op = _operator(bed.kube, bed.ns, bed.work, bed.registry, (old_pub, new_pub), require=True, ports=bed.ports)
    procs.wait_until(lambda: agent.proc.log().count("NACK ") > nacks, timeout=60, what="the new operator's push")
    bed.kubelet_sync("a", old_pub.read_bytes() + new_pub.read_bytes())
    assert bed.wait_ready("app", "True", "Confirmed", "1/1")["digest"] == f"sha256:{_sha(NEW_SIGNED)}"
    assert _running(agent) == [(name, _sha(NEW_SIGNED))]
    assert f"now 2 trusted key(s) from {keys_file}: {old}, {new}" in agent.proc.log()

    # step 2: the old key removed; what runs (signed under the new key) keeps running, a change still loads
    bed.restart_operator(new_pub)
    bed.kubelet_sync("a", new_pub.read_bytes())
    bed.patch_plugin("app", {"pluginConfig": {"step": 2}})
    bed.wait_ready("app", "True", "Confirmed", "1/1")
    assert _running(agent) == [(name, _sha(NEW_SIGNED))]

    # every key removed (and the operator no longer requires signatures): the Secret says "none". This agent
    # requires signatures: the next set is refused, saying why; the last good one keeps serving
    bed.restart_operator(require=False)
    bed.kubelet_sync("a", protocol.TRUSTED_KEYS_NONE)
    procs.wait_until(
        lambda: (
            f"identity: agent Secret {bed.ns}/meshplug-agent: the operator trusts no signing key now"
            in (bed.op.proc.log())
        ),
        timeout=30,
        what="the operator's warning",
    )
    bed.patch_plugin("app", {"pluginConfig": {"step": 3}})
    failing = _failing(bed, "app")
    assert failing["message"] == (
        f"signature_untrusted: {name}: module sha256:{_sha(NEW_SIGNED)}: the push's signature key {new} cannot be "
        "trusted: "
        f"this agent requires signed modules (--require-signatures) and trusts no key ({keys_file} says the "
        "operator trusts none)"
    ), failing
    assert _running(agent) == [(name, _sha(NEW_SIGNED))]
    assert f"trusted keys file {keys_file} now says the operator trusts no key (was: {new})" in agent.proc.log()


def _running(agent: agent_mod.Agent) -> list[tuple[str, str]]:
    return [(p["name"], p["sha256"]) for p in agent.config_dump()["plugins"]]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()

"""The agent verifies a signed module again: modules signed by the real cosign in the test bed's
registry, fetched and verified by the operator's own code (`meshplug.fetch.Fetcher` with a key, its content cache
served by `meshplug.fetch.serve.ModuleServer` over HTTPS with a bearer token, as the operator does), pushed to a
real `meshplug agent` with the evidence `render.agent.signature_of` makes.

Signed modules in cosign's tag layout (a wasm content layer), its bundle layout (a CNCF wasm artifact), an OCI
image whose layer is a tar.gz (the agent checks the layer blob and unpacks it) and a signed image index (the
manifest it leads to checked too) load; a signed resource's precompiled artifact is never fetched. Each broken
link -- an altered signature, another key, an altered or swapped manifest, a signature for another image, an index
leading to another manifest, another module, another layer blob, an evidence version the agent does not know -- is
a NACK ``signature_invalid`` naming it, and the agent keeps serving its last good set, also after a restart (which
verifies the set from its state directory again) and in every worker of an agent with --concurrency.

The agent's own list of trusted keys (`--trusted-keys FILE`, $MESHPLUG_TRUSTED_KEYS): a module validly signed by
the real cosign under a key outside the list, or a push naming another key, is a NACK ``signature_untrusted``
(the last good set stays, also across a restart); a wrong signature under a trusted key is still
``signature_invalid``; a key added to the file is trusted without a restart. Without a list the agent trusts
the key a push names, and its start-up log says so.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import re
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from meshplug import protocol
from meshplug.fetch import Artifact, load_public_key, serve
from meshplug.render import agent as agent_render
from meshplug.render import model
from tests.guests import minimal
from tests.integration.test_agent_modules import MODULE_TOKEN, PUSH_TOKEN, OneToken
from tests.integration.test_fetch_oci import fetcher_for
from tests.testbed import agent as tb_agent
from tests.testbed import pki, procs
from tests.testbed.fixtures_cosign import CosignKit
from tests.testbed.registry import OCI_MANIFEST, Registry


def _module(tag: str) -> bytes:
    return minimal.passthrough(f'(data (i32.const 2048) "{tag}")')


@dataclass(frozen=True)
class Signed:
    """One signed image as the operator verified it: the module, and its resource in a push."""

    module: bytes
    artifact: Artifact
    resource: protocol.ExtensionConfig


@dataclass
class Bed:
    registry: Registry
    cosign: CosignKit
    server: serve.ModuleServer
    view: model.ModuleServer
    signed: dict[str, Signed]  # by name: tag, bundle, image, other (an image signed like "tag"), index, foreign
    #                            (signed like "tag" by cosign's other key)
    ca_file: Path  # the module server's CA


def _resource(name: str, artifact: Artifact, view: model.ModuleServer) -> protocol.ExtensionConfig:
    module = model.Module(sha256=artifact.sha256, data=artifact.data, signature=artifact.signature)
    return protocol.ExtensionConfig(
        name=name,
        root_id="",
        url=view.agent_url(artifact.sha256),
        sha256=artifact.sha256,
        signature=agent_render.signature_of(module, view),
    )


def _push_index(registry: Registry, repo: str, manifest_digest: str) -> str:
    """Tag ``v1`` of ``repo`` becomes an OCI image index whose wasm entry is ``manifest_digest``; its digest."""
    resp = registry.api("GET", f"/v2/{repo}/manifests/{manifest_digest}", headers={"Accept": OCI_MANIFEST})
    assert resp.status_code == 200, resp.text
    entry = {"mediaType": OCI_MANIFEST, "digest": manifest_digest, "size": len(resp.content)}
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{**entry, "platform": {"os": "wasip1", "architecture": "wasm"}}],
    }
    return registry.push_manifest(repo, "v1", index)


@pytest.fixture(scope="module")
def bed(cosign: CosignKit, registries: dict[str, Registry], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    registry = registries["plain"]
    work = tmp_path_factory.mktemp("agent-signatures")
    pushes = {  # name: (layout, signed in cosign's bundle layout)
        "tag": ("wasm-content-single-layer", False),
        "bundle": ("cncf-wasm-artifact", True),
        "image": ("oci-image", False),
        "other": ("wasm-content-single-layer", False),
        "index": ("oci-image", False),
        "foreign": ("wasm-content-single-layer", False),  # signed under cosign.other
    }
    fetcher = fetcher_for(registry, work)  # the operator's fetcher; its cache is what the module server serves
    tls = pki.serving_pki(work / "tls", ca_cn="ca", server_cn="modules", dns_names=[], ip_addresses=["127.0.0.1"])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls.cert, tls.key)
    key = load_public_key(cosign.signer.pub.read_bytes())
    other_key = load_public_key(cosign.other.pub.read_bytes())
    try:
        artifacts = {}
        for name, (layout, bundle) in pushes.items():
            digest = registry.push_layout(layout, f"agentsig/{name}", "v1", _module(f"signed {name}"))
            if name == "index":  # an image index (signed) leading to that image
                digest = _push_index(registry, f"agentsig/{name}", digest)
            signer, verify = (cosign.other, other_key) if name == "foreign" else (cosign.signer, key)
            cosign.cosign.sign(registry, f"agentsig/{name}@{digest}", signer, bundle=bundle)
            artifacts[name] = fetcher.fetch(registry.url(f"agentsig/{name}", "v1"), keys=[verify])
        with serve.ModuleServer(fetcher.cache, signing_key="k" * 32, access=OneToken(), ssl_context=context) as srv:
            port = int(srv.base_url.rsplit(":", 1)[1])
            view = model.ModuleServer(host="127.0.0.1", port=port, scheme="https", agent_port=port)
            signed = {
                name: Signed(_module(f"signed {name}"), art, _resource(name, art, view))
                for name, art in artifacts.items()
            }
            yield Bed(registry, cosign, srv, view, signed, tls.ca_cert)
    finally:
        fetcher.close()


def _agent(
    tmp_path: Path,
    bed: Bed,
    state: Path,
    *,
    concurrency: int = 1,
    args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> tb_agent.Agent:
    (tmp_path / "push-token").write_text(PUSH_TOKEN)
    (tmp_path / "module-token").write_text(MODULE_TOKEN + "\n")
    raw = tb_agent.base_config(
        port=procs.free_port(),
        admin_port=procs.free_port(),
        clusters={"upstream": procs.free_port()},
        push={
            "address": "127.0.0.1",
            "port": procs.free_port(),
            "token_file": str(tmp_path / "push-token"),
            "allow_plaintext": True,
        },
        state_dir=state,
    )
    raw["modules"] = {
        "allow_loopback": True,  # the module server of this test listens on 127.0.0.1
        "server": {
            "url": bed.server.base_url,
            "token_file": str(tmp_path / "module-token"),
            "ca_file": str(bed.ca_file),
        },
    }
    return tb_agent.start_agent(
        raw,
        work_dir=tmp_path / "cfg",
        log_dir=tmp_path,
        env={"MESHPLUG_CACHE": str(state), **(env or {})},
        concurrency=concurrency,
        args=args,
    )


def _push_json(agent: tb_agent.Agent, doc: dict[str, Any], status: int = 200) -> protocol.Reply:
    """The agent's reply; ``status`` 400: a push it cannot decode (still a NACK saying why)."""
    got, reply = agent.push_body(json.dumps(doc).encode(), token=PUSH_TOKEN, timeout=120)
    assert got == status, (got, reply)
    return reply


def _push(agent: tb_agent.Agent, version: str, *resources: protocol.ExtensionConfig) -> protocol.Reply:
    return _push_json(agent, protocol.Push(version, f"n-{version}", tuple(resources)).to_json())


def _running(agent: tb_agent.Agent) -> list[tuple[str, str]]:
    dump = agent.config_dump()
    return [(p["name"], p["sha256"]) for p in dump["plugins"]]


def _sig(res: protocol.ExtensionConfig) -> protocol.ModuleSignature:
    assert res.signature is not None
    return res.signature


def _with_sig(res: protocol.ExtensionConfig, **changes: Any) -> protocol.ExtensionConfig:
    return dataclasses.replace(res, signature=dataclasses.replace(_sig(res), **changes))


def _flip(data: bytes, at: int = -1) -> bytes:
    out = bytearray(data)
    out[at] ^= 0x01
    return bytes(out)


# --- the tampered variants: (name, how the resource is changed, what the NACK says) --------------------------------

Tamper = Callable[[Bed], protocol.ExtensionConfig]


def _altered_signature(bed: Bed) -> protocol.ExtensionConfig:
    res = bed.signed["tag"].resource
    return _with_sig(res, signature=_flip(_sig(res).signature, 10))


def _other_key(bed: Bed) -> protocol.ExtensionConfig:
    return _with_sig(bed.signed["tag"].resource, key=bed.cosign.other.pub.read_text())


def _other_key_bundle(bed: Bed) -> protocol.ExtensionConfig:
    return _with_sig(bed.signed["bundle"].resource, key=bed.cosign.other.pub.read_text())


def _altered_payload(bed: Bed) -> protocol.ExtensionConfig:
    res = bed.signed["tag"].resource
    payload = _sig(res).payload.replace(b'"docker-manifest-digest":"sha256:', b'"docker-manifest-digest": "sha256:')
    assert payload != _sig(res).payload
    return _with_sig(res, payload=payload)


def _altered_manifest(bed: Bed) -> protocol.ExtensionConfig:
    res = bed.signed["tag"].resource
    manifest = json.loads(_sig(res).manifests[0])
    manifest["annotations"] = {"tampered": "yes"}
    return _with_sig(res, manifests=(json.dumps(manifest).encode(),))


def _swapped_manifest(bed: Bed) -> protocol.ExtensionConfig:
    """This image's signature, the other image's manifest (and module)."""
    res, other = bed.signed["tag"].resource, bed.signed["other"].resource
    return dataclasses.replace(
        other,
        name="tag",
        signature=dataclasses.replace(_sig(other), payload=_sig(res).payload, signature=_sig(res).signature),
    )


def _signature_for_another_image(bed: Bed) -> protocol.ExtensionConfig:
    """The other image's (valid) signature with this image's manifest and module."""
    res, other = bed.signed["tag"].resource, bed.signed["other"].resource
    return _with_sig(res, payload=_sig(other).payload, signature=_sig(other).signature)


def _another_module(bed: Bed) -> protocol.ExtensionConfig:
    """This image's evidence, the other image's module (served by the module server, sha256 and all)."""
    other = bed.signed["other"].resource
    return dataclasses.replace(bed.signed["tag"].resource, url=other.url, sha256=other.sha256)


def _another_module_in_image(bed: Bed) -> protocol.ExtensionConfig:
    other = bed.signed["other"].resource
    return dataclasses.replace(bed.signed["image"].resource, url=other.url, sha256=other.sha256)


def _another_layer_blob(bed: Bed) -> protocol.ExtensionConfig:
    """The image's evidence, the layer URL naming another blob the module server has (the tag image's module)."""
    return _with_sig(bed.signed["image"].resource, layer_url=bed.view.agent_url(bed.signed["other"].artifact.sha256))


def _index_leads_elsewhere(bed: Bed) -> protocol.ExtensionConfig:
    """The signed index, then another image's manifest (and its module) as the one it leads to."""
    res, other = bed.signed["index"].resource, bed.signed["image"].resource
    swapped = dataclasses.replace(_sig(res), manifests=(_sig(res).manifests[0], _sig(other).manifests[0]))
    return dataclasses.replace(res, url=other.url, sha256=other.sha256, signature=swapped)


CASES: list[tuple[str, Tamper, str]] = [
    ("altered signature", _altered_signature, r"the signature does not verify under key"),
    ("another key (tag)", _other_key, r"the signature does not verify under key"),
    ("another key (bundle)", _other_key_bundle, r"the signature does not verify under key"),
    ("altered signed payload", _altered_payload, r"the signature does not verify under key"),
    ("altered manifest", _altered_manifest, r"the manifest given has digest sha256:\w+, the signature is for"),
    ("another image's manifest", _swapped_manifest, r"the manifest given has digest sha256:\w+, the signature is for"),
    ("signature for another image", _signature_for_another_image, r"the manifest given has digest .* signature is for"),
    ("an index leading elsewhere", _index_leads_elsewhere, r"the signed image index leads to manifest sha256:\w+, "),
    ("another module", _another_module, r"the signed manifest's layer sha256:\w+ is not module sha256:"),
    ("another module in an image", _another_module_in_image, r"the signed layer sha256:\w+ holds module sha256:"),
]


def test_signed_modules_load_and_every_broken_link_is_a_nack(bed: Bed, tmp_path: Path) -> None:
    state = tmp_path / "state"
    agent = _agent(tmp_path, bed, state)
    try:
        good = [bed.signed[n].resource for n in ("tag", "bundle", "image", "index")]
        # a signed resource never uses the operator's precompiled artifact (the signature does not cover it): this
        # one points nowhere, and the push is ACKed all the same
        key = f"{good[0].sha256}.0.0.0.{'0' * 16}.cwasm"
        bogus = protocol.CompiledArtifact(key=key, url=bed.view.compiled_url(key), sha256="0" * 64)
        good[0] = dataclasses.replace(good[0], compiled=bogus)
        reply = _push(agent, "v1", *good)
        assert reply.ack, reply.error_detail
        expected = [(r.name, r.sha256) for r in good]
        assert _running(agent) == expected
        timings = agent.config_dump()["last_push"]["timings"]
        assert timings["tag"]["signature"].startswith("tag signature, key ")
        assert timings["bundle"]["signature"].startswith("bundle signature, key ")
        image = bed.signed["image"].artifact.signature
        assert image is not None and image.layer != f"sha256:{good[2].sha256}"  # a tar.gz layer, unpacked
        assert f"layer {image.layer}" in timings["image"]["signature"]
        index = bed.signed["index"].artifact.signature
        assert index is not None and len(index.manifests) == 2  # the signed index, the manifest it picks
        assert "artifact" not in timings["tag"] and timings["tag"]["load"] == "miss"  # compiled here

        for n, (name, tamper, message) in enumerate(CASES, start=2):
            bad = tamper(bed)
            others = [r for r in good if r.name != bad.name]
            reply = _push(agent, f"v{n}", *others, bad)
            assert not reply.ack and reply.error_detail is not None, name
            detail = reply.error_detail
            assert (detail.reason, detail.resource) == ("signature_invalid", bad.name), (name, detail)
            assert re.search(message, detail.message), (name, detail.message)
            assert agent.config_dump()["version_info"] == "v1", name  # the last good set keeps serving
            assert _running(agent) == expected, name

        # an evidence version this agent does not know: refused, never read halfway
        doc = protocol.Push("v99", "n-v99", tuple(good)).to_json()
        doc["resources"][0]["signature"]["version"] = 2
        reply = _push_json(agent, doc, status=400)
        assert not reply.ack and reply.error_detail is not None
        assert "verifies signature evidence version 1 only" in reply.error_detail.message
        assert _running(agent) == expected
    finally:
        agent.stop()

    # a restart verifies the persisted set again: the signed set comes back
    agent = _agent(tmp_path, bed, state)
    try:
        assert agent.config_dump()["version_info"] == "v1"
        assert _running(agent) == expected
    finally:
        agent.stop()


def test_a_fresh_agent_refuses_another_layer_blob(bed: Bed, tmp_path: Path) -> None:
    """An agent without the image's layer blob fetches it from the push's layer_url: there it finds another
    blob (the other image's module): NACK, nothing loaded; the right URL then loads. (An agent that has the signed
    blob already uses it whatever the URL says: it is content-addressed.)"""
    agent = _agent(tmp_path, bed, tmp_path / "state")
    try:
        reply = _push(agent, "v1", _another_layer_blob(bed))
        assert not reply.ack and reply.error_detail is not None
        assert reply.error_detail.reason == "signature_invalid"
        assert re.search(
            r"the layer blob given has digest sha256:\w+, the signed manifest names sha256:", reply.error_detail.message
        )
        assert agent.config_dump()["version_info"] == protocol.STATIC_VERSION and _running(agent) == []
        image = bed.signed["image"].resource
        reply = _push(agent, "v2", image)
        assert reply.ack, reply.error_detail
        assert _running(agent) == [("image", image.sha256)]
    finally:
        agent.stop()


def test_a_tampered_state_directory_is_not_loaded(bed: Bed, tmp_path: Path) -> None:
    """The persisted push's signature is altered on disk: on restart the agent refuses that set."""
    state = tmp_path / "state"
    agent = _agent(tmp_path, bed, state)
    try:
        reply = _push(agent, "v1", bed.signed["tag"].resource)
        assert reply.ack, reply.error_detail
    finally:
        agent.stop()
    last_good = state / "last_good.json"
    doc = json.loads(last_good.read_text())
    sig = doc["resources"][0]["signature"]
    sig["signature"] = base64.b64encode(_flip(base64.b64decode(sig["signature"]), 10)).decode()
    last_good.write_text(json.dumps(doc))
    agent = _agent(tmp_path, bed, state)
    try:
        assert _running(agent) == []
        assert "the signature does not verify under key" in agent.proc.log()
    finally:
        agent.stop()


def test_every_worker_loads_only_what_the_signature_covers(bed: Bed, tmp_path: Path) -> None:
    """``--concurrency 2``: the parent prepares the set and each worker loads it again, the signature checked
    there too (from the shared caches); a tampered push, or one signed under a key outside the agent's list
    ($MESHPLUG_TRUSTED_KEYS here), leaves every worker on the last good set."""
    keys = tmp_path / "trusted-keys.pem"
    keys.write_bytes(bed.cosign.signer.pub.read_bytes())
    agent = _agent(tmp_path, bed, tmp_path / "state", concurrency=2, env={"MESHPLUG_TRUSTED_KEYS": str(keys)})
    try:
        good = [bed.signed[n].resource for n in ("tag", "image")]
        reply = _push(agent, "v1", *good)
        assert reply.ack, reply.error_detail
        assert _running(agent) == [(r.name, r.sha256) for r in good]
        reply = _push(agent, "v2", good[0], _another_module_in_image(bed))
        assert not reply.ack and reply.error_detail is not None
        assert reply.error_detail.reason == "signature_invalid", reply.error_detail
        assert agent.config_dump()["version_info"] == "v1"
        assert _running(agent) == [(r.name, r.sha256) for r in good]
        reply = _push(agent, "v3", good[0], bed.signed["foreign"].resource)
        assert not reply.ack and reply.error_detail is not None
        assert reply.error_detail.reason == "signature_untrusted", reply.error_detail
        assert agent.config_dump()["version_info"] == "v1"
        assert _running(agent) == [(r.name, r.sha256) for r in good]
    finally:
        agent.stop()


def _key_id(pub: Path) -> str:
    return load_public_key(pub.read_bytes()).key_id


def test_the_agents_own_trusted_keys_decide_who_may_sign(bed: Bed, tmp_path: Path) -> None:
    """``--trusted-keys`` holds cosign's ``signer`` key. A module cosign signed under its ``other`` key, with a
    valid signature the push names that key for, is refused before its signature is even checked
    (``signature_untrusted``), as is the trusted module's evidence with the key swapped; a wrong signature under the
    trusted key is ``signature_invalid``. The last good set serves throughout and after a restart; adding the other
    key to the file (as a Secret update does) trusts it without a restart."""
    keys = tmp_path / "trusted-keys.pem"
    keys.write_bytes(bed.cosign.signer.pub.read_bytes())
    state = tmp_path / "state"
    signer, other = _key_id(bed.cosign.signer.pub), _key_id(bed.cosign.other.pub)
    trusted, foreign = bed.signed["tag"].resource, bed.signed["foreign"].resource
    expected = [("tag", trusted.sha256)]
    agent = _agent(tmp_path, bed, state, args=("--trusted-keys", str(keys)))
    try:
        assert f"signatures: pushed signed modules must verify under one of 1 trusted key(s) from {keys}: {signer}" in (
            agent.proc.log()
        )
        reply = _push(agent, "v1", trusted)
        assert reply.ack, reply.error_detail
        assert _running(agent) == expected
        refused = [
            ("signed by cosign under another key", foreign, other),
            ("the trusted module, the push naming another key", _other_key(bed), other),
        ]
        for n, (case, resource, key_id) in enumerate(refused, start=2):
            reply = _push(agent, f"v{n}", resource)
            assert not reply.ack and reply.error_detail is not None, case
            detail = reply.error_detail
            assert (detail.reason, detail.resource) == ("signature_untrusted", resource.name), (case, detail)
            assert f"the push's signature key {key_id} is not one of the agent's trusted keys ({signer};" in (
                detail.message
            ), case
            assert agent.config_dump()["version_info"] == "v1" and _running(agent) == expected, case
        reply = _push(agent, "v4", _altered_signature(bed))
        assert not reply.ack and reply.error_detail is not None
        assert reply.error_detail.reason == "signature_invalid", reply.error_detail
        assert "the signature does not verify under key" in reply.error_detail.message
        assert agent.config_dump()["version_info"] == "v1" and _running(agent) == expected
    finally:
        agent.stop()

    agent = _agent(tmp_path, bed, state, args=("--trusted-keys", str(keys)))
    try:
        assert agent.config_dump()["version_info"] == "v1" and _running(agent) == expected  # last good, checked again
        keys.write_bytes(bed.cosign.signer.pub.read_bytes() + bed.cosign.other.pub.read_bytes())
        reply = _push(agent, "v5", trusted, foreign)
        assert reply.ack, reply.error_detail
        assert _running(agent) == [*expected, ("foreign", foreign.sha256)]
    finally:
        agent.stop()


def test_without_trusted_keys_the_agent_trusts_the_pushs_key_and_says_so(bed: Bed, tmp_path: Path) -> None:
    agent = _agent(tmp_path, bed, tmp_path / "state")
    try:
        assert "signatures: no trusted keys (--trusted-keys, $MESHPLUG_TRUSTED_KEYS)" in agent.proc.log()
        foreign = bed.signed["foreign"].resource
        reply = _push(agent, "v1", foreign)
        assert reply.ack, reply.error_detail
        assert _running(agent) == [("foreign", foreign.sha256)]
    finally:
        agent.stop()


def _mount(path: Path, data: bytes) -> None:
    """The trusted keys file as the kubelet updates a mounted Secret: a new file put in place."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _refused(agent: tb_agent.Agent, version: str, resources: list[protocol.ExtensionConfig]) -> protocol.ErrorDetail:
    """Push ``resources`` as ``version``: refused; the NACK's detail."""
    reply = _push(agent, version, *resources)
    assert not reply.ack and reply.error_detail is not None, version
    return reply.error_detail


def _lua(name: str) -> protocol.ExtensionConfig:
    code = "function envoy_on_request(handle) handle:headers():add('x-lua', 'ran') end\n"
    return protocol.ExtensionConfig(name=name, root_id="", url="", sha256=protocol.lua_sha256(code), lua=code)


def test_an_agent_that_requires_signatures_refuses_all_but_modules_signed_under_its_keys(
    bed: Bed, tmp_path: Path
) -> None:
    """``--require-signatures --trusted-keys`` (cosign's ``signer`` key): whatever is pushed -- as a compromised
    operator or push token could -- only modules the real cosign signed under that key load. Each refusal is its
    own NACK naming the plugin (``resource``), the module's sha256 and why: unsigned (``signature_required``), inline
    Lua (no signature covers it), signed under another key (``signature_untrusted``), an altered signature, a
    signature for another image's digest (``signature_invalid``). The last good set serves throughout. The
    operator's "none" (every trusted key removed) does not downgrade this agent: every module is refused, saying so.
    """
    keys = tmp_path / "trusted-keys.pem"
    _mount(keys, bed.cosign.signer.pub.read_bytes())
    signer, other = _key_id(bed.cosign.signer.pub), _key_id(bed.cosign.other.pub)
    agent = _agent(tmp_path, bed, tmp_path / "state", args=("--trusted-keys", str(keys), "--require-signatures"))
    try:
        assert "every pushed module must be signed (--require-signatures)" in agent.proc.log()
        assert agent.config_dump()["signatures"] == (
            f"pushed signed modules must verify under one of 1 trusted key(s) from {keys}: {signer}; every pushed "
            "module must be signed (--require-signatures)"
        )
        tag = bed.signed["tag"].resource
        reply = _push(agent, "v1", tag)
        assert reply.ack, reply.error_detail
        expected = [("tag", tag.sha256)]
        foreign, lua = bed.signed["foreign"].resource, _lua("lua")
        unsigned = dataclasses.replace(bed.signed["other"].resource, name="unsigned", signature=None)
        cases = [  # (case, the refused resource, reason, what the message says)
            ("an unsigned module", unsigned, "signature_required",
             f"module sha256:{unsigned.sha256} has no signature, and this agent requires signed modules "
             "(--require-signatures)"),
            ("inline Lua", lua, "signature_required",
             f"inline Lua (script sha256:{lua.sha256}) has no signature, and this agent requires signed modules"),
            ("signed by cosign under another key", foreign, "signature_untrusted",
             f"module sha256:{foreign.sha256}: the push's signature key {other} is not one of the agent's trusted "
             f"keys ({signer}; {keys})"),
            ("an altered signature", _altered_signature(bed), "signature_invalid",
             f"module sha256:{tag.sha256}: the signature does not verify under key {signer} (another key signed it, "
             "or it was altered)"),
            ("the signature of another image (its digest)", _signature_for_another_image(bed), "signature_invalid",
             f"module sha256:{tag.sha256}: the manifest given has digest sha256:"),
        ]  # fmt: skip
        for n, (case, resource, reason, message) in enumerate(cases, start=2):
            others = [] if resource.name == "tag" else [tag]
            detail = _refused(agent, f"v{n}", [*others, resource])
            assert (detail.reason, detail.resource) == (reason, resource.name), (case, detail)
            assert message in detail.message, (case, detail.message)
            assert agent.config_dump()["version_info"] == "v1" and _running(agent) == expected, case

        # the operator removed every trusted key: its Secret says "none" -- for this agent, no key is trusted
        _mount(keys, protocol.TRUSTED_KEYS_NONE)
        detail = _refused(agent, "v9", [tag, bed.signed["bundle"].resource])
        assert (detail.reason, detail.resource) == ("signature_untrusted", "tag"), detail
        assert detail.message == (
            f"module sha256:{tag.sha256}: the push's signature key {signer} cannot be trusted: this agent requires "
            f"signed modules (--require-signatures) and trusts no key ({keys} says the operator trusts none)"
        )
        assert agent.config_dump()["version_info"] == "v1" and _running(agent) == expected
        assert f"signatures: trusted keys file {keys} now says the operator trusts no key (was: {signer})" in (
            agent.proc.log()
        )
        assert agent.config_dump()["signatures"] == (
            f"no trusted keys ({keys} says none): every pushed module is refused; every pushed module must be signed "
            "(--require-signatures)"
        )
    finally:
        agent.stop()


def test_require_signatures_without_trusted_keys_stops_the_start(bed: Bed, tmp_path: Path) -> None:
    """Requiring signatures with no list of its own would trust whatever key a push names: the agent does not start
    (exit 2, saying why), as for a trusted keys file it cannot read."""
    with pytest.raises(RuntimeError) as failed:
        _agent(tmp_path, bed, tmp_path / "state", env={"MESHPLUG_REQUIRE_SIGNATURES": "1"})
    assert "exited with 2" in str(failed.value), failed.value
    assert "--require-signatures needs --trusted-keys FILE" in str(failed.value), failed.value


def test_a_key_rotation_through_the_agents_trusted_keys(bed: Bed, tmp_path: Path) -> None:
    """A rotation as the operator's Secret carries it, against the real cosign's signatures: the agent trusts the old
    key (cosign's ``signer``); a module signed with the new key (``other``) is refused, naming the new key and the
    ones it trusts, and the old set keeps serving; the new key added beside the old (the Secret updated, no
    restart), the same push loads; a push that names the wrong one of two trusted keys says which key made the
    signature; the old key removed, its modules still running keep running (nothing loaded is unloaded) but are
    refused in any new set; a set of new-key modules loads."""
    keys = tmp_path / "trusted-keys.pem"
    _mount(keys, bed.cosign.signer.pub.read_bytes())
    old, new = _key_id(bed.cosign.signer.pub), _key_id(bed.cosign.other.pub)
    tag, foreign = bed.signed["tag"].resource, bed.signed["foreign"].resource  # signed under old / new
    agent = _agent(tmp_path, bed, tmp_path / "state", args=("--trusted-keys", str(keys), "--require-signatures"))
    try:
        reply = _push(agent, "v1", tag)
        assert reply.ack, reply.error_detail
        # the new key's module reaches the agent before the Secret's new key does
        detail = _refused(agent, "v2", [tag, foreign])
        assert (detail.reason, detail.resource) == ("signature_untrusted", "foreign"), detail
        assert f"the push's signature key {new} is not one of the agent's trusted keys ({old}; {keys})" in (
            detail.message
        )
        assert _running(agent) == [("tag", tag.sha256)]
        # the Secret's update arrives (old + new): the same push is loaded
        _mount(keys, bed.cosign.signer.pub.read_bytes() + bed.cosign.other.pub.read_bytes())
        reply = _push(agent, "v2", tag, foreign)
        assert reply.ack, reply.error_detail
        both = [("tag", tag.sha256), ("foreign", foreign.sha256)]
        assert _running(agent) == both
        assert f"signatures: trusted keys file {keys} changed: now 2 trusted key(s) from {keys}: {old}, {new}" in (
            agent.proc.log()
        )
        # a push naming the new key for a signature the old key made: which trusted key made it
        detail = _refused(agent, "v3", [_other_key(bed), foreign])
        assert (detail.reason, detail.resource) == ("signature_invalid", "tag"), detail
        assert detail.message == (
            f"module sha256:{tag.sha256}: the signature does not verify under the key the push names ({new}): "
            f"trusted key {old} made it, so the push names the wrong key"
        )
        # the old key removed: what runs keeps running; a new set with the old key's module is refused
        _mount(keys, bed.cosign.other.pub.read_bytes())
        detail = _refused(agent, "v4", [tag, foreign])
        assert (detail.reason, detail.resource) == ("signature_untrusted", "tag"), detail
        assert f"the push's signature key {old} is not one of the agent's trusted keys ({new}; {keys})" in (
            detail.message
        )
        assert agent.config_dump()["version_info"] == "v2" and _running(agent) == both
        reply = _push(agent, "v5", foreign)
        assert reply.ack, reply.error_detail
        assert _running(agent) == [("foreign", foreign.sha256)]
    finally:
        agent.stop()


def test_the_operators_none_makes_an_agent_that_does_not_require_signatures_trust_the_pushs_key(
    bed: Bed, tmp_path: Path
) -> None:
    """Every trusted key removed from the operator: its Secret says "none" in so many words. An agent that does not
    require signatures then checks a signed module under the key its push names, as one injected without keys does
    (and logs the change); a trusted keys file that vanishes or is emptied is never read as "none": it refuses."""
    keys = tmp_path / "trusted-keys.pem"
    _mount(keys, bed.cosign.signer.pub.read_bytes())
    foreign = bed.signed["foreign"].resource
    agent = _agent(tmp_path, bed, tmp_path / "state", args=("--trusted-keys", str(keys)))
    try:
        assert _refused(agent, "v1", [foreign]).reason == "signature_untrusted"
        _mount(keys, b"")
        detail = _refused(agent, "v1", [foreign])
        assert detail.reason == "signature_untrusted" and "is not a bundle of PEM public keys" in detail.message
        _mount(keys, protocol.TRUSTED_KEYS_NONE)
        reply = _push(agent, "v1", foreign)
        assert reply.ack, reply.error_detail
        assert _running(agent) == [("foreign", foreign.sha256)]
        assert f"signatures: trusted keys file {keys} now says the operator trusts no key" in agent.proc.log()
        keys.unlink()
        detail = _refused(agent, "v2", [bed.signed["tag"].resource])
        assert detail.reason == "signature_untrusted" and "cannot read trusted keys file" in detail.message
        assert _running(agent) == [("foreign", foreign.sha256)]
    finally:
        agent.stop()

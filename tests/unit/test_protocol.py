"""meshplug.protocol: pushes and replies round-trip, and every malformed message is a ProtocolError."""

from __future__ import annotations

import json
from typing import Any

import pytest

from meshplug import errors, protocol

SHA = "a" * 64
GOOD: dict[str, Any] = {
    "version_info": "v1",
    "nonce": "n1",
    "resources": [{"name": "ns.p", "root_id": "r", "url": "https://op/m.wasm", "sha256": SHA}],
}


def _with(**changes: Any) -> bytes:
    doc = json.loads(json.dumps(GOOD))
    for key, value in changes.items():
        if key.startswith("r_"):
            doc["resources"][0][key[2:]] = value
        else:
            doc[key] = value
    return json.dumps(doc).encode()


def test_push_round_trips() -> None:
    push = protocol.Push(
        version_info="v9",
        nonce="x",
        resources=(
            protocol.ExtensionConfig(
                name="a",
                root_id="r",
                url="file:///m.wasm",
                sha256="",
                configuration='{"k":1}',
                vm_env=(("A", "1"),),
                fail_strategy=protocol.FailStrategy.FAIL_OPEN,
                vm_id="shared",
            ),
        ),
    )
    assert protocol.decode_push(protocol.encode(push)) == push


@pytest.mark.parametrize(
    "reply",
    [
        protocol.Reply(
            ack=True,
            version_info="v1",
            nonce="n",
            plugins=(protocol.PluginStatus("p", SHA, protocol.PluginState.RUNNING),),
        ),
        protocol.Reply(ack=False, version_info="", nonce="n", error_detail=protocol.ErrorDetail("r", "m", "p")),
    ],
    ids=["ack", "nack"],
)
def test_reply_round_trips(reply: protocol.Reply) -> None:
    assert protocol.decode_reply(protocol.encode(reply)) == reply


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"not json", "not JSON"),
        (b"[]", "JSON object"),
        (_with(version_info=""), "push.version_info must be a non-empty string"),
        (_with(extra=1), "unknown key"),
        (_with(resources={}), "must be a list"),
        (_with(r_sha256="ABC"), "64 lower-case hex"),
        (_with(r_sha256=""), "sha256 is required"),
        (_with(r_url="oci://reg/x"), "must be an http://, https:// or file:// url"),
        (
            _with(r_url="file:/m/x.wasm"),
            "'file:/m/x.wasm': must be an http://, https:// or file:// url .a file url is file:///path.",
        ),
        (_with(r_name="bad name"), "not a valid plugin name"),
        (_with(r_fail_strategy="SOMETIMES"), "fail_strategy"),
        (_with(r_vm_env={"A": 1}), "vm_env"),
        (_with(resources=[GOOD["resources"][0], GOOD["resources"][0]]), "duplicate name"),
    ],
)
def test_malformed_pushes_are_protocol_errors(data: bytes, fragment: str) -> None:
    with pytest.raises(errors.ProtocolError, match=fragment):
        protocol.decode_push(data)


def test_a_nack_without_detail_is_malformed_and_raise_for_nack_maps_the_reason() -> None:
    with pytest.raises(errors.ProtocolError, match="error_detail"):
        protocol.decode_reply(b'{"ack": false, "version_info": "", "nonce": ""}')
    nack = protocol.Reply(ack=False, version_info="v0", nonce="n", error_detail=protocol.ErrorDetail("x_y", "boom"))
    with pytest.raises(errors.PushError, match="boom") as info:
        protocol.raise_for_nack(nack)
    assert info.value.reason == "x_y"


def test_match_round_trips_and_is_left_out_when_empty() -> None:
    rules = (
        protocol.MatchRule(hosts=("api.example.com", "*.example.org")),
        protocol.MatchRule(path_prefixes=("/v1/",), exact_paths=("/",)),
    )
    cfg = protocol.ExtensionConfig(name="a", root_id="", url="file:///m.wasm", sha256="", match=rules)
    push = protocol.Push(version_info="v1", nonce="n", resources=(cfg,))
    assert protocol.decode_push(protocol.encode(push)) == push
    # backward compatible: without rules the resource has no "match" key (agents predating it accept it), and
    # a resource without the key decodes to "every request"
    plain = protocol.ExtensionConfig(name="a", root_id="", url="file:///m.wasm", sha256="")
    assert "match" not in plain.to_json()
    assert protocol.decode_push(_with()).resources[0].match == ()
    hosts = protocol.decode_push(_with(r_match=[{"hosts": ["API.Example.com"]}])).resources[0].match
    assert hosts == (protocol.MatchRule(hosts=("api.example.com",)),)


@pytest.mark.parametrize(
    ("match", "fragment"),
    [
        ({}, "must be a list"),
        ([{}], "matches everything"),
        ([{"hosts": "a"}], "list of at most"),
        ([{"hosts": [""]}], "non-empty strings"),
        ([{"path_prefixes": ["v1"]}], "must start with /"),
        ([{"paths": ["/"]}], "unknown key"),
    ],
)
def test_malformed_match_is_a_protocol_error(match: Any, fragment: str) -> None:
    with pytest.raises(errors.ProtocolError, match=fragment):
        protocol.decode_push(_with(r_match=match))


KEY = f"{SHA}.50.0.1.{'b' * 16}.cwasm"


def test_compiled_round_trips_and_is_left_out_when_absent() -> None:
    art = protocol.CompiledArtifact(key=KEY, url=f"https://op/compiled/{KEY}", sha256="c" * 64)
    cfg = protocol.ExtensionConfig(name="a", root_id="", url="https://op/m.wasm", sha256=SHA, compiled=art)
    push = protocol.Push(version_info="v1", nonce="n", resources=(cfg,))
    assert protocol.decode_push(protocol.encode(push)) == push
    assert "compiled" not in protocol.ExtensionConfig(name="a", root_id="", url="https://op/m", sha256=SHA).to_json()
    assert protocol.decode_push(_with()).resources[0].compiled is None


@pytest.mark.parametrize(
    ("compiled", "fragment"),
    [
        ([], "compiled must be a mapping, got list"),
        ({"key": KEY, "url": "https://op/c", "sha256": "c" * 64, "x": 1}, r"unknown key\(s\) x"),
        ({"key": KEY.replace(SHA, "d" * 64), "url": "https://op/c", "sha256": "c" * 64}, "not an artifact key of"),
        ({"key": "m.cwasm", "url": "https://op/c", "sha256": "c" * 64}, "not an artifact key of"),
        ({"key": KEY, "url": "file:///c", "sha256": "c" * 64}, "scheme must be http or https"),
        ({"key": KEY, "url": "https://op/c", "sha256": "C" * 64}, "64 lower-case hex"),
        ({"key": KEY, "url": "https://op/c"}, "sha256"),
    ],
)
def test_malformed_compiled_is_a_protocol_error(compiled: Any, fragment: str) -> None:
    with pytest.raises(errors.ProtocolError, match=fragment):
        protocol.decode_push(_with(r_compiled=compiled))


HEALTH = protocol.Health("v7", (0.5, 1.0), (protocol.PluginHealth("shop.hdr", "ab" * 32, 12, 1, 2, (3, 8, 1)),))


def test_health_round_trips() -> None:
    assert protocol.decode_health(protocol.encode(HEALTH)) == HEALTH
    assert protocol.decode_health(b'{"version_info": "", "bounds_ms": [], "plugins": []}').plugins == ()


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b'{"version_info": "v", "bounds_ms": ["1"], "plugins": []}', "bounds_ms must be a list of numbers"),
        # a canary reads each agent's quantiles on its bounds: they must make buckets
        (b'{"version_info": "v", "bounds_ms": [5, 1], "plugins": []}', "bounds_ms must be increasing positive"),
        (b'{"version_info": "v", "bounds_ms": [1, 1], "plugins": []}', "bounds_ms must be increasing positive"),
        (b'{"version_info": "v", "bounds_ms": [0, 1], "plugins": []}', "bounds_ms must be increasing positive"),
        (b'{"version_info": "v", "bounds_ms": [1, NaN], "plugins": []}', "bounds_ms must be increasing positive"),
        (b'{"version_info": "v", "bounds_ms": [1, Infinity], "plugins": []}', "bounds_ms must be increasing"),
        (
            b'{"version_info": "v", "bounds_ms": [1], "plugins": [{"name": "p", "sha256": "", "requests": 1,'
            b' "failures": 0, "local_5xx": 0, "latency": [1]}]}',
            "health.plugins[0].latency must be 2 counts",
        ),
        (
            b'{"version_info": "v", "bounds_ms": [1], "plugins": [{"name": "p", "sha256": "", "requests": -1,'
            b' "failures": 0, "local_5xx": 0, "latency": [1, 0]}]}',
            "health.plugins[0].requests must be an integer >= 0",
        ),
        (b"[]", "message must be a JSON object"),
    ],
)
def test_malformed_health_is_a_protocol_error(data: bytes, fragment: str) -> None:
    with pytest.raises(errors.ProtocolError) as caught:
        protocol.decode_health(data)
    assert fragment in caught.value.message

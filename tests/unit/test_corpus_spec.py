"""The corpus spec parser (tests/corpus/spec.py): defaults, encodings and errors that name the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.corpus import bootstrap as corpus_bootstrap
from tests.corpus import runner
from tests.corpus import spec as S

P = Path("examples/filters/rust/demo/spec.yaml")


def parse(doc: dict[str, Any]) -> S.Spec:
    return S.parse(doc, key="rust/demo", path=P)


MINIMAL: dict[str, Any] = {"description": "d", "cases": [{"name": "c"}]}


def test_minimal_spec_gets_defaults() -> None:
    spec = parse(MINIMAL)
    assert spec.type == "http"
    (plugin,) = spec.plugins
    assert (plugin.module, plugin.name, plugin.root_id, plugin.vm_id, plugin.configuration) == (
        "rust/demo", "demo", "", "", "",
    )  # fmt: skip
    (case,) = spec.http_cases
    assert (case.request.method, case.request.path, case.request.body_chunks) == ("GET", "/", ())
    assert case.expect.upstream_reached is None
    assert spec.modules == ("rust/demo",)


@pytest.mark.parametrize(
    ("configuration", "encoded"),
    [
        ({"b": 1, "a": [True, None]}, '{"a":[true,null],"b":1}'),
        ("raw text", "raw text"),
        ([1, 2], "[1,2]"),
        (None, ""),
    ],
)
def test_configuration_encoding(configuration: object, encoded: str) -> None:
    spec = parse({**MINIMAL, "plugins": [{"configuration": configuration, "env": {"K": 1}}]})
    assert spec.plugins[0].configuration == encoded
    assert spec.plugins[0].env == (("K", "1"),)


def test_full_http_case() -> None:
    doc = {
        **MINIMAL,
        "clusters": [{"name": "authz", "service": "auth"}],
        "cases": [
            {
                "name": "c",
                "wait_for": {"logs": [{"contains": "ready"}], "timeout_s": 3},
                "request": {"method": "post", "path": "/x", "headers": {"X-A": "1"}, "body_chunks": ["a", "b"]},
                "upstream_response": {"status": 201, "body": "hi"},
                "expect": {
                    "status": 201,
                    "headers": {"X-B": "2"},
                    "headers_match": {"X-N": "[0-9]+"},
                    "body_contains": "h",
                    "upstream": {"path": "/x", "absent_headers": ["X-C"]},
                    "logs": [{"level": "warn", "contains": "w"}],
                    "metrics": [{"name": "m", "value": 2}, {"name": "h"}],
                },
            },
            {"name": "d", "expect": {"upstream": None}},
        ],
    }
    spec = parse(doc)
    c, d = spec.http_cases
    assert c.request.method == "POST" and c.request.headers == (("x-a", "1"),)
    assert c.request.body_chunks == (b"a", b"b")
    assert c.upstream_response == S.UpstreamResponse(201, (), (b"hi",))
    assert c.expect.headers == (("x-b", "2"),) and c.expect.body_contains == b"h"
    assert c.expect.headers_match == (("x-n", "[0-9]+"),)
    assert c.expect.upstream is not None and c.expect.upstream.absent_headers == ("x-c",)
    assert c.expect.metrics == (S.MetricExpect("m", 2), S.MetricExpect("h", None))
    assert c.wait_for == S.WaitFor((S.LogExpect("ready", None),), 3.0)
    assert d.expect.upstream_reached is False and d.expect.upstream is None


def test_network_spec_and_start_failures() -> None:
    spec = parse(
        {
            "description": "d",
            "type": "network",
            "cases": [{"name": "n", "send": ["ab", "c"], "expect": {"received": "ABC"}}],
            "start_failures": [{"name": "f", "configuration": "{bad", "logs": [{"contains": "bad"}]}],
        }
    )
    assert spec.network_cases[0].send == (b"ab", b"c")
    assert spec.network_cases[0].expect.received == b"ABC"
    assert spec.start_failures == (S.StartFailure("f", 0, "{bad", (S.LogExpect("bad", None),)),)


@pytest.mark.parametrize(
    ("node", "parsed"),
    [
        (None, None),
        ({}, S.NodeSpec("", "", ())),
        ({"id": "n-1"}, S.NodeSpec("n-1", "", ())),
        ({"cluster": "c-1", "metadata": None}, S.NodeSpec("", "c-1", ())),
        (
            {"id": "n", "cluster": "c", "metadata": {"ZONE": "b", "REGION": "eu-1", "EMPTY": ""}},
            S.NodeSpec("n", "c", (("EMPTY", ""), ("REGION", "eu-1"), ("ZONE", "b"))),
        ),
    ],
)
def test_node(node: object, parsed: S.NodeSpec | None) -> None:
    assert parse({**MINIMAL, "node": node}).node == parsed


def test_node_defaults_to_none() -> None:
    assert parse(MINIMAL).node is None


@pytest.mark.parametrize(
    ("node", "message"),
    [
        ("n-1", r"spec\.yaml\.node must be a mapping, got str"),
        (["n-1"], r"\.node must be a mapping, got list"),
        ({"id": 7}, r"\.node\.id must be a string, got 7"),
        ({"cluster": True}, r"\.node\.cluster must be a string, got True"),
        ({"name": "n"}, r"\.node: unknown key\(s\) name"),
        ({"metadata": ["REGION"]}, r"\.node\.metadata must be a mapping of strings to strings, got \['REGION'\]"),
        (
            {"metadata": {"PORT": 8080}},
            r"\.node\.metadata must be a mapping of strings to strings, got \{'PORT': 8080\}",
        ),
        ({"metadata": {"ON": True}}, r"\.node\.metadata must be a mapping of strings to strings"),
        ({"metadata": {"NESTED": {"a": "b"}}}, r"\.node\.metadata must be a mapping of strings to strings"),
        ({"metadata": {"NONE": None}}, r"\.node\.metadata must be a mapping of strings to strings"),
        ({"metadata": {1: "x"}}, r"\.node\.metadata must be a mapping of strings to strings"),
        ({"metadata": {"": "x"}}, r"\.node\.metadata: keys must not be empty"),
    ],
)
def test_bad_node_is_rejected_with_the_field_named(node: object, message: str) -> None:
    with pytest.raises(S.SpecFormatError, match=message):
        parse({**MINIMAL, "node": node})


def test_envoy_plane_renders_node_into_the_bootstrap() -> None:
    services = {"upstream": runner.Endpoint("upstream", "echo", 1234)}
    modules = {"rust/demo": Path("/m/demo.wasm")}
    bare = corpus_bootstrap.render(parse(MINIMAL), modules, services, port=1, admin_port=2)
    assert "node" not in bare
    node = {"id": "n", "cluster": "c", "metadata": {"REGION": "eu-1"}}
    config = corpus_bootstrap.render(parse({**MINIMAL, "node": node}), modules, services, port=1, admin_port=2)
    assert config["node"] == {"id": "n", "cluster": "c", "metadata": {"REGION": "eu-1"}}
    config = corpus_bootstrap.render(parse({**MINIMAL, "node": {"id": "n"}}), modules, services, port=1, admin_port=2)
    assert config["node"] == {"id": "n", "cluster": ""}


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"cases": [{"name": "c"}]}, r"description: required"),
        ({**MINIMAL, "typo": 1}, r"spec\.yaml: unknown key\(s\) typo"),
        ({**MINIMAL, "type": "grpc"}, r"type: expected 'http' or 'network'"),
        ({**MINIMAL, "cases": []}, r"cases: at least one case"),
        ({"description": "d"}, r"cases: required"),
        ({**MINIMAL, "cases": [{"name": "c"}, {"name": "c"}]}, r"case names must be unique"),
        ({**MINIMAL, "cases": [{"name": "c", "expect": {"status": "200"}}]}, r"cases\[0\]\.expect\.status"),
        ({**MINIMAL, "cases": [{"name": "c", "expect": {"status": 99}}]}, r"status must be an integer in 100\.\.599"),
        ({**MINIMAL, "cases": [{"name": "c", "request": {"path": "x"}}]}, r"request\.path: must start with '/'"),
        ({**MINIMAL, "cases": [{"name": "c", "request": {"body": "a", "body_chunks": ["a"]}}]}, r"not both"),
        ({**MINIMAL, "cases": [{"name": "c", "expect": {"logs": [{"level": "loud", "contains": "x"}]}}]}, "loud"),
        ({**MINIMAL, "cases": [{"name": "c", "wait_for": {"logs": []}}]}, r"wait_for\.logs: at least one"),
        ({**MINIMAL, "plugins": [{"module": "nosdk"}]}, r"plugins\[0\]\.module: expected '<sdk>/<name>'"),
        ({**MINIMAL, "plugins": [{"fail_open": "yes"}]}, r"fail_open must be true or false, got 'yes'"),
        (
            {**MINIMAL, "cases": [{"name": "c", "expect": {"headers_match": {"x": "("}}}]},
            r"headers_match\.x: bad regex",
        ),
        ({**MINIMAL, "clusters": [{"name": "x", "service": "nginx"}]}, r"service: 'nginx' is not one of"),
        ({**MINIMAL, "clusters": [{"name": "upstream", "service": "echo"}]}, r"reserved or given twice"),
        ({**MINIMAL, "start_failures": [{"name": "f"}]}, r"start_failures\[0\]\.configuration: required"),
        (
            {**MINIMAL, "start_failures": [{"name": "f", "plugin": 3, "configuration": ""}]},
            r"start_failures\[0\]\.plugin must be an integer in 0\.\.0, got 3",
        ),
        ({**MINIMAL, "start_failures": [{"name": "f", "configuration": ""}]}, r"logs: name at least one"),
        ({"description": "d", "type": "network", "cases": [{"name": "n"}]}, r"send: at least one chunk"),
        ([1, 2], r"spec\.yaml must be a mapping, got list"),
    ],
)
def test_bad_specs_are_rejected_with_the_field_named(doc: object, message: str) -> None:
    with pytest.raises(S.SpecFormatError, match=message):
        S.parse(doc, key="rust/demo", path=P)


def test_load_names_the_file_for_bad_yaml(tmp_path: Path) -> None:
    path = tmp_path / "sdk" / "p" / "spec.yaml"
    path.parent.mkdir(parents=True)
    path.write_text("cases: [unclosed\n")
    with pytest.raises(S.SpecFormatError, match="not valid YAML"):
        S.load(path)


def test_find_specs_skips_shared_dirs(tmp_path: Path) -> None:
    for rel in ("rust/a/spec.yaml", "rust/_common/spec.yaml", "c/b/spec.yaml"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(yaml.safe_dump(MINIMAL))
    assert [p.relative_to(tmp_path).as_posix() for p in S.find_specs(tmp_path)] == ["c/b/spec.yaml", "rust/a/spec.yaml"]


@pytest.mark.parametrize("path", S.find_specs(), ids=lambda p: p.parent.relative_to(S.FILTERS_DIR).as_posix())
def test_every_corpus_spec_parses(path: Path) -> None:
    spec = S.load(path)
    assert spec.key == path.parent.relative_to(S.FILTERS_DIR).as_posix()


@pytest.mark.parametrize(
    ("expect", "record", "matches"),
    [
        (S.LogExpect("hello", None), ("info", "say hello world"), True),
        (S.LogExpect("hello", "warn"), ("info", "hello"), False),
        (S.LogExpect("hello", "warn"), ("warn", "hello"), True),
        (S.LogExpect("bye", None), ("info", "hello"), False),
    ],
)
def test_log_matching(expect: S.LogExpect, record: tuple[str, str], matches: bool) -> None:
    assert runner.log_matches(expect, record) is matches

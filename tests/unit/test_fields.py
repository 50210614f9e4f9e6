"""meshplug.fields: one set of rules for every reader of a document, whatever error class it raises."""

from __future__ import annotations

from typing import Any

import pytest

from meshplug import errors
from meshplug.fields import REQUIRED, Fields

DOC: dict[str, Any] = {
    "name": "web",
    "empty": "",
    "null": None,
    "port": 8080,
    "yes": True,
    "ratio": 0.5,
    "zero": 0,
    "hosts": ["a", "b"],
    "labels": {"app": "web"},
    "nested": {"inner": "x"},
    "rules": [{"host": "a"}, {"host": "b"}],
}


def fields(**kw: Any) -> Fields:
    return Fields(DOC, "spec", **kw)


@pytest.mark.parametrize(
    ("read", "value"),
    [
        (lambda f: f.text("name"), "web"),
        (lambda f: f.text("missing", "d"), "d"),
        (lambda f: f.text("null", "d"), "d"),  # null is unset
        (lambda f: f.text("empty", "", empty=True), ""),
        (lambda f: f.opt_text("missing"), None),
        (lambda f: f.integer("port", lo=1, hi=65535), 8080),
        (lambda f: f.integer("zero", lo=0), 0),
        (lambda f: f.opt_integer("null"), None),
        (lambda f: f.number("ratio", positive=True), 0.5),
        (lambda f: f.number("port"), 8080.0),
        (lambda f: f.flag("yes"), True),
        (lambda f: f.flag("missing", False), False),
        (lambda f: f.strings("hosts"), ("a", "b")),
        (lambda f: f.strings("missing"), ()),
        (lambda f: f.text_map("labels"), {"app": "web"}),
        (lambda f: f.sub("nested", "inner").text("inner"), "x"),
        (lambda f: f.sub("missing").raw, {}),
        (lambda f: [r.text("host") for r in f.items("rules")], ["a", "b"]),
        (lambda f: f.choice("name", ["web", "db"]), "web"),
        (lambda f: f.has("null"), False),
        (lambda f: f.has("empty"), True),
    ],
)
def test_reads(read: Any, value: Any) -> None:
    assert read(fields()) == value


@pytest.mark.parametrize(
    ("read", "message"),
    [
        (lambda f: f.text("missing"), "spec.missing: required"),
        (lambda f: f.text("null"), "spec.null: required"),
        (lambda f: f.text("empty"), "spec.empty must be a non-empty string, got ''"),
        (lambda f: f.text("port"), "spec.port must be a non-empty string, got 8080"),
        (lambda f: f.integer("yes"), "spec.yes must be an integer, got True"),  # a bool is not an integer
        (lambda f: f.integer("port", lo=1, hi=1024), "spec.port must be an integer in 1..1024, got 8080"),
        (lambda f: f.integer("zero", lo=1), "spec.zero must be an integer >= 1, got 0"),
        (lambda f: f.number("zero", positive=True), "spec.zero must be a positive number, got 0"),
        (lambda f: f.number("yes"), "spec.yes must be a number, got True"),
        (lambda f: f.flag("name"), "spec.name must be true or false, got 'web'"),
        (lambda f: f.strings("name"), "spec.name must be a list, got 'web'"),
        (lambda f: f.strings("hosts", max_items=1), "spec.hosts must be a list of at most 1 items"),
        (lambda f: f.text_map("hosts"), "spec.hosts must be a mapping of strings to strings"),
        (lambda f: f.only("name"), "spec: unknown key(s) empty, hosts, labels"),
        (lambda f: f.sub("nested", "other"), "spec.nested: unknown key(s) inner"),
        (lambda f: f.sub("name"), "spec.name must be a mapping, got str"),
        (lambda f: f.items("rules")[1].text("port"), "spec.rules[1].port: required"),
        (lambda f: f.choice("name", ["db"]), "spec.name must be one of db, got 'web'"),
        (lambda f: f.array("missing", REQUIRED), "spec.missing: required"),
    ],
)
def test_refusals_name_the_field(read: Any, message: str) -> None:
    with pytest.raises(errors.ConfigError) as info:
        read(fields())
    assert info.value.message.startswith(message), info.value.message


@pytest.mark.parametrize("error", [errors.ConfigError, errors.ProtocolError, errors.SpecError])
def test_every_reader_refuses_the_same_things_with_its_own_error(error: type[errors.MeshplugError]) -> None:
    with pytest.raises(error, match=r"spec\.empty must be a non-empty string"):
        fields(error=error).text("empty")


def test_a_document_that_is_not_a_mapping() -> None:
    with pytest.raises(errors.ProtocolError, match="push must be a mapping, got list"):
        Fields([], "push", error=errors.ProtocolError)
    with pytest.raises(errors.ConfigError, match="keys must be strings, got 1"):
        Fields({1: "a"}, "spec")
    assert Fields(None, "spec", optional=True).raw == {}

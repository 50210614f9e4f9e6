"""No YAML file meshplug ships repeats a key in one mapping: YAML loaders keep the last value without a word, so a
repeated ``description`` silently replaced the right one (the WasmPlugin CRD's istioDelivery showed dataPlane's).
Checked: crds/, the chart's plain YAML (Chart.yaml, values.yaml, files/; its templates render into
manifests/meshplug.yaml, which is checked), manifests/ and examples/ (Envoy bootstraps with ``${PORT}``
placeholders are YAML only once filled: those aside)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted(
    {
        *REPO.glob("crds/*.yaml"),
        *(REPO / "charts" / "meshplug").glob("*.yaml"),
        *(REPO / "charts" / "meshplug" / "files").rglob("*.yaml"),
        *REPO.glob("manifests/*.yaml"),
        *REPO.glob("examples/**/*.yaml"),
    }
)


class _Repeats(yaml.SafeLoader):
    """A safe loader that records each key a mapping repeats, with both lines."""

    repeats: list[str]


def _mapping(loader: _Repeats, node: yaml.MappingNode, deep: bool = False) -> dict[object, object]:
    first: dict[object, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if key in first:
            loader.repeats.append(f"line {line}: {key!r} again (first on line {first[key]})")
        first.setdefault(key, line)
    return loader.construct_mapping(node, deep=deep)


_Repeats.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def repeated_keys(text: str) -> list[str]:
    loader = _Repeats(text)
    loader.repeats = []
    try:
        while loader.check_data():
            loader.get_data()
    finally:
        loader.dispose()
    return loader.repeats


def _plain(path: Path) -> bool:
    """Plain YAML, not a template (the corpus' Envoy bootstraps carry ``${...}`` placeholders)."""
    return "${" not in path.read_text()


@pytest.mark.parametrize("path", [p for p in SHIPPED if _plain(p)], ids=lambda p: str(p.relative_to(REPO)))
def test_no_mapping_repeats_a_key(path: Path) -> None:
    assert repeated_keys(path.read_text()) == [], path


@pytest.mark.parametrize(
    ("text", "repeats"),
    [
        ("a: 1\nb: 2\n", []),
        ("a:\n  description: x\n  description: y\n", ["line 3: 'description' again (first on line 2)"]),
        ("---\na: 1\n---\na: 2\n", []),  # one key per document
        ("a: {b: 1}\nc: {b: 2}\n", []),  # one key in two mappings
    ],
)
def test_repeated_keys(text: str, repeats: list[str]) -> None:
    assert repeated_keys(text) == repeats

"""Artifacts pushed by oras-py itself (not our pusher) are read: empty config, CNCF wasm, wasm content layer."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import oras.client
import pytest

from meshplug.fetch import Fetcher, FetchOptions, Layout
from tests.testbed.origin import wasm_module
from tests.testbed.registry import Registry

WASM = wasm_module(61)

# (layout expected, layer media type or None for oras' default, config media type or None for an empty config)
ORAS_PUSHES = [
    (Layout.ORAS, None, None),
    (Layout.CNCF_WASM, "application/wasm", "application/vnd.wasm.config.v0+json"),
    (Layout.WASM_SINGLE_LAYER, "application/vnd.module.wasm.content.layer.v1+wasm", None),
]


@pytest.mark.parametrize(("layout", "layer_type", "config_type"), ORAS_PUSHES, ids=[p[0].value for p in ORAS_PUSHES])
def test_oras_pushed_artifact_is_fetched(
    registries: dict[str, Registry], tmp_path: Path, layout: Layout, layer_type: str | None, config_type: str | None
) -> None:
    registry = registries["plain"]
    module = tmp_path / "plugin.wasm"
    module.write_bytes(WASM)
    config = None
    if config_type is not None:
        (tmp_path / "config.json").write_text(json.dumps({"architecture": "wasm", "os": "wasip1"}))
        config = f"{tmp_path / 'config.json'}:{config_type}"
    client = oras.client.OrasClient(hostname=registry.host, insecure=True)
    target = f"{registry.host}/oras/{layout.value}:v1"
    client.push(
        target=target,
        files=[f"{module}:{layer_type}" if layer_type else str(module)],
        manifest_config=config,
        disable_path_validation=True,
        quiet=True,
    )
    options = FetchOptions(
        cache_dir=tmp_path / "cache", allow_insecure_registries=(registry.host,), allow_loopback=True
    )
    fetcher = Fetcher(options)
    artifact = fetcher.fetch(f"oci://{target}", sha256=hashlib.sha256(WASM).hexdigest())
    assert (artifact.data, artifact.layout) == (WASM, layout)

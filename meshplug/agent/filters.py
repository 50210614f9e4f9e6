"""Glue between the loader and the wasm host: plugin set -> started plugins -> `chain.Chain` for the proxy.

Called by `meshplug.agent.runtime.build_chain` in a worker thread, only when a set has plugins (so an agent
with no plugins never imports wasmtime). Returns a `loader.Chain`: the proxy's filters plus the views,
metrics and close hooks admin and the applier use.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

from meshplug import errors, protocol
from meshplug.agent import loader


def build(plugins: Sequence[tuple[protocol.ExtensionConfig, bytes]]) -> loader.Chain:
    try:
        importlib.import_module("meshplug.agent.host")
    except ImportError:
        raise errors.HostError(
            f"cannot start {plugins[0][0].name}: the wasm host (meshplug.agent.host) is not installed"
        ) from None
    raise errors.HostError("the wasm host's plugin API is not wired into the agent yet")

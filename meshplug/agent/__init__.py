"""The in-pod agent: server (I/O shell) -> chain (sans-IO) -> host (wasm lifecycle) -> abi -> vm.

The chain: chain (filter order, the names the shell uses) -> stream (one exchange) -> headermap | rules ->
streamapi (the vocabulary filters and shell share). The host: host (process-wide state, callouts, timers,
queues) -> plugin (root context, reload, recycle) -> contexts (HTTP / TCP stream contexts) -> wasmvm (one
instance, guest calls) -> abi (the import table) -> properties | wasi -> hostapi.

Imports no operator code (controller, render, spec). The chain imports neither the wasm runtime nor
the HTTP server. The per-request modules run compiled when a build matching their sources is present
(meshplug.native decides, before any of them is imported).
"""

from meshplug import native

native.guard()

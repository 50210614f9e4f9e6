"""The in-pod agent: server (I/O shell) -> chain (sans-IO) -> host (wasm lifecycle) -> abi -> vm.

Imports no operator code (controller, render, spec). The chain imports neither the wasm runtime nor
the HTTP server. The per-request modules run compiled when a build matching their sources is present
(meshplug.native decides, before any of them is imported).
"""

from meshplug import native

native.guard()

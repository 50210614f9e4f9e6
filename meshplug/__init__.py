"""meshplug: proxy-wasm plugins on Kubernetes workloads.

Operator flow: spec -> fetch -> validate -> render -> apply (controller).
Agent flow: push -> load -> host -> chain -> upstream.
See README.md and the docstring of each subpackage.
"""

__version__ = "0.1.0"

from meshplug import wasmlib as _wasmlib

#: which libwasmtime this process runs ("built", "stock", or "imported": wasmtime came first); see meshplug.wasmlib
WASMTIME_LIB = _wasmlib.select()

"""meshplug: proxy-wasm plugins on Kubernetes workloads.

Operator flow: spec -> fetch -> validate -> render -> apply (controller).
Agent flow: push -> load -> host -> chain -> upstream.
See README.md and the docstring of each subpackage.
"""

__version__ = "0.1.0"

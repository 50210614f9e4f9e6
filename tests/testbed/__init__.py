"""The test bed: real components started on 127.0.0.1 by the tests and stopped by pid.

`procs` is the common core (free ports, process start/stop, polling with a deadline); each component
has its own module (envoy, registry, origin, upstream, kube) with a pytest fixture in tests/conftest.py.
Binaries and build outputs are cached under `cache_dir()` (outside the repo), keyed by version.
"""

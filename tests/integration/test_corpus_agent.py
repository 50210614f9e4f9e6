"""Every plugin behaviour spec under examples/filters/** passes through meshplug's agent (real sockets).

The same runner and specs as tests/integration/test_corpus_envoy.py, with the agent as the data plane;
network (L4) specs run through a `tcp` listener. Skipped only: specs Envoy itself cannot run
(`envoy_broken`, the oracle has no verdict). Specs that fail because of a known bug of the wasm host
(meshplug/agent/host.py: not the agent's I/O side) are strict xfails naming the bug, so
they flip loudly once it is fixed; `test_local_reply_from_http_call_response_reaches_the_client`
keeps a fixed one covered in-process, without sockets.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from meshplug.agent import chain as C
from meshplug.agent import host as H
from tests.corpus import modules as corpus_modules
from tests.corpus import runner
from tests.corpus import spec as S
from tests.corpus.planes.agent import AgentPlane

SPECS = S.find_specs()

#: specs failing because of a known bug of the wasm host: strict xfails naming the bug (none known now)
HOST_BUGS: dict[str, str] = {}
#: specs the agent plane cannot honour yet (not host bugs): strict xfails, removed once the gap is closed
PLANE_GAPS: dict[str, str] = {}


def _key(path: Path) -> str:
    return path.parent.relative_to(S.FILTERS_DIR).as_posix()


def _param(path: Path) -> object:
    reason = HOST_BUGS.get(_key(path)) or PLANE_GAPS.get(_key(path))
    # a mismatch, or the client's timeout when a reply never comes
    raises = (runner.SpecFailure, TimeoutError)
    marks = [pytest.mark.xfail(strict=True, raises=raises, reason=reason)] if reason else []
    return pytest.param(path, id=_key(path), marks=marks)


def test_host_bugs_name_existing_specs() -> None:
    assert set(HOST_BUGS) | set(PLANE_GAPS) <= {_key(p) for p in SPECS}


@pytest.mark.parametrize("path", [_param(p) for p in SPECS])
def test_spec_passes_on_agent(path: Path, tmp_path: Path) -> None:
    spec = S.load(path)
    if spec.envoy_broken:
        pytest.skip(f"Envoy-broken plugin (no oracle verdict): {spec.envoy_broken}")
    report = runner.run_spec(spec, AgentPlane(), log_dir=tmp_path)
    assert len(report.cases) == len(spec.http_cases) + len(spec.network_cases)


@pytest.mark.compiled  # --concurrency: the workers' shared store is a C extension
@pytest.mark.parametrize("key", ["rust/singleton_queue", "go/singleton"])
def test_singleton_specs_pass_with_workers(key: str, tmp_path: Path) -> None:
    """`--concurrency 2`: the singletons run in the parent, on the workers' shared store, so the queue they
    register is resolved (vm_id rules as Envoy's) and fed by every worker's filters, and their shared data read."""
    spec = S.load(S.FILTERS_DIR / key / "spec.yaml")
    report = runner.run_spec(spec, AgentPlane(concurrency=2), log_dir=tmp_path)
    assert len(report.cases) == len(spec.http_cases)


def test_local_reply_from_http_call_response_reaches_the_client() -> None:
    """rust/auth_call on the host and chain alone: the auth service answers 401 to the plugin's call, the
    plugin sends a local reply from its http-call response callback; the chain must emit the reply (a host
    bug once held it: the reply's own on_response_headers was turned into STOP by a stale flag)."""
    host = H.Host(upstreams=None)
    module = corpus_modules.module("rust/auth_call").path.read_bytes()
    config = b'{"cluster":"authz","path":"/check","timeout_ms":3000}'
    plugin = host.load(H.PluginConfig(name="auth_call", configuration=config), module)
    stream = C.Chain([plugin]).new_stream(C.StreamInfo())
    progressed: list[C.Output] = []
    stream.on_progress = lambda s: progressed.extend(s.take_outputs())
    assert stream.recv_request_headers(C.http1_request_headers(b"GET", b"/orders", [(b"host", b"x")]), True) == []
    (call,) = host.take_http_calls()
    host.complete_http_call(call.id, H.HttpCalloutResult(((b":status", b"401"),)))
    progressed += stream.take_outputs()
    kinds = [type(o).__name__ for o in progressed]
    assert kinds[:1] == ["AbortUpstream"]
    head = next((o for o in progressed if isinstance(o, C.SendHeaders)), None)
    assert head is not None, f"the local reply's headers never left the chain: {kinds}"
    assert (b":status", b"401") in head.headers and (b"x-auth-by", b"auth_call") in head.headers
    host.close()

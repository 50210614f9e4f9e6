"""Every HTTP plugin behaviour spec under examples/filters/** passes through meshplug's agent (real sockets).

The same runner and specs as tests/integration/test_corpus_envoy.py, with the agent as the data plane.
Skipped only: specs Envoy itself cannot run (`envoy_broken`, the oracle has no verdict) and network (L4)
specs, which the agent does not serve.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.corpus import runner
from tests.corpus import spec as S
from tests.corpus.planes.agent import AgentPlane

SPECS = S.find_specs()


@pytest.mark.parametrize("path", SPECS, ids=[p.parent.relative_to(S.FILTERS_DIR).as_posix() for p in SPECS])
def test_spec_passes_on_agent(path: Path, tmp_path: Path) -> None:
    spec = S.load(path)
    if spec.envoy_broken:
        pytest.skip(f"Envoy-broken plugin (no oracle verdict): {spec.envoy_broken}")
    if spec.type != "http":
        pytest.skip("network (L4) plugin: the agent proxies HTTP only")
    report = runner.run_spec(spec, AgentPlane(), log_dir=tmp_path)
    assert len(report.cases) == len(spec.http_cases)

"""Every plugin behaviour spec under examples/filters/** passes on Envoy 1.40 (the oracle).

Modules are built by `make plugins` (scripts/build_plugins.py) before integration tests run. A spec marked
`envoy_broken: <reason>` documents a plugin Envoy itself cannot run; only those are skipped.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.corpus import runner
from tests.corpus import spec as S
from tests.corpus.planes.envoy import EnvoyPlane

SPECS = S.find_specs()


def test_the_corpus_has_specs() -> None:
    assert SPECS, "no spec.yaml under examples/filters"


@pytest.mark.parametrize("path", SPECS, ids=[p.parent.relative_to(S.FILTERS_DIR).as_posix() for p in SPECS])
def test_spec_passes_on_envoy(path: Path, envoy_plane: EnvoyPlane, tmp_path: Path) -> None:
    spec = S.load(path)
    if spec.envoy_broken:
        pytest.skip(f"Envoy-broken plugin: {spec.envoy_broken}")
    report = runner.run_spec(spec, envoy_plane, log_dir=tmp_path)
    assert len(report.cases) == len(spec.http_cases) + len(spec.network_cases)

"""Every plugin behaviour spec under examples/filters/** passes on Envoy 1.40 (the oracle).

Modules are built by `make plugins` (scripts/build_plugins.py) before integration tests run. A spec marked
`envoy_broken: <reason>` documents a plugin Envoy itself cannot run; only those are skipped.
"""

from __future__ import annotations

import dataclasses
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


def test_a_wrong_expectation_fails(envoy_plane: EnvoyPlane, tmp_path: Path) -> None:
    """The oracle can say no: the same chain with wrong expectations is reported, naming each mismatch."""
    spec = S.load(S.FILTERS_DIR / "rust" / "deny_path" / "spec.yaml")
    case = spec.http_cases[0]
    reached = S.UpstreamExpect(None, None, (), (), None, None)
    wrong = dataclasses.replace(
        case.expect, status=418, upstream=reached, upstream_reached=True, logs=(S.LogExpect("never logged", None),)
    )
    spec = dataclasses.replace(spec, http_cases=(dataclasses.replace(case, expect=wrong),), start_failures=())
    with pytest.raises(runner.SpecFailure) as exc:
        runner.run_spec(spec, envoy_plane, log_dir=tmp_path)
    message = str(exc.value)
    assert "status: expected 418, got 403" in message
    assert "upstream was not reached" in message
    assert "no log line containing 'never logged'" in message

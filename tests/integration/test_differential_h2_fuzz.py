"""The HTTP/2 request fuzzer (tests/differential/h2fuzz.py) against Envoy 1.40 and the agent, an echo app behind
each: the same bytes to both, every stream's end compared (the app's view when both forwarded).

By default deterministic: the mutants of the fixed seeds `SEEDS`, `MUTANTS` each (mutant n of seed s depends on
(s, n) only). Exploration: MESHPLUG_FUZZ_SEED=random (a fresh seed, printed) or =<int>, time-boxed by
MESHPLUG_FUZZ_SECONDS (default 45) or counted by MESHPLUG_FUZZ_MUTANTS. Each divergence is shrunk to a smaller case
that still diverges the same way and printed in tests/differential/found_h2.yaml's form; the found entries are
replayed here every run (one still differing names why in `differs`, or `differs_native` / `differs_fallback` for
one path: an xfail that fails the run once it passes).
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.differential import h2fuzz
from tests.testbed import agent as tb_agent
from tests.testbed import envoy as tb_envoy
from tests.testbed import procs, upstream

pytestmark = pytest.mark.integration

FOUND = Path(__file__).resolve().parents[1] / "differential" / "found_h2.yaml"
#: the default run's seeds and mutants per seed (about 45 s on 2 cores); chosen once, never drawn at random
SEEDS = (1, 2026, 77)
MUTANTS = 45


@pytest.fixture(scope="module")
def ports(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int]]:
    """(Envoy's port, the agent's port): each an HTTP/2-capable listener before the same echo app."""
    tmp: Path = tmp_path_factory.mktemp("h2fuzz")
    logs = tmp / "logs"
    started: list[Any] = []
    try:
        echo = upstream.start_service("echo", log_dir=logs)
        started.append(echo)
        port, admin = procs.free_port(), procs.free_port()
        listener = tb_envoy.http_listener("l", port, cluster="echo")
        listener["filter_chains"][0]["filters"][0]["typed_config"]["server_name"] = "istio-envoy"
        path = tb_envoy.write_config(
            tb_envoy.bootstrap(admin, [listener], [tb_envoy.static_cluster("echo", echo.port)]), tmp / "envoy"
        )
        started.append(tb_envoy.start_envoy(path, admin_port=admin, log_dir=logs))
        raw = tb_agent.base_config(
            port=procs.free_port(), admin_port=procs.free_port(), clusters={"echo": echo.port}, listener_cluster="echo"
        )
        agent = tb_agent.start_agent(raw, work_dir=tmp / "agent", log_dir=logs, log_level="info")
        started.append(agent)
        yield port, agent.port
    finally:
        for item in reversed(started):
            item.stop()


def _found() -> list[h2fuzz.H2Case]:
    return [h2fuzz.from_yaml(e) for e in yaml.safe_load(FOUND.read_text()) or []]


def _param(case: h2fuzz.H2Case) -> Any:
    native = os.environ.get("MESHPLUG_NATIVE") != "0"
    reason = case.differs or (case.differs_native if native else case.differs_fallback)
    marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
    return pytest.param(case, id=case.name, marks=marks)


def test_found_entries_are_named_once_and_round_trip() -> None:
    cases = _found()
    assert len({c.name for c in cases}) == len(cases)
    assert all(h2fuzz.from_yaml(h2fuzz.to_yaml(c)) == c for c in cases)
    assert all(h2fuzz.mutant(7, n) == h2fuzz.mutant(7, n) for n in range(50))  # a function of (seed, n) alone


@pytest.mark.parametrize("case", [_param(c) for c in _found()])
def test_found_case_matches_envoy(ports: tuple[int, int], case: h2fuzz.H2Case) -> None:
    problems = h2fuzz.judge(*ports, case)
    if problems:  # seen twice before it counts: one slow answer on a loaded machine is not a divergence
        problems = h2fuzz.judge(*ports, case, timeout=4.0)
    assert not problems, "\n".join(problems)


def plan() -> list[tuple[int, int | None, float | None]]:
    """(seed, mutants, seconds) runs from the environment: the fixed seeds unless MESHPLUG_FUZZ_SEED is set."""
    chosen = os.environ.get("MESHPLUG_FUZZ_SEED", "")
    count = os.environ.get("MESHPLUG_FUZZ_MUTANTS", "")
    if not chosen:
        return [(seed, int(count or MUTANTS), None) for seed in SEEDS]
    seed = random.SystemRandom().randrange(1_000_000) if chosen == "random" else int(chosen)
    if count:
        return [(seed, int(count), None)]
    return [(seed, None, float(os.environ.get("MESHPLUG_FUZZ_SECONDS", "45")))]


#: how many kinds of divergence a failing run shrinks (one case each; the others are listed as found)
SHRINK_KINDS = 8


def test_http2_mutation_fuzz_finds_no_divergence(ports: tuple[int, int]) -> None:
    found: list[h2fuzz.Found] = []
    for seed, count, seconds in plan():
        ran, diverging = h2fuzz.run(*ports, h2fuzz.mutants(seed, count), seconds=seconds)
        print(f"h2 fuzz seed {seed}: {ran} mutants, {len(diverging)} divergence(s)")
        for f in diverging:
            print(f"  {f.case.name}: {'; '.join(f.problems)}\n    {h2fuzz.to_yaml(f.case)['steps']}")
        found += diverging
    # a divergence counts when it is seen again with more time (a slow answer on a loaded machine is none)
    found = [f for f in found if h2fuzz.judge(*ports, f.case, timeout=4.0)]
    if found:
        kinds = {h2fuzz.kind_of(f): f for f in reversed(found)}
        first = list(kinds.values())[:SHRINK_KINDS]
        shrunk = [h2fuzz.shrink(lambda c: h2fuzz.judge(*ports, c), f.case, f.problems) for f in first]
        report = "\n".join(f"{f.case.name}: {'; '.join(f.problems)}" for f in shrunk)
        entries = yaml.safe_dump(
            [h2fuzz.to_yaml(f.case) for f in shrunk], width=200, sort_keys=False,
            default_flow_style=None,
        )  # fmt: skip
        pytest.fail(
            f"{len(found)} divergence(s) of {len(kinds)} kind(s), shrunk:\n{report}\nfound_h2.yaml entries:\n{entries}"
        )

"""The agent's HTTP/1.1 held to Envoy 1.40, byte for byte: every case of tests/differential/cases.py goes through
Envoy and through the agent (no plugin, and the same two plugins), same scripted upstream (tests/differential/
bed.py). A case fails when the agent forwards what Envoy refused, the two disagree on a message the upstream
received, or the client sees another status class or framing (unless the case marks the agent stricter).

Then a time-boxed mutation fuzz run over the same corpus (MESHPLUG_FUZZ_SECONDS, default 45; seed printed,
MESHPLUG_FUZZ_SEED to replay): mutated requests go through both proxies; an agent that forwards a request Envoy
refused, or that the upstream cannot read, fails the run and the input is written to found.yaml's format in
the test's output (add it to tests/differential/found.yaml to keep it).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator

import pytest
import yaml

from tests.differential import bed, cases, fuzz


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[bed.Bed, dict[str, dict[str, bed.Outcome]]]]:
    work = tmp_path_factory.mktemp("differential")
    with bed.started(work) as running:
        yield running, running.run_all(cases.CASES)


def test_the_corpus_is_large_and_every_marking_names_a_case() -> None:
    names = [c.name for c in cases.CASES]
    assert len(names) >= 200 and len(set(names)) == len(names)
    assert set(cases.STRICTER) | set(cases.DIVERGENCE) <= set(names)


@pytest.mark.parametrize("case", cases.CASES, ids=lambda c: c.name)
def test_agent_behaves_like_envoy(outcomes: tuple[bed.Bed, dict[str, dict[str, bed.Outcome]]], case: bed.Case) -> None:
    got = outcomes[1][case.name]
    problems = [p for pair in case.pairs for p in bed.compare(case, pair, got[f"envoy-{pair}"], got[f"agent-{pair}"])]
    assert not problems, "\n".join(problems)


def test_mutation_fuzz_finds_no_divergence(outcomes: tuple[bed.Bed, dict[str, dict[str, bed.Outcome]]]) -> None:
    running = outcomes[0]
    seed = int(os.environ.get("MESHPLUG_FUZZ_SEED", str(time.time_ns() % 1_000_000)))
    seconds = float(os.environ.get("MESHPLUG_FUZZ_SECONDS", "45"))
    rng = random.Random(seed)
    print(f"fuzz seed {seed}, {seconds:.0f} s")
    found = fuzz.run(running, cases.CASES, rng, seconds=seconds)
    if found:
        entries = [
            {"name": f"fuzz-{seed}-{i}", "request": c.request.decode("latin-1")} for i, (c, _) in enumerate(found)
        ]
        report = "\n".join(f"{c.name}: {'; '.join(p)}" for c, p in found)
        pytest.fail(
            f"{len(found)} divergence(s) (seed {seed}):\n{report}\nfound.yaml entries:\n{yaml.safe_dump(entries)}"
        )

"""Test configuration: markers by directory, shared fixtures of the test bed.

tests/unit/**         -> marker `unit` (fast, in-process)
tests/integration/**  -> marker `integration` (real components of the test bed)
"""

from __future__ import annotations

from pathlib import Path

import pytest

_TESTS = Path(__file__).parent

# every tests/testbed/fixtures_*.py module is a fixture plugin (one per test-bed component)
pytest_plugins = sorted(f"tests.testbed.{p.stem}" for p in (_TESTS / "testbed").glob("fixtures_*.py"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        rel = Path(str(item.path)).relative_to(_TESTS)
        kind = rel.parts[0] if rel.parts else ""
        if kind == "integration":
            item.add_marker(pytest.mark.integration)
        elif kind == "unit":
            item.add_marker(pytest.mark.unit)
        else:
            raise pytest.UsageError(f"{rel}: tests live under tests/unit or tests/integration")


@pytest.fixture(scope="session")
def logs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where started components write their logs (one file each)."""
    return tmp_path_factory.mktemp("logs")

"""Fixtures: the real cosign (session-scoped) with two key pairs, ``signer`` and ``other``."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tests.testbed.cosign import Cosign, KeyPair, binary


@dataclass(frozen=True)
class CosignKit:
    cosign: Cosign
    signer: KeyPair
    other: KeyPair


@pytest.fixture(scope="session")
def cosign(tmp_path_factory: pytest.TempPathFactory) -> CosignKit:
    tool = Cosign(binary(), tmp_path_factory.mktemp("cosign"))
    return CosignKit(tool, tool.generate_key_pair("signer"), tool.generate_key_pair("other"))

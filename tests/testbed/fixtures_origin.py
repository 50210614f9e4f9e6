"""Fixtures: a test CA (trustme) and the programmable HTTPS origin process (tests/testbed/origin.py)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from tests.testbed import procs
from tests.testbed.origin import Origin


@dataclass(frozen=True)
class TestCA:
    """A CA whose bundle the fetcher is given, and a way to issue serving certificates from it."""

    ca: trustme.CA
    ca_file: Path
    directory: Path

    def issue(self, name: str, *hosts: str) -> tuple[Path, Path]:
        """(certificate chain, key) files for ``hosts``."""
        cert = self.ca.issue_cert(*(hosts or ("localhost", "127.0.0.1")))
        chain, key = self.directory / f"{name}.pem", self.directory / f"{name}.key"
        chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
        key.write_bytes(cert.private_key_pem.bytes())
        return chain, key


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    directory = tmp_path_factory.mktemp("ca")
    ca = trustme.CA()
    ca_file = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return TestCA(ca=ca, ca_file=ca_file, directory=directory)


@pytest.fixture(scope="session")
def origin(test_ca: TestCA, logs_dir: Path) -> Iterator[Origin]:
    """The TLS origin, serving https://localhost:<port> with a certificate from `test_ca`."""
    cert, key = test_ca.issue("origin")
    port = procs.free_port()
    argv = [sys.executable, str(Path(__file__).with_name("origin.py")), "--port", str(port)]
    argv += ["--cert", str(cert), "--key", str(key)]
    server = Origin(proc=None, port=port, ca_file=test_ca.ca_file)
    server.proc = procs.start("origin", argv, log_dir=logs_dir, ready=server.healthy, ports={"https": port})
    try:
        yield server
    finally:
        server.proc.stop()

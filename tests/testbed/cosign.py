"""The real cosign of the test bed (built from the Go module proxy by `make cosign`, scripts/install-cosign.sh).

`Cosign` runs it against the test bed's registries: key pairs (`generate_key_pair`), signatures in the tag or
Sigstore bundle layout (`sign`), and `verify` with a public key, offline: no transparency log (`--tlog-upload=false`,
`--insecure-ignore-tlog`) and an empty trusted root, so nothing leaves this machine. Fixtures: fixtures_cosign.py.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.testbed import procs
from tests.testbed.registry import Registry

VERSION = os.environ.get("COSIGN_VERSION", "v2.6.5")
PASSWORD = "meshplug-test-key"
EMPTY_TRUSTED_ROOT = '{"mediaType":"application/vnd.dev.sigstore.trustedroot+json;version=0.1"}'


def binary() -> Path:
    path = procs.cache_dir("cosign", VERSION) / "cosign"
    if not path.is_file():
        raise RuntimeError(f"{path} missing: run `make cosign` (scripts/install-cosign.sh)")
    return path


@dataclass(frozen=True)
class KeyPair:
    key: Path  # cosign.key, encrypted with PASSWORD
    pub: Path


@dataclass(frozen=True)
class Cosign:
    bin: Path
    workdir: Path

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "COSIGN_PASSWORD": PASSWORD,
            "TUF_ROOT": str(self.workdir / "tuf"),
            "DOCKER_CONFIG": str(self.workdir / "docker"),
        }

    def run(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin), *args],
            cwd=self.workdir,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def generate_key_pair(self, name: str) -> KeyPair:
        directory = self.workdir / name
        directory.mkdir(parents=True, exist_ok=True)
        out = subprocess.run(
            [str(self.bin), "generate-key-pair"],
            cwd=directory,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        return KeyPair(directory / "cosign.key", directory / "cosign.pub")

    def _registry_flags(self, registry: Registry) -> list[str]:
        if registry.tls:
            assert registry.ca_file is not None
            flags = ["--registry-cacert", str(registry.ca_file)]
        else:
            flags = ["--allow-http-registry"]
        if registry.username:
            flags += ["--registry-username", registry.username, "--registry-password", str(registry.password)]
        return flags

    def sign(self, registry: Registry, image: str, keys: KeyPair, *, bundle: bool = False) -> None:
        """Sign ``registry.host/image@sha256:...`` (cosign signs digests) without a transparency log."""
        args = ["sign", "--key", str(keys.key), "--tlog-upload=false", "-y", *self._registry_flags(registry)]
        if bundle:
            args.append("--new-bundle-format")
        out = self.run(*args, f"{registry.host}/{image}")
        assert out.returncode == 0, out.stderr

    def verify(
        self, registry: Registry, image: str, pub: Path, *, bundle: bool = False
    ) -> subprocess.CompletedProcess[str]:
        root = self.workdir / "trusted_root.json"
        root.write_text(EMPTY_TRUSTED_ROOT)
        args = [
            "verify",
            "--key",
            str(pub),
            "--insecure-ignore-tlog",
            "--trusted-root",
            str(root),
            f"--new-bundle-format={'true' if bundle else 'false'}",
            *self._registry_flags(registry),
            f"{registry.host}/{image}",
        ]
        return self.run(*args)

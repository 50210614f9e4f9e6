"""oci:// module supply through the real docker-registry: every layout x every registry variant, the cache
consulted by manifest digest before any blob, pinning, mutable tags, auth failures and the realm SSRF check."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest

from meshplug import errors
from meshplug.fetch import Fetcher, FetchOptions, Layout
from tests.testbed.fixtures_registry import REGISTRY_VARIANTS
from tests.testbed.origin import wasm_module
from tests.testbed.registry import LAYOUTS, OCI_MANIFEST, Registry, targz

WASM = wasm_module(11)
WASM_SHA = hashlib.sha256(WASM).hexdigest()


def fetcher_for(registry: Registry, tmp_path: Path, **overrides: Any) -> Fetcher:
    options: dict[str, Any] = {
        "cache_dir": tmp_path / "cache",
        "request_timeout_s": 5.0,
        "overall_timeout_s": 20.0,
        "max_attempts": 2,
        "first_backoff_s": 0.05,
    }
    if registry.tls:
        options["ca_bundles"] = {registry.host: registry.ca_file}
    else:
        options["allow_insecure_registries"] = (registry.host,)
    options["allow_loopback"] = True  # the test bed's registries listen on 127.0.0.1
    options.update(overrides)
    return Fetcher(FetchOptions(**options))


def blob_gets(registry: Registry) -> int:
    assert registry.proc is not None
    return len(re.findall(r'"GET /v2/[^ ]+/blobs/sha256:', registry.proc.log()))


def tree(root: Path) -> dict[str, str]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.mark.parametrize("variant", REGISTRY_VARIANTS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_from_every_registry(
    registries: dict[str, Registry], tmp_path: Path, variant: str, layout: str
) -> None:
    registry = registries[variant]
    tag = f"v-{uuid.uuid4().hex[:8]}"
    manifest_digest = registry.push_layout(layout, f"fetch/{layout}", tag, WASM)
    secret = registry.pull_secret() if registry.username else None
    fetcher = fetcher_for(registry, tmp_path)
    artifact = fetcher.fetch(registry.url(f"fetch/{layout}", tag), sha256=WASM_SHA, pull_secret=secret)
    assert (artifact.data, artifact.layout, artifact.manifest_digest) == (WASM, Layout(layout), manifest_digest)
    assert artifact.from_cache is False
    by_digest = fetcher.fetch(registry.url(f"fetch/{layout}", manifest_digest), pull_secret=secret)
    assert by_digest.from_cache and by_digest.data == WASM  # same manifest: no blob pulled again
    assert fetcher.cache.listing() == {WASM_SHA: len(WASM)}


def test_cache_is_consulted_by_manifest_digest_before_any_blob(registries: dict[str, Registry], tmp_path: Path) -> None:
    registry = registries["plain"]
    digest = registry.push_layout("oci-image", "fetch/once", "a", WASM)
    assert registry.push_layout("oci-image", "fetch/once", "b", WASM) == digest
    fetcher = fetcher_for(registry, tmp_path)
    fetcher.fetch(registry.url("fetch/once", "a"))
    procs_gets = blob_gets(registry)
    second = fetcher.fetch(registry.url("fetch/once", "b"))  # another tag, same manifest
    assert second.from_cache and second.manifest_digest == digest
    assert blob_gets(registry) == procs_gets


def test_pinned_digest_and_sha256_semantics(registries: dict[str, Registry], tmp_path: Path) -> None:
    registry = registries["tls"]
    digest = registry.push_layout("cncf-wasm-artifact", "fetch/pinned", "v1", WASM)
    fetcher = fetcher_for(registry, tmp_path)
    wrong = "2" * 64
    with pytest.raises(errors.FetchError, match="module bytes or image manifest") as caught:
        fetcher.fetch(registry.url("fetch/pinned", "v1"), sha256=wrong)
    assert caught.value.reason == "checksum_mismatched"
    assert fetcher.cache.listing() == {}
    # Istio's meaning of sha256 for OCI (the manifest digest) pins the image too, so Istio manifests port as is
    by_manifest = fetcher.fetch(registry.url("fetch/pinned", "v1"), sha256=digest.removeprefix("sha256:"))
    assert by_manifest.sha256 == WASM_SHA and by_manifest.manifest_digest == digest
    other = "sha256:" + "1" * 64
    with pytest.raises(errors.FetchError) as caught:
        fetcher.fetch(registry.url("fetch/pinned", other))
    assert caught.value.reason == "not_found"
    assert fetcher.fetch(registry.url("fetch/pinned", digest), sha256=WASM_SHA).manifest_digest == digest


def test_mutable_tag_is_re_resolved_and_reports_the_new_digest(registries: dict[str, Registry], tmp_path: Path) -> None:
    registry = registries["plain"]
    old = registry.push_layout("oras-artifact", "fetch/moving", "stable", WASM)
    steady = fetcher_for(registry, tmp_path / "steady")
    tracking = fetcher_for(registry, tmp_path / "tracking", reresolve_interval_s=0)
    url = registry.url("fetch/moving", "stable")
    assert steady.fetch(url).manifest_digest == old
    assert tracking.fetch(url).manifest_digest == old
    new_wasm = wasm_module(12)
    new = registry.push_layout("oras-artifact", "fetch/moving", "stable", new_wasm)
    kept = steady.fetch(url)  # IfNotPresent without an interval: the cached module
    assert (kept.manifest_digest, kept.from_cache) == (old, True)
    moved = tracking.fetch(url)
    assert (moved.manifest_digest, moved.previous_manifest_digest, moved.data) == (new, old, new_wasm)
    assert steady.fetch(url, pull_policy="Always").manifest_digest == new


def test_latest_tag_is_always_re_resolved(registries: dict[str, Registry], tmp_path: Path) -> None:
    registry = registries["plain"]
    registry.push_layout("wasm-content-single-layer", "fetch/latest", "latest", WASM)
    fetcher = fetcher_for(registry, tmp_path)
    url = f"oci://{registry.host}/fetch/latest"
    assert fetcher.fetch(url).data == WASM
    registry.push_layout("wasm-content-single-layer", "fetch/latest", "latest", wasm_module(13))
    assert fetcher.fetch(url).data == wasm_module(13)
    assert fetcher.fetch(url, pull_policy="IfNotPresent").data == wasm_module(13)


AUTH_FAILURES = [
    ("basic", None, "unauthorized"),
    ("basic", "wrong", "unauthorized"),
    ("token", None, "unauthorized"),
    ("token", "wrong", "unauthorized"),
]


@pytest.mark.parametrize(("variant", "secret", "reason"), AUTH_FAILURES)
def test_auth_failures(
    registries: dict[str, Registry], tmp_path: Path, variant: str, secret: str | None, reason: str
) -> None:
    registry = registries[variant]
    tag = f"v-{uuid.uuid4().hex[:8]}"
    registry.push_layout("oci-image", "fetch/private", tag, WASM)
    pull_secret = None
    if secret is not None:
        pull_secret = json.dumps({"auths": {registry.host: {"username": registry.username, "password": secret}}})
    fetcher = fetcher_for(registry, tmp_path)
    with pytest.raises(errors.FetchError) as caught:
        fetcher.fetch(registry.url("fetch/private", tag), pull_secret=pull_secret.encode() if pull_secret else None)
    assert caught.value.reason == reason
    assert "s3cret" not in str(caught.value) and "wrong" not in str(caught.value)
    assert fetcher.cache.listing() == {}


def test_plain_http_registry_only_when_allowed(registries: dict[str, Registry], tmp_path: Path) -> None:
    registry = registries["plain"]
    registry.push_layout("oci-image", "fetch/insecure", "v1", WASM)
    fetcher = fetcher_for(registry, tmp_path, allow_insecure_registries=())
    with pytest.raises(errors.FetchError) as caught:
        fetcher.fetch(registry.url("fetch/insecure", "v1"))
    assert caught.value.reason == "download_failure"
    assert "TLS" in str(caught.value)


def test_token_realm_at_the_metadata_address_is_refused(metadata_realm_registry: Registry, tmp_path: Path) -> None:
    registry = metadata_realm_registry
    fetcher = fetcher_for(registry, tmp_path)
    with pytest.raises(errors.FetchError) as caught:
        fetcher.fetch(registry.url("fetch/any", "v1"), pull_secret=registry.pull_secret())
    assert caught.value.reason == "blocked"
    assert "169.254.169.254" in str(caught.value)


def _bad_manifest(registry: Registry, repo: str, layers: list[tuple[bytes, str]]) -> str:
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {**registry.push_blob(repo, b"{}"), "mediaType": "application/vnd.oci.image.config.v1+json"},
        "layers": [{**registry.push_blob(repo, data), "mediaType": media} for data, media in layers],
    }
    tag = f"bad-{uuid.uuid4().hex[:8]}"
    registry.push_manifest(repo, tag, manifest)
    return tag


TGZ = "application/vnd.oci.image.layer.v1.tar+gzip"
CONTENT = "application/vnd.module.wasm.content.layer.v1+wasm"
OCI_FAILURES = [
    ("no plugin.wasm in the image", [(targz({"readme.txt": b"hi"}), TGZ)], {}, "not_wasm"),
    ("unknown layer type", [(WASM, "application/x-something")], {}, "manifest_failure"),
    ("layer over the cap", [(WASM + b"\0" * 4096, CONTENT)], {"max_module_bytes": 1024}, "too_large"),
    ("wrong sha256", [(WASM, CONTENT)], {"sha256": "0" * 64}, "checksum_mismatched"),
    ("missing tag", [], {}, "not_found"),
]


@pytest.mark.parametrize("case", OCI_FAILURES, ids=[c[0] for c in OCI_FAILURES])
def test_oci_failures_are_specific_and_leave_the_cache_alone(
    registries: dict[str, Registry], tmp_path: Path, case: tuple[str, list[tuple[bytes, str]], dict[str, Any], str]
) -> None:
    _, layers, overrides, reason = case
    registry = registries["plain"]
    sha256 = overrides.pop("sha256", None)
    overrides = {"max_module_bytes": 1024 * 1024, **overrides}
    fetcher = fetcher_for(registry, tmp_path, **overrides)
    registry.push_layout("oci-image", "fetch/bystander", "v1", wasm_module(14))
    fetcher.fetch(registry.url("fetch/bystander", "v1"))
    before = tree(fetcher.cache.root)
    tag = _bad_manifest(registry, "fetch/bad", layers) if layers else "no-such-tag"
    with pytest.raises(errors.FetchError) as caught:
        fetcher.fetch(registry.url("fetch/bad", tag), sha256=sha256)
    assert caught.value.reason == reason, caught.value
    assert tree(fetcher.cache.root) == before

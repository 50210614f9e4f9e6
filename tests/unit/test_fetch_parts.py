"""Fast tests of module supply's parts: SSRF guard decisions, unboxing, references, layouts, pull secrets,
options, cache and single-flight, metrics. No network: everything here is in-process."""

from __future__ import annotations

import base64
import gzip
import ipaddress
import json
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from meshplug import errors
from meshplug.fetch import Fetcher, FetchOptions, Layout, cache, guard, oci, unbox
from meshplug.fetch.metrics import FetchMetrics
from tests.testbed.origin import tar_of, wasm_module
from tests.testbed.procs import wait_until

WASM = wasm_module(31)


# --- guard -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("address", "allow_loopback", "extra", "refused"),
    [
        ("169.254.169.254", True, (), True),
        ("169.254.0.1", True, (), True),
        ("fe80::1", True, (), True),
        ("::ffff:169.254.169.254", True, (), True),
        ("fd00:ec2::254", True, (), True),
        ("100.100.100.200", True, (), True),
        ("127.0.0.1", False, (), True),  # the default: loopback refused
        ("127.0.0.1", True, (), False),
        ("::ffff:127.0.0.1", False, (), True),
        ("0.0.0.0", False, (), True),
        ("::1", False, (), True),
        ("::", False, (), True),
        ("64:ff9b::a9fe:a9fe", True, (), True),  # NAT64 (DNS64 on an IPv6-only cluster) to 169.254.169.254
        ("64:ff9b::7f00:1", False, (), True),  # NAT64 to 127.0.0.1
        ("64:ff9b::a01:203", False, ("10.0.0.0/8",), True),  # NAT64 to a configured block
        ("64:ff9b::5db8:d822", False, (), False),  # NAT64 to a public address
        ("2002:a9fe:a9fe::1", True, (), True),  # 6to4 to the metadata address
        ("::a9fe:a9fe", True, (), True),  # IPv4-compatible
        ("::7f00:1", False, (), True),
        ("10.1.2.3", False, (), False),
        ("10.1.2.3", False, ("10.0.0.0/8",), True),
        ("2001:db8::1", False, ("2001:db8::/32",), True),
        ("93.184.216.34", False, ("10.0.0.0/8",), False),
    ],
)
def test_guard_decisions(address: str, allow_loopback: bool, extra: tuple[str, ...], refused: bool) -> None:
    g = guard.Guard([ipaddress.ip_network(c) for c in extra], allow_loopback=allow_loopback)
    assert g.refused(ipaddress.ip_address(address)) is refused


def test_loopback_is_refused_unless_allowed_by_default() -> None:
    assert guard.Guard().refused(ipaddress.ip_address("127.0.0.1"))
    assert not FetchOptions().allow_loopback


@pytest.mark.parametrize(
    "url", ["http://169.254.169.254/latest", "https://[fe80::1]:8443/x", "http://[::ffff:169.254.169.254]/"]
)
def test_guard_refuses_literal_urls_before_connecting(url: str) -> None:
    with pytest.raises(errors.FetchError) as caught:
        guard.Guard().check_url(url)
    assert caught.value.reason == "blocked"


@pytest.mark.parametrize(
    ("url", "error", "says"),
    [
        ("http://x:abc/m.wasm", errors.ConfigError, "invalid url 'http://x:abc/m.wasm': Port could not be cast"),
        ("https://[::1/m.wasm", errors.ConfigError, "invalid url 'https://[::1/m.wasm': Invalid IPv6 URL"),
        ("https://x:99999/m.wasm", errors.ConfigError, "Port out of range"),
        ("oci://reg:abc/f:v1", errors.ConfigError, "invalid url 'oci://reg:abc/f:v1'"),
        ("reg:99999/f:v1", errors.FetchError, "invalid registry 'reg:99999': Port out of range"),
    ],
)
def test_malformed_urls_are_bad_input_naming_the_url(
    url: str, error: type[Exception], says: str, tmp_path: Path
) -> None:
    with pytest.raises(error, match=re.escape(says)):
        Fetcher(FetchOptions(cache_dir=tmp_path)).fetch(url)


# --- unbox -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "wrapped",
    [
        WASM,
        gzip.compress(WASM),
        gzip.compress(gzip.compress(WASM)),
        tar_of({"README": b"x", "plugin.wasm": WASM}),
        tar_of({"a/other.wasm": WASM}),
        gzip.compress(tar_of({"plugin.wasm": WASM})),
        gzip.compress(WASM[:10]) + gzip.compress(WASM[10:]),  # concatenated gzip members
    ],
    ids=["raw", "gzip", "gzip-gzip", "tar", "tar-any-wasm", "tar.gz", "gzip-members"],
)
def test_unbox_finds_the_module(wrapped: bytes) -> None:
    assert unbox.unbox(wrapped, cap=1 << 20) == WASM


@pytest.mark.parametrize(
    ("data", "cap", "reason"),
    [
        (b"hello", 1 << 20, "not_wasm"),
        (b"", 1 << 20, "not_wasm"),
        (gzip.compress(b"\0" * (4 << 20)), 1 << 20, "too_large"),
        (gzip.compress(WASM)[:-12], 1 << 20, "download_failure"),
        (tar_of({"readme.txt": b"no"}), 1 << 20, "not_wasm"),
        (tar_of({"plugin.wasm": WASM}), 16, "too_large"),
        (gzip.compress(gzip.compress(gzip.compress(gzip.compress(WASM)))), 1 << 20, "not_wasm"),
    ],
    ids=["text", "empty", "bomb", "truncated-gzip", "tar-without-wasm", "tar-member-over-cap", "too-deep"],
)
def test_unbox_failures(data: bytes, cap: int, reason: str) -> None:
    with pytest.raises(errors.FetchError) as caught:
        unbox.unbox(data, cap=cap)
    assert caught.value.reason == reason


# --- references, layouts, secrets --------------------------------------------------------------------
D = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("oci://localhost:5000/filters/auth:v1", ("localhost:5000", "filters/auth", "v1", None)),
        ("localhost:5000/filters/auth", ("localhost:5000", "filters/auth", "latest", None)),
        (f"ghcr.io/org/f@{D}", ("ghcr.io", "org/f", None, D)),
        (f"ghcr.io/org/f:v2@{D}", ("ghcr.io", "org/f", "v2", D)),
        ("nginx", ("registry-1.docker.io", "library/nginx", "latest", None)),
        ("user/img:1.0", ("registry-1.docker.io", "user/img", "1.0", None)),
    ],
)
def test_parse_reference(url: str, expected: tuple[str, str, str | None, str | None]) -> None:
    ref = oci.parse_reference(url)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == expected


@pytest.mark.parametrize("url", ["oci://", "oci:foo", "ghcr.io/Org/F:v1", "ghcr.io/o/f@sha256:abc", "a/b:bad tag"])
def test_parse_reference_refuses(url: str) -> None:
    with pytest.raises(errors.FetchError):
        oci.parse_reference(url)


def desc(media_type: str, n: int = 1, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": "sha256:" + f"{n:x}" * 64, "size": 10, **extra}


DOCKER_L = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_L = "application/vnd.oci.image.layer.v1.tar+gzip"
CONTENT = "application/vnd.module.wasm.content.layer.v1+wasm"
LAYOUT_CASES: list[tuple[str, dict[str, Any], Layout | str]] = [
    ("docker", {"mediaType": oci.MT_DOCKER_MANIFEST, "config": desc("application/vnd.docker.container.image.v1+json"),
                "layers": [desc(DOCKER_L, 1), desc(DOCKER_L, 2)]}, Layout.DOCKER_IMAGE),
    ("oci", {"mediaType": oci.MT_OCI_MANIFEST, "config": desc("application/vnd.oci.image.config.v1+json"),
             "layers": [desc(OCI_L, 2)]}, Layout.OCI_IMAGE),
    ("two-layer", {"config": desc("application/vnd.module.wasm.config.v1+json"),
                   "layers": [desc(CONTENT, 2), desc("application/json", 3)]}, Layout.WASM_TWO_LAYER),
    ("single", {"config": desc("application/vnd.module.wasm.config.v1+json"), "layers": [desc(CONTENT, 2)]},
     Layout.WASM_SINGLE_LAYER),
    ("cncf", {"config": desc(oci.MT_CNCF_CONFIG), "layers": [desc("application/wasm", 2)]}, Layout.CNCF_WASM),
    ("oras-empty", {"config": desc("application/vnd.oci.empty.v1+json"),
                    "layers": [desc("application/vnd.oci.image.layer.v1.tar", 2,
                                    annotations={"org.opencontainers.image.title": "f.wasm"})]}, Layout.ORAS),
    ("no layers", {"config": desc("x"), "layers": []}, "manifest_failure"),
    ("two content layers", {"config": desc("x"), "layers": [desc(CONTENT, 2), desc(CONTENT, 3)]}, "manifest_failure"),
    ("cncf without wasm", {"config": desc(oci.MT_CNCF_CONFIG), "layers": [desc(OCI_L, 2)]}, "manifest_failure"),
    ("bad digest", {"config": desc("x"), "layers": [{"mediaType": CONTENT, "digest": "md5:1", "size": 1}]},
     "manifest_failure"),
]  # fmt: skip


@pytest.mark.parametrize(("manifest", "expected"), [c[1:] for c in LAYOUT_CASES], ids=[c[0] for c in LAYOUT_CASES])
def test_select_layer(manifest: dict[str, Any], expected: Layout | str) -> None:
    if isinstance(expected, Layout):
        choice = oci.select_layer(manifest, oci.MT_OCI_MANIFEST)
        assert choice.layout is expected
        assert (
            choice.digest
            == manifest["layers"][-1 if expected in (Layout.DOCKER_IMAGE, Layout.OCI_IMAGE) else 0]["digest"]
        )
    else:
        with pytest.raises(errors.FetchError) as caught:
            oci.select_layer(manifest, oci.MT_OCI_MANIFEST)
        assert caught.value.reason == expected


def dockerconfig(key: str, entry: dict[str, str]) -> bytes:
    return json.dumps({"auths": {key: entry}}).encode()


def as_secret(config: bytes) -> bytes:
    return json.dumps(
        {"type": "kubernetes.io/dockerconfigjson", "data": {".dockerconfigjson": base64.b64encode(config).decode()}}
    ).encode()


AUTH = {"auth": base64.b64encode(b"u:p:with:colons").decode()}


@pytest.mark.parametrize(
    ("secret", "registry", "expected"),
    [
        (dockerconfig("reg.example:5000", AUTH), "reg.example:5000", ("u", "p:with:colons")),
        (dockerconfig("https://reg.example:5000/v1/", AUTH), "reg.example:5000", ("u", "p:with:colons")),
        (as_secret(dockerconfig("reg.example", {"username": "a", "password": "b"})), "reg.example", ("a", "b")),
        (dockerconfig("https://index.docker.io/v1/", AUTH), "registry-1.docker.io", ("u", "p:with:colons")),
        (dockerconfig("other.example", AUTH), "reg.example", None),
    ],
)
def test_credentials_for(secret: bytes, registry: str, expected: tuple[str, str] | None) -> None:
    creds = oci.credentials_for(secret, registry)
    assert (None if creds is None else (creds.username, creds.password)) == expected
    if creds is not None:
        assert creds.password not in repr(creds)


@pytest.mark.parametrize("secret", [b"[1, 2]", b"{}", json.dumps({"type": "Opaque", "data": {"x": "eQ=="}}).encode()])
def test_credentials_for_refuses_other_documents(secret: bytes) -> None:
    with pytest.raises(errors.ConfigError):
        oci.credentials_for(secret, "reg.example")


# --- options -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "bad",
    [
        {"request_timeout_s": 0},
        {"max_attempts": 0},
        {"max_module_bytes": 0},
        {"max_module_bytes": 1 << 40},
        {"blocked_cidrs": ("not-a-cidr",)},
        {"file_roots": (Path("relative"),)},
        {"ca_bundles": {"x": Path("/nonexistent/ca.pem")}},
    ],
)
def test_options_sanitising_refuses(bad: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(errors.ConfigError):
        FetchOptions(cache_dir=tmp_path, **bad).sanitized()


def test_options_sanitising_normalises(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    opts = FetchOptions(
        cache_dir=tmp_path,
        request_timeout_s=30,
        overall_timeout_s=5,
        blocked_cidrs=("10.1.2.3/8",),
        allow_insecure_registries=("Reg.Example:5000",),
        ca_bundles={"Reg.Example": ca},
    ).sanitized()
    assert opts.overall_timeout_s == 30
    assert opts.blocked_cidrs == ("10.0.0.0/8",)
    assert opts.insecure_allowed("reg.example:5000") and not opts.insecure_allowed("reg.example:5001")
    assert opts.ca_bundle_for("reg.example", 443) == ca and opts.ca_bundle_for("other", None) is None


# --- cache and single-flight -------------------------------------------------------------------------
def test_cache_round_trip_corruption_and_expiry(tmp_path: Path) -> None:
    c = cache.Cache(tmp_path)
    digest = c.put_blob(WASM)
    c.put_manifest("reg/repo", "sha256:" + "b" * 64, cache.ManifestEntry(digest, Layout.ORAS))
    c.put_ref("key", cache.RefEntry("u", digest, None, Layout.HTTP, 1.0))
    assert c.get_blob(digest) == WASM and c.entries() == 1
    assert c.get_manifest("reg/repo", "sha256:" + "b" * 64) == cache.ManifestEntry(digest, Layout.ORAS)
    assert c.get_manifest("reg/other", "sha256:" + "b" * 64) is None  # keyed by repository too
    other = c.put_blob(wasm_module(32))
    old = time.time() - 3600
    os.utime(c.blob_path(digest), (old, old))
    assert c.expire(60) == [digest]
    assert c.get_ref("key") is None and c.get_blob(other) is not None
    c.blob_path(other).write_bytes(b"tampered")
    assert c.get_blob(other) is None and not c.has_blob(other)
    assert list((tmp_path / "tmp").iterdir()) == []


def test_single_flight_shares_one_call_and_its_error() -> None:
    flights: cache.SingleFlight[int] = cache.SingleFlight()
    entered, release = threading.Event(), threading.Event()
    calls: list[int] = []

    def slow() -> int:
        calls.append(1)
        entered.set()
        release.wait(10)
        return 42

    results: list[tuple[int, bool]] = []
    leader = threading.Thread(target=lambda: results.append(flights.do("k", slow)))
    leader.start()
    assert entered.wait(10)
    followers = [threading.Thread(target=lambda: results.append(flights.do("k", slow))) for _ in range(5)]
    for t in followers:
        t.start()
    wait_until(lambda: flights.waiters("k") == 5, timeout=10, what="five callers waiting on the flight")
    release.set()
    for t in [leader, *followers]:
        t.join(10)
    assert len(calls) == 1
    assert sorted(results) == [(42, False)] + [(42, True)] * 5
    assert flights.waiters("k") == 0

    def boom() -> int:
        raise errors.FetchError("x", reason="not_wasm")

    with pytest.raises(errors.FetchError):
        flights.do("k", boom)


def test_metrics_exposition() -> None:
    m = FetchMetrics(entries=lambda: 3)
    m.record_fetch("success")
    m.record_fetch("blocked")
    m.record_lookup(hit=True)
    text = m.exposition()
    assert 'meshplug_wasm_remote_fetch_total{result="blocked"} 1' in text
    assert 'meshplug_wasm_remote_fetch_total{result="checksum_mismatched"} 0' in text
    assert 'meshplug_wasm_cache_lookup_total{hit="true"} 1' in text
    assert "meshplug_wasm_cache_entries 3" in text
    assert text.endswith("\n") and "# TYPE meshplug_wasm_cache_entries gauge" in text

"""https:// module supply against the real TLS origin: the success paths and the failure table."""

from __future__ import annotations

import gzip
import hashlib
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from meshplug import errors
from meshplug.fetch import Fetcher, FetchOptions, Layout
from tests.testbed.origin import Origin, tar_of, wasm_module

WASM = wasm_module(1)
WASM_SHA = hashlib.sha256(WASM).hexdigest()


def tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` with the sha256 of its content (what 'the cache' is, byte for byte)."""
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def make_fetcher(tmp_path: Path, origin: Origin, **overrides: Any) -> Fetcher:
    options: dict[str, Any] = {
        "cache_dir": tmp_path / "cache",
        "ca_bundles": {"localhost": origin.ca_file},
        "request_timeout_s": 2.0,
        "overall_timeout_s": 10.0,
        "max_attempts": 3,
        "first_backoff_s": 0.05,
        "max_module_bytes": 256 * 1024,
        "max_decompressed_bytes": 1024 * 1024,
        "allow_loopback": True,  # the test bed's origin listens on 127.0.0.1
    }
    options.update(overrides)
    return Fetcher(FetchOptions(**options))


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (WASM, {}),
        (gzip.compress(WASM), {}),
        (gzip.compress(WASM), {"Content-Encoding": "gzip"}),
        (tar_of({"plugin.wasm": WASM}), {}),
        (gzip.compress(tar_of({"dist/filter.wasm": WASM})), {}),
    ],
    ids=["raw", "gzip", "gzip-content-encoding", "tar", "tar.gz"],
)
def test_https_fetch_unboxes_verifies_and_caches(
    tmp_path: Path, origin: Origin, body: bytes, headers: dict[str, str]
) -> None:
    path = f"/{uuid.uuid4().hex}.wasm"
    url = origin.program(path, body=body, headers=headers)
    fetcher = make_fetcher(tmp_path, origin)
    first = fetcher.fetch(url, sha256=WASM_SHA)
    assert (first.data, first.sha256, first.layout, first.from_cache) == (WASM, WASM_SHA, Layout.HTTP, False)
    again = fetcher.fetch(url, sha256=WASM_SHA)
    assert again.from_cache and again.data == WASM
    assert origin.count(path) == 1
    assert fetcher.cache.listing() == {WASM_SHA: len(WASM)}
    assert fetcher.fetch(url, pull_policy="Always").from_cache is False
    assert origin.count(path) == 2


def test_500_then_200_is_retried(tmp_path: Path, origin: Origin) -> None:
    path = f"/{uuid.uuid4().hex}"
    url = origin.program(path, body=WASM, fail_first=2, fail_status=500)
    artifact = make_fetcher(tmp_path, origin).fetch(url)
    assert artifact.data == WASM
    assert origin.count(path) == 3


BOMB = gzip.compress(b"\0" * (8 * 1024 * 1024), compresslevel=9)
WRONG = "0" * 64


# (name, programmed behaviour, fetch kwargs, expected reason, expected origin requests or None)
FAILURES: list[tuple[str, dict[str, Any], dict[str, Any], str, int | None]] = [
    ("wrong sha256", {"body": WASM}, {"sha256": WRONG}, "checksum_mismatched", 1),
    ("truncated body", {"body": WASM, "truncate_to": 10}, {}, "download_failure", 3),
    ("oversized, announced", {"body": b"\0asm" + b"\0" * 300_000}, {}, "too_large", 1),
    ("oversized, streamed", {"stream_bytes": 2 * 1024 * 1024}, {}, "too_large", 1),
    ("gzip bomb", {"body": BOMB}, {}, "too_large", 1),
    ("not wasm", {"body": b"<html>hello</html>"}, {}, "not_wasm", 1),
    ("404", {"status": 404, "body": b"nope"}, {}, "not_found", 1),
    ("403 is never retried", {"status": 403, "body": b"no"}, {}, "unauthorized", 1),
    ("501 is never retried", {"status": 501, "body": b"no"}, {}, "download_failure", 1),
    ("500 forever", {"fail_first": 99, "fail_status": 500}, {}, "download_failure", 3),
    ("slow past the timeout", {"body": WASM, "delay_s": 3}, {}, "timeout", None),
    ("redirect to metadata", {"redirect": "http://169.254.169.254/latest/meta-data/"}, {}, "blocked", 1),
    ("redirect to IPv6 link-local", {"redirect": "http://[fe80::1]:80/x"}, {}, "blocked", 1),
    ("redirect to NAT64 metadata", {"redirect": "https://[64:ff9b::a9fe:a9fe]/x"}, {}, "blocked", 1),
    ("redirect to a bad port", {"redirect": "https://localhost:x80/x"}, {}, "download_failure", 1),
    ("redirect to an open IPv6 bracket", {"redirect": "https://[::1/x"}, {}, "download_failure", 1),
]


@pytest.mark.parametrize("case", FAILURES, ids=[row[0] for row in FAILURES])
def test_failure_is_specific_and_leaves_the_cache_alone(
    tmp_path: Path, origin: Origin, case: tuple[str, dict[str, Any], dict[str, Any], str, int | None]
) -> None:
    _, behaviour, kwargs, reason, requests_seen = case
    fetcher = make_fetcher(tmp_path, origin, request_timeout_s=0.5, overall_timeout_s=4.0, max_attempts=3)
    bystander = origin.program(f"/{uuid.uuid4().hex}", body=wasm_module(2))
    fetcher.fetch(bystander)
    before = tree(fetcher.cache.root)
    path = f"/{uuid.uuid4().hex}"
    url = origin.program(path, **behaviour)
    with pytest.raises(errors.FetchError) as caught:
        fetcher.fetch(url, **kwargs)
    assert caught.value.reason == reason, caught.value
    assert "\n" not in str(caught.value)
    assert tree(fetcher.cache.root) == before
    if requests_seen is not None:
        assert origin.count(path) == requests_seen
    assert fetcher.metrics.fetches(reason) == 1


def test_connect_time_guard_refuses_a_name_that_resolves_to_a_blocked_address(tmp_path: Path, origin: Origin) -> None:
    path = f"/{uuid.uuid4().hex}"
    url = origin.program(path, body=WASM)  # https://localhost:... -> resolved only when connecting
    fetcher = make_fetcher(tmp_path, origin, allow_loopback=False)  # the default of a server
    with pytest.raises(errors.FetchError) as caught:
        fetcher.fetch(url)
    assert caught.value.reason == "blocked"
    assert origin.count(path) == 0


def test_without_the_ca_bundle_tls_verification_fails(tmp_path: Path, origin: Origin) -> None:
    url = origin.program(f"/{uuid.uuid4().hex}", body=WASM)
    with pytest.raises(errors.FetchError, match="TLS failed") as caught:
        make_fetcher(tmp_path, origin, ca_bundles={}).fetch(url)
    assert caught.value.reason == "download_failure"


@pytest.mark.parametrize("callers", [8, 32])
def test_concurrent_requests_for_one_module_fetch_once(tmp_path: Path, origin: Origin, callers: int) -> None:
    path = f"/{uuid.uuid4().hex}"
    url = origin.program(path, body=WASM, delay_s=0.3)  # the flight stays open while all callers arrive
    fetcher = make_fetcher(tmp_path, origin)
    barrier = threading.Barrier(callers)
    results: list[bytes] = []
    failures: list[BaseException] = []

    def call() -> None:
        barrier.wait()
        try:
            results.append(fetcher.fetch(url, sha256=WASM_SHA).data)
        except BaseException as exc:
            failures.append(exc)

    threads: list[threading.Thread] = [threading.Thread(target=call) for _ in range(callers)]
    run_all(threads)
    assert failures == []
    assert results == [WASM] * callers
    assert origin.count(path) == 1


def run_all(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
        assert not thread.is_alive()

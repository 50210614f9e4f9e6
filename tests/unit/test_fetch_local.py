"""file:// sources: only below the configured roots; symlinks and `..` cannot escape; sha256 enforced."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from meshplug import errors
from meshplug.fetch import Fetcher, FetchOptions, Layout
from tests.testbed.origin import wasm_module

WASM = wasm_module(21)


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    """tmp/root (allowed) with a module and traps; tmp/outside with a module that must stay unreachable."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (root / "ok.wasm").write_bytes(WASM)
    (root / "sub" / "nested.wasm").write_bytes(WASM)
    (root / "text.txt").write_text("not a module")
    (outside / "secret.wasm").write_bytes(wasm_module(22))
    os.symlink(outside / "secret.wasm", root / "link-out.wasm")
    os.symlink(outside, root / "dir-out")
    os.symlink(root / "ok.wasm", root / "link-in.wasm")
    os.symlink(tmp_path / "rootish", root / "dangling.wasm")
    (tmp_path / "root-sibling").mkdir()
    (tmp_path / "root-sibling" / "x.wasm").write_bytes(WASM)
    return tmp_path


def fetcher(tmp: Path, roots: tuple[Path, ...] | None = None) -> Fetcher:
    return Fetcher(FetchOptions(cache_dir=tmp / "cache", file_roots=(tmp / "root",) if roots is None else roots))


@pytest.mark.parametrize("rel", ["root/ok.wasm", "root/sub/nested.wasm", "root/link-in.wasm", "root/sub/../ok.wasm"])
def test_reads_modules_below_the_root(layout: Path, rel: str) -> None:
    artifact = fetcher(layout).fetch(f"file://{layout}/{rel}", sha256=hashlib.sha256(WASM).hexdigest())
    assert (artifact.data, artifact.layout, artifact.manifest_digest) == (WASM, Layout.FILE, None)


ESCAPES = [
    ("dotdot", "root/../outside/secret.wasm", "blocked"),
    ("encoded dotdot", "root/%2E%2E/outside/secret.wasm", "blocked"),
    ("symlinked file", "root/link-out.wasm", "blocked"),
    ("symlinked dir", "root/dir-out/secret.wasm", "blocked"),
    ("prefix sibling", "root-sibling/x.wasm", "blocked"),
    ("dangling symlink out", "root/dangling.wasm", "blocked"),
    ("missing inside", "root/nope.wasm", "not_found"),
    ("not wasm", "root/text.txt", "not_wasm"),
    ("directory", "root/sub", "download_failure"),
]


@pytest.mark.parametrize(("rel", "reason"), [e[1:] for e in ESCAPES], ids=[e[0] for e in ESCAPES])
def test_escapes_and_failures(layout: Path, rel: str, reason: str) -> None:
    f = fetcher(layout)
    with pytest.raises(errors.FetchError) as caught:
        f.fetch(f"file://{layout}/{rel}")
    assert caught.value.reason == reason
    assert f.cache.listing() == {}


def test_file_urls_are_refused_without_roots(layout: Path) -> None:
    with pytest.raises(errors.FetchError) as caught:
        fetcher(layout, roots=()).fetch(f"file://{layout}/root/ok.wasm")
    assert caught.value.reason == "blocked"


@pytest.mark.parametrize("url", ["file://evil.example/etc/passwd", "file:relative.wasm"])
def test_malformed_file_urls(layout: Path, url: str) -> None:
    with pytest.raises(errors.FetchError):
        fetcher(layout).fetch(url)


def test_sha256_is_enforced_for_files(layout: Path) -> None:
    f = fetcher(layout)
    with pytest.raises(errors.FetchError) as caught:
        f.fetch(f"file://{layout}/root/ok.wasm", sha256="ab" * 32)
    assert caught.value.reason == "checksum_mismatched"
    assert f.cache.listing() == {}


def test_file_is_read_again_each_time(layout: Path) -> None:
    f = fetcher(layout)
    url = f"file://{layout}/root/ok.wasm"
    assert f.fetch(url).data == WASM
    (layout / "root" / "ok.wasm").write_bytes(wasm_module(23))
    assert f.fetch(url).data == wasm_module(23)

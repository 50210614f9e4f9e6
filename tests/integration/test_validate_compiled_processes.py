"""Two processes load the same module through meshplug.compiled at once: one compiles, the other waits on the
per-key lock and loads the artifact; neither ever sees a partial file."""

from __future__ import annotations

import hashlib
import multiprocessing
from multiprocessing.synchronize import Barrier
from pathlib import Path

import wasmtime

from meshplug import compiled

# big enough that compiling takes a noticeable time, so the second process really waits on the first
WAT = (
    "(module "
    + " ".join(
        f'(func (export "f{i}") (param i32) (result i32)'
        f" (i32.mul (i32.add (local.get 0) (i32.const {i})) (i32.const 3)))"
        for i in range(3000)
    )
    + ")"
)
SETTINGS = "default"


def _worker(root: str, data: bytes, barrier: Barrier, results: multiprocessing.Queue[tuple[str, int]]) -> None:
    engine = wasmtime.Engine()
    cache = compiled.ArtifactCache(engine, settings=SETTINGS, root=Path(root))
    barrier.wait(timeout=60)
    loaded = cache.load(data)
    store = wasmtime.Store(engine)
    func = wasmtime.Instance(store, loaded.module, []).exports(store)["f7"]
    assert isinstance(func, wasmtime.Func)
    results.put((loaded.outcome.value, int(func(store, 1))))


def test_two_processes_compile_once(tmp_path: Path) -> None:
    data = bytes(wasmtime.wat2wasm(WAT))
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    results: multiprocessing.Queue[tuple[str, int]] = ctx.Queue()
    workers = [ctx.Process(target=_worker, args=(str(tmp_path), data, barrier, results)) for _ in range(2)]
    for w in workers:
        w.start()
    try:
        got = sorted(results.get(timeout=120) for _ in workers)
    finally:
        for w in workers:
            w.join(timeout=30)
            if w.is_alive():
                w.kill()
                w.join()
    assert [w.exitcode for w in workers] == [0, 0]
    assert got == [("hit", 24), ("miss", 24)]
    key = compiled.ArtifactKey.make(hashlib.sha256(data).hexdigest(), SETTINGS)
    artifact = tmp_path / key.module_sha256[:2] / key.filename
    assert compiled.decode(key, artifact.read_bytes())
    assert list(artifact.parent.glob("*.tmp")) == []

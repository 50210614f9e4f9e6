"""Locate built corpus modules. `make plugins` (scripts/build_plugins.py) must have run."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BuiltModule:
    key: str
    sdk: str
    path: Path
    sha256: str
    size: int


def _index_path() -> Path:
    base = Path(os.environ.get("MESHPLUG_CACHE", Path.home() / ".cache" / "meshplug"))
    return base / "plugins" / "index.json"


def all_modules() -> dict[str, BuiltModule]:
    path = _index_path()
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: run `make plugins` first")
    raw = json.loads(path.read_text())
    return {
        key: BuiltModule(
            key=key, sdk=str(v["sdk"]), path=Path(str(v["path"])), sha256=str(v["sha256"]), size=int(v["size"])
        )
        for key, v in raw.items()
    }


def module(key: str) -> BuiltModule:
    modules = all_modules()
    if key not in modules:
        raise KeyError(f"corpus module {key!r} not built; known: {sorted(modules)}; run `make plugins`")
    return modules[key]

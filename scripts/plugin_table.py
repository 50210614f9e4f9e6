#!/usr/bin/env python3
"""Write the corpus table of examples/filters/README.md from the built modules and their specs.

For every built plugin ($MESHPLUG_CACHE/plugins/index.json, written by `make plugins`): SDK, plugin, the
behaviours its spec.yaml lists, module size, the proxy-wasm ABI version marker and the start entry point,
both read from the module's exports with wasmtime. The table goes between the `corpus-table` markers of the
README; the rest of the README is left alone.

Usage: plugin_table.py            print the table
       plugin_table.py --write    update examples/filters/README.md
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import wasmtime
import yaml

REPO = Path(__file__).resolve().parents[1]
FILTERS = REPO / "examples" / "filters"
README = FILTERS / "README.md"
BEGIN, END = "<!-- corpus-table:begin (scripts/plugin_table.py --write) -->", "<!-- corpus-table:end -->"
MARKERS = ("proxy_abi_version_0_1_0", "proxy_abi_version_0_2_0", "proxy_abi_version_0_2_1")


def index() -> dict[str, dict[str, object]]:
    base = Path(os.environ.get("MESHPLUG_CACHE", Path.home() / ".cache" / "meshplug"))
    path = base / "plugins" / "index.json"
    if not path.exists():
        raise SystemExit(f"{path} missing: run `make plugins` first")
    data: dict[str, dict[str, object]] = json.loads(path.read_text())
    return data


def exports(engine: wasmtime.Engine, path: Path) -> list[str]:
    module = wasmtime.Module.from_file(engine, str(path))
    return [e.name for e in module.exports]


def row(engine: wasmtime.Engine, key: str, entry: dict[str, object]) -> str:
    sdk, name = key.split("/", 1)
    names = exports(engine, Path(str(entry["path"])))
    marker = next((m.removeprefix("proxy_abi_version_").replace("_", ".") for m in MARKERS if m in names), "none")
    start = next((e for e in ("_initialize", "_start") if e in names), "start section / none")
    spec_path = FILTERS / sdk / name / "spec.yaml"
    behaviours = "-"
    if spec_path.exists():
        spec = yaml.safe_load(spec_path.read_text()) or {}
        behaviours = ", ".join(spec.get("behaviours") or []) or "-"
        if spec.get("envoy_broken"):
            behaviours += " (Envoy-broken)"
    size = int(str(entry["size"]))
    return f"| {sdk} | [{name}]({sdk}/{name}/) | {behaviours} | {size / 1024:,.0f} KiB | {marker} | {start} |"


def table() -> str:
    engine = wasmtime.Engine()
    lines = [
        "| SDK | plugin | behaviours | module size | ABI marker | entry |",
        "|---|---|---|---:|---|---|",
    ]
    lines += [row(engine, key, entry) for key, entry in sorted(index().items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"update {README.relative_to(REPO)}")
    args = parser.parse_args(argv)
    text = table()
    if not args.write:
        print(text)
        return 0
    readme = README.read_text()
    if BEGIN not in readme or END not in readme:
        print(f"{README}: markers {BEGIN!r} ... {END!r} missing", file=sys.stderr)
        return 1
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    README.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")
    print(f"updated {README.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

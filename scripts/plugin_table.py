#!/usr/bin/env python3
"""Write the corpus table of examples/filters/README.md from the built modules and their specs.

For every plugin of this tree, as `make plugins` built it (tests/corpus/modules.py finds it): SDK, plugin, the
behaviours its spec.yaml lists, module size, the proxy-wasm ABI version marker and the start entry point,
both read from the module's exports with wasmtime. The table goes between the `corpus-table` markers of the
README; the rest of the README is left alone.

Usage: plugin_table.py            print the table
       plugin_table.py --write    update examples/filters/README.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import wasmtime
import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make `tests.corpus` importable
    sys.path.insert(0, str(REPO))

from tests.corpus import modules  # noqa: E402

FILTERS = REPO / "examples" / "filters"
README = FILTERS / "README.md"
BEGIN, END = "<!-- corpus-table:begin (scripts/plugin_table.py --write) -->", "<!-- corpus-table:end -->"
MARKERS = ("proxy_abi_version_0_1_0", "proxy_abi_version_0_2_0", "proxy_abi_version_0_2_1")


def exports(engine: wasmtime.Engine, path: Path) -> list[str]:
    module = wasmtime.Module.from_file(engine, str(path))
    return [e.name for e in module.exports]


def row(engine: wasmtime.Engine, built: modules.BuiltModule) -> str:
    sdk, name = built.key.split("/", 1)
    names = exports(engine, built.path)
    marker = next((m.removeprefix("proxy_abi_version_").replace("_", ".") for m in MARKERS if m in names), "none")
    start = next((e for e in ("_initialize", "_start") if e in names), "start section / none")
    spec_path = FILTERS / sdk / name / "spec.yaml"
    behaviours = "-"
    if spec_path.exists():
        spec = yaml.safe_load(spec_path.read_text()) or {}
        behaviours = ", ".join(spec.get("behaviours") or []) or "-"
        if spec.get("envoy_broken"):
            behaviours += " (Envoy-broken)"
    return f"| {sdk} | [{name}]({sdk}/{name}/) | {behaviours} | {built.size / 1024:,.0f} KiB | {marker} | {start} |"


def table() -> str:
    engine = wasmtime.Engine()
    lines = [
        "| SDK | plugin | behaviours | module size | ABI marker | entry |",
        "|---|---|---|---:|---|---|",
    ]
    try:
        built = modules.all_modules()
    except FileNotFoundError as exc:
        raise SystemExit(str(exc)) from None
    lines += [row(engine, built[key]) for key in sorted(built)]
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

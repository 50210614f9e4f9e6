"""docs/ stays true to the repository: every `docs/...` path cited anywhere exists, every relative link in the
Markdown files resolves (file and heading), every repository path the docs name exists, the ABI coverage table
has one row per host call meshplug provides (with the ABI versions of meshplug/abi_table.py), the README links
docs/, and nothing refers to tracker issue numbers (a reader of the code has no tracker)."""

from __future__ import annotations

import argparse
import re
import subprocess
from functools import cache
from pathlib import Path

import pytest
import yaml

from meshplug import abi_table
from meshplug.commands import operator as operator_cmd

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".json", ".toml", ".txt", ".sh", ".cfg", ".ini", ".tpl", ".lua", ""}
#: `docs/<path>` as cited in code and prose (a trailing dot or comma ends a sentence, not the path)
CITED = re.compile(r"(?<![\w/.-])docs/([\w./-]*[\w/])")
#: a Markdown link's target (not an absolute URL)
LINK = re.compile(r"\]\(([^)\s]+)\)")
ISSUE = re.compile(r"\bissues?[-_ ]?#?\d+|\bissues?/\d+", re.IGNORECASE)


@cache
def repo_files() -> tuple[Path, ...]:
    """The repository's text files: tracked and new (not ignored) ones."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout.decode()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    files = (ROOT / name for name in out.split("\0") if name)
    return tuple(f for f in files if f.suffix in TEXT_SUFFIXES and f.is_file())


def text_of(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return ""


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", text_of(path), re.MULTILINE)}


def test_docs_exist_and_the_index_lists_each() -> None:
    pages = sorted(p.name for p in DOCS.glob("*.md") if p.name != "README.md")
    assert {"architecture.md", "proxy-wasm-abi.md", "testbed.md", "operating.md"} <= set(pages)
    index = text_of(DOCS / "README.md")
    assert [p for p in pages if f"]({p})" not in index] == []


def test_every_cited_docs_path_exists() -> None:
    missing = []
    for path in repo_files():
        for n, line in enumerate(text_of(path).splitlines(), 1):
            for m in CITED.finditer(line):
                target = m.group(1).split("#", 1)[0].rstrip(".")
                if not (DOCS / target).exists():
                    missing.append(f"{path.relative_to(ROOT)}:{n}: docs/{target}")
    assert missing == []


def test_every_relative_markdown_link_resolves() -> None:
    broken = []
    for path in [*DOCS.glob("*.md"), ROOT / "README.md"]:
        for m in LINK.finditer(text_of(path)):
            target = m.group(1)
            if re.match(r"[a-z][a-z+.-]*:", target):  # https:, mailto:, ...
                continue
            file_part, _, anchor = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            if not dest.exists():
                broken.append(f"{path.relative_to(ROOT)}: {target}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{path.relative_to(ROOT)}: {target}: no such heading")
    assert broken == []


def test_repository_paths_named_in_the_docs_exist() -> None:
    named = re.compile(r"`((?:meshplug|tests|scripts|charts|bench|examples|crds|manifests)/[\w./-]+)`")
    missing = [
        f"{page.name}: {m.group(1)}"
        for page in DOCS.glob("*.md")
        for m in named.finditer(text_of(page))
        if not (ROOT / m.group(1).rstrip("/")).exists()
    ]
    assert missing == []


def test_readme_links_the_docs() -> None:
    readme = text_of(ROOT / "README.md")
    assert "](docs/README.md)" in readme
    for page in ("architecture", "proxy-wasm-abi", "testbed", "operating"):
        assert f"](docs/{page}.md)" in readme


def test_no_issue_numbers_anywhere() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()[:100]}"
        for path in repo_files()
        for n, line in enumerate(text_of(path).splitlines(), 1)
        if ISSUE.search(line)
    ]
    assert found == []


def _coverage_rows() -> dict[str, str]:
    """Host call -> its ABI cell, from Appendix A of docs/proxy-wasm-abi.md."""
    text = text_of(DOCS / "proxy-wasm-abi.md")
    table = text.split("## Appendix A", 1)[1]
    rows: dict[str, str] = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 5 or not cells[0].startswith("`"):
            continue
        for name in cells[0].split(","):
            rows[name.strip().strip("`")] = cells[1]
    return rows


ABI_CELLS = {
    "all": abi_table.ALL_VERSIONS,
    "0.1.0": abi_table.V01,
    "0.2.x": abi_table.V02,
    "0.2.1": abi_table.V021,
}


def test_every_test_bed_switch_exists_and_is_off_by_default() -> None:
    """docs/testbed.md's table of what the test bed turns on: each operator flag, agent config key and chart value it
    names exists, and is off (false, empty) by default."""
    section = text_of(DOCS / "testbed.md").split("## Where the test bed differs from a cluster", 1)[1]
    table = [line for line in section.split("\n## ", 1)[0].splitlines() if line.startswith("|")]
    rows = [line.split("|")[1] for line in table[2:]]  # below the header and its separator
    parser = argparse.ArgumentParser()
    operator_cmd.add_arguments(parser)
    defaults = vars(parser.parse_args([]))
    flags = {opt: action.dest for action in parser._actions for opt in action.option_strings}
    agent_config = text_of(ROOT / "meshplug" / "agent" / "config.py")
    values = yaml.safe_load(text_of(ROOT / "charts" / "meshplug" / "values.yaml"))
    assert len(rows) >= 6, rows
    for row in rows:
        flag, agent, chart = (cell.strip().split(" ")[0].strip("`") for cell in row.split(" / "))
        if flag != "-":
            assert flag in flags, flag
            assert not defaults[flags[flag]], (flag, defaults[flags[flag]])
        if agent != "-":
            *parents, leaf = agent.split(".")
            assert all(f'"{key}"' in agent_config for key in (*parents, leaf)), agent
        if chart != "-":
            node: object = values
            for key in chart.split("."):
                assert isinstance(node, dict) and key in node, chart
                node = node[key]
            assert not node, (chart, node)


def test_the_coverage_table_has_every_host_call_and_no_other() -> None:
    rows = _coverage_rows()
    provided = {name: imp for (module, name), imp in abi_table.IMPORTS.items() if module == abi_table.ENV}
    assert sorted(set(provided) - set(rows)) == [], "host calls without a row"
    assert sorted(set(rows) - set(provided)) == [], "rows for calls the host does not provide"
    wrong = []
    for name, imp in provided.items():
        if imp.family == "compat":
            expected = "—"
        else:
            expected = next((cell for cell, versions in ABI_CELLS.items() if versions == imp.versions), "?")
        if rows[name] != expected:
            wrong.append(f"{name}: table says {rows[name]!r}, abi_table {expected!r}")
    assert wrong == []

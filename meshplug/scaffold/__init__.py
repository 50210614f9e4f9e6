"""Plugin projects: `meshplug init` writes one per SDK from the templates beside this module, `meshplug build`
builds it with that SDK's toolchain.

Called by `meshplug.commands.init` and `meshplug.commands.build`; imports nothing from the rest of meshplug but
`errors`. The toolchains are the ones the plugin corpus (examples/filters/<sdk>/build.sh) uses, from the
registries: Rust with Debian's rustc/cargo and its wasm32 std (crates.io, versions pinned in Cargo.lock for
rustc 1.63); Go >= 1.24 with proxy-wasm-go-sdk (Go module proxy); AssemblyScript with @solo-io/proxy-runtime
0.1.8 and assemblyscript 0.14.9 (npm, package-lock.json); C++ with Debian's clang++, lld, wasi-libc and libc++
for wasm32 against a small ABI layer written for the scaffold (no C++ SDK is published in a registry).

Every project has the same plugin (a response header ``x-hello`` from its configuration), a behaviour test
(``plugin_test.py``: the module in `meshplug run` in front of an upstream), ``meshplug.yaml``, a README with the
author's workflow and a starting ``wasmplugin.yaml``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from meshplug import errors

SDKS = ("rust", "go", "assemblyscript", "cpp")
PROJECT_FILE = "meshplug.yaml"
_NAME = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")
BUILD_TIMEOUT_S = 1800


@dataclass(frozen=True)
class Project:
    directory: Path
    name: str
    sdk: str
    root_id: str
    output: Path


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise errors.ConfigError(
            f"plugin name {name!r}: use lower-case letters, digits and '-', starting with a letter (a Kubernetes name)"
        )
    return name


def _templates(sdk: str) -> list[tuple[str, str]]:
    """(relative path without .tmpl, text) of the SDK's templates and the common ones."""
    root = resources.files("meshplug.scaffold") / "templates"
    out: list[tuple[str, str]] = []

    def walk(node: resources.abc.Traversable, prefix: str) -> None:
        for child in sorted(node.iterdir(), key=lambda c: c.name):
            rel = f"{prefix}{child.name}"
            if child.is_dir():
                walk(child, rel + "/")
            elif child.name.endswith(".tmpl"):
                out.append((rel.removesuffix(".tmpl"), child.read_text(encoding="utf-8")))

    walk(root / sdk, "")
    walk(root / "common", "")
    return out


BUILD_SUMMARY = {
    "rust": "cargo build --release --target wasm32-unknown-unknown (Debian's rustc/cargo)",
    "go": "GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared",
    "assemblyscript": "npm ci && asc assembly/index.ts --use abort=abort_proc_exit --optimize",
    "cpp": "clang++ --target=wasm32-wasi -mexec-model=reactor (libc++)",
}


def create(sdk: str, name: str, directory: Path) -> Project:
    """Write a new project for ``sdk`` named ``name`` into ``directory`` (which must not exist or be empty)."""
    if sdk not in SDKS:
        raise errors.ConfigError(f"sdk {sdk!r}: expected one of {', '.join(SDKS)}")
    check_name(name)
    if directory.exists() and any(directory.iterdir()):
        raise errors.ConfigError(f"{directory} exists and is not empty")
    values = {
        "__NAME__": name,
        "__SDK__": sdk,
        "__CRATE__": name.replace("-", "_"),
        "__GOMODULE__": f"example.com/{name}",
        "__BUILD__": BUILD_SUMMARY[sdk],
    }
    for rel, template in _templates(sdk):
        text = template
        for key, value in values.items():
            text = text.replace(key, value)
        target = directory / (".gitignore" if rel == "gitignore" else rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    return load(directory)


def load(directory: Path) -> Project:
    path = directory / PROJECT_FILE
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError:
        raise errors.ConfigError(f"{path} not found: run this in a project made by `meshplug init`") from None
    except yaml.YAMLError as exc:
        raise errors.ConfigError(f"{path}: not YAML: {exc}") from None
    if not isinstance(doc, dict) or doc.get("sdk") not in SDKS:
        raise errors.ConfigError(f"{path}: 'sdk' must be one of {', '.join(SDKS)}")
    name = check_name(str(doc.get("name", "")))
    return Project(
        directory=directory.resolve(),
        name=name,
        sdk=str(doc["sdk"]),
        root_id=str(doc.get("rootId") or name),
        output=(directory / str(doc.get("output") or "plugin.wasm")).resolve(),
    )


def _tool(name: str, *candidates: str, hint: str) -> str:
    for candidate in candidates:
        if os.path.isabs(candidate) and os.access(candidate, os.X_OK):
            return candidate
        found = shutil.which(candidate)
        if found:
            return found
    raise errors.ConfigError(f"{name} not found: {hint}")


def commands(project: Project) -> list[tuple[list[str], dict[str, str]]]:
    """The argv (and extra environment) the SDK's build runs, in order, in the project directory."""
    out = str(project.output)
    if project.sdk == "rust":
        cargo = _tool("Debian's cargo", "/usr/bin/cargo", hint="apt-get install rustc cargo libstd-rust-dev-wasm32")
        env = {
            "RUSTC": "/usr/bin/rustc",
            "RUSTDOC": "/usr/bin/rustdoc",
            # cargo 1.65 reaches crates.io only through its (then unstable) sparse index
            "__CARGO_TEST_CHANNEL_OVERRIDE_DO_NOT_USE_THIS": "nightly",
        }
        target = "wasm32-unknown-unknown"
        return [([cargo, "-Z", "sparse-registry", "build", "--locked", "--release", "--target", target], env)]
    if project.sdk == "go":
        go = _tool("go", "go", "/usr/local/go/bin/go", hint="install Go >= 1.24")
        env = {"GOOS": "wasip1", "GOARCH": "wasm", "CGO_ENABLED": "0", "GOTOOLCHAIN": "local"}
        env["GOFLAGS"] = "-mod=readonly"
        return [([go, "build", "-buildmode=c-shared", "-trimpath", "-o", out, "."], env)]
    if project.sdk == "assemblyscript":
        npm = _tool("npm", "npm", hint="install Node.js >= 16 and npm")
        asc = str(project.directory / "node_modules" / ".bin" / "asc")
        return [
            ([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"], {}),
            ([asc, "assembly/index.ts", "-b", out, "--use", "abort=abort_proc_exit", "--optimize"], {}),
        ]
    packages = "clang lld wasi-libc libc++-dev-wasm32 libclang-rt-dev-wasm32"
    clang = _tool("clang++", "clang++", hint=f"apt-get install {packages}")
    return [
        (
            [
                clang, "--target=wasm32-wasi", "-mexec-model=reactor", "-O2", "-std=c++17", "-fno-exceptions",
                "-Wall", "-Werror", "src/plugin.cc", "src/proxy_wasm.cc", "-Wl,--strip-all", "-o", out,
            ],
            {},
        )
    ]  # fmt: skip


def build(project: Project, *, log: Path | None = None) -> Path:
    """Run the SDK's build; the module's path. `errors.ConfigError` with the tool's last lines on failure."""
    for argv, env in commands(project):
        done = subprocess.run(
            argv,
            cwd=project.directory,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_S,
            check=False,
        )
        if log is not None:
            with log.open("a", encoding="utf-8") as fh:
                fh.write(f"$ {' '.join(argv)}\n{done.stdout}{done.stderr}\n")
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
            raise errors.ConfigError(f"{Path(argv[0]).name} failed (exit {done.returncode}):\n{tail}")
    if project.sdk == "rust":
        target = Path(os.environ.get("CARGO_TARGET_DIR") or project.directory / "target")
        built = target / "wasm32-unknown-unknown" / "release" / f"{project.name.replace('-', '_')}.wasm"
        shutil.copyfile(built, project.output)
    if not project.output.is_file():
        raise errors.ConfigError(f"the build wrote no {project.output}")
    return project.output

"""Native parts of meshplug's agent (see meshplug/native.py): the _wasmcall C extension and the mypyc-compiled
data path. Everything else is in pyproject.toml. MESHPLUG_NATIVE=0 builds a pure-Python package; so does a
machine without a C compiler (the extensions are optional; meshplug.native loads only what was built)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("_meshplug_native", ROOT / "meshplug" / "native.py")
assert _spec is not None and _spec.loader is not None
native = importlib.util.module_from_spec(_spec)
sys.modules["_meshplug_native"] = native
_spec.loader.exec_module(native)


#: the sources as mypyc reads them (below, when setup() is called): the stamp records these, not the sources
#: as they are once the C has compiled minutes later
BUILT_FROM = native.expected()


class BuildNative(build_ext):
    """build_ext, then the stamp meshplug.native.guard() checks before loading the build."""

    def run(self) -> None:
        super().run()
        native.write_stamp(ROOT if self.inplace else Path(self.build_lib), BUILT_FROM)


def extensions() -> list[Extension]:
    if os.environ.get("MESHPLUG_NATIVE") == "0":
        return []
    from mypyc.build import mypycify  # noqa: PLC0415 -- a build requirement only when building native parts

    c_exts = [
        Extension(
            name,
            sources=[f for f in files if f.endswith(".c")],
            depends=[f for f in files if not f.endswith(".c")],
            extra_compile_args=["-O2", "-Wall", "-Wno-missing-field-initializers"],
            libraries=native.LIBRARIES.get(name, []),
        )
        for name, files in native.EXTENSIONS.items()
    ]
    compiled = mypycify([native.source_path(m) for m in native.COMPILED], opt_level="3", group_name=native.GROUP)
    exts = [*c_exts, *compiled]
    for ext in exts:  # no compiler: a pure-Python install (meshplug.native then runs the sources)
        ext.optional = True
    return exts


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildNative})

#!/usr/bin/env python3
"""Build the agent's native parts in place (meshplug/native.py) unless the build on disk matches the sources.

Usage: scripts/build_native.py [--force]. Needs a C compiler, the Python headers and mypy (dev extra).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from meshplug import native  # noqa: E402 -- after the path insert


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--force", action="store_true", help="rebuild even when the stamp matches")
    args = ap.parse_args(argv)
    env = {k: v for k, v in os.environ.items() if k not in ("MESHPLUG_NATIVE", "MESHPLUG_REQUIRE_NATIVE")}
    os.environ.pop("MESHPLUG_NATIVE", None)
    status = native.check()
    if not status.reason and not args.force:
        print("native: up to date")
        return 0
    print(f"native: building ({status.reason or 'forced'})", flush=True)
    subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=ROOT, env=env, check=True)
    status = native.check()
    if status.reason:
        print(f"native: build finished but is unusable: {status.reason}", file=sys.stderr)
        return 1
    print("native: built")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

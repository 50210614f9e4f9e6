"""`make demo` end to end: scripts/demo.py as a subprocess (the same story a person runs) exits 0, prints the
plugin's header in the responses, 0 failed requests across the module update, and leaves no process behind."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.testbed import procs

DEMO = procs.REPO_ROOT / "scripts" / "demo.py"


def test_demo_runs_the_whole_story() -> None:
    out = subprocess.run(
        [sys.executable, str(DEMO)],
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
        cwd=procs.REPO_ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-6000:]
    for n in range(1, 9):
        assert f"[{n}/8] " in text, text
    assert "injected containers: app, meshplug-agent" in text, text
    assert "response header x-meshplug-demo: v1 rust/header_rules" in text, text
    sent = re.search(r"requests sent: (\d+), failed: (\d+); x-meshplug-demo over time: (.*)", text)
    assert sent is not None, text
    assert int(sent.group(1)) > 0 and sent.group(2) == "0", sent.group(0)
    assert sent.group(3) == "v1 rust/header_rules -> v2 go/headers", sent.group(0)
    assert re.search(r"demo OK in \d+\.\d+s", text), text
    assert "still running" not in text, text
    work = re.search(r"work dir (\S+)\)", text)
    assert work is not None
    # every process the demo started is gone: nothing runs with its work directory on the command line
    leftovers = subprocess.run(["pgrep", "-af", work.group(1)], capture_output=True, text=True, check=False).stdout
    assert leftovers.strip() == "", leftovers

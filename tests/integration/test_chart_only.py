"""A real install from the chart alone: scripts/demo.py (what `make demo` runs) as a subprocess, on the test bed's
one-node cluster (tests/testbed/node.py: the chart's operator Deployment and the app's pods really run).

``helm install`` with default values plus the README's one setting for a private CA; a namespace labelled for
injection, a Deployment's pod with the injected agent; a WasmPlugin on the agent plane from an HTTPS origin, Ready,
its effect on a request; the operator restarted and scaled to 2 replicas; an update to a module from the test
registry under traffic with no failed request; the delete. No step writes a Secret, an environment variable or a file
the chart did not: the API server's audit log shows Secrets written only by Helm and the operator's ServiceAccount.
Then the app deleted and ``helm uninstall``: every Secret the operator made is gone with its owner.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.testbed import procs

DEMO = procs.REPO_ROOT / "scripts" / "demo.py"


def test_the_chart_alone_runs_the_agent_plane() -> None:
    out = subprocess.run(
        [sys.executable, str(DEMO)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        cwd=procs.REPO_ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-8000:]
    for n in range(1, 12):
        assert f"[{n}/11] " in text, text
    assert "STATUS: deployed" in text, text
    assert "containers app, meshplug-agent" in text, text
    identity = (
        "meshplug-system/mp-meshplug-identity (ca.crt, ca.key, signing.key; owned by Deployment/mp-meshplug-operator)"
    )
    assert f"Secrets the operator made here: {identity}" in text, text
    agents = r"demo/meshplug-agent \(ca.crt, tls.crt, tls.key, token, trusted-keys.pem; owned by ReplicaSet/echo-\w+\)"
    assert re.search(f"Secrets the operator made for the agents: {agents}", text), text
    assert "response header x-meshplug-demo: v1 rust/header_rules" in text, text
    replicas = re.search(r"replicas: (\S+) \((\w+)\), (\S+) \((\w+)\)", text)
    assert replicas is not None and sorted(replicas.group(2, 4)) == ["leader", "standby"], text
    assert "the operator's CA unchanged; plugin still Ready" in text, text
    sent = re.search(r"requests sent: (\d+), failed: (\d+); x-meshplug-demo over time: (.*)", text)
    assert sent is not None, text
    assert int(sent.group(1)) > 0 and sent.group(2) == "0", sent.group(0)
    assert sent.group(3) == "v1 rust/header_rules -> v2 go/headers", sent.group(0)
    assert "x-meshplug-demo: (none)" in text, text
    writers = re.findall(
        r"^      (helm|the operator|\S+): ", text.split("[10/11]")[1].split("[11/11]")[0], re.MULTILINE
    )
    assert sorted(writers) == ["helm", "the operator"], text
    assert re.search(f"gone with its ReplicaSet: {agents}", text), text
    assert f"gone with the operator's Deployment: {identity}" in text, text
    assert "Secrets the operator made, left in the cluster: none" in text, text
    assert re.search(r"demo OK in \d+\.\d+s", text), text
    work = re.search(r"work dir (\S+)\)", text)
    assert work is not None
    assert leftovers(work.group(1)) == []


def leftovers(work: str) -> list[str]:
    """Processes still writing into the run's directory: every process the demo started (control plane, node
    agent, pods' containers and their network holders, forwards) has its output under it."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        for fd in ("1", "2"):
            try:
                target = os.readlink(proc / "fd" / fd)
            except OSError:
                continue
            if target.startswith(work):
                argv = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                found.append(f"{proc.name}: {argv[:200]}")
                break
    return found

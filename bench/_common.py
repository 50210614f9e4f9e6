"""Helpers the benchmarks share."""

from __future__ import annotations

from pathlib import Path


def cpu_ns(pid: int) -> int:
    """CPU time (ns) process `pid` has used so far: the sum over its threads' /proc schedstat run times."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total

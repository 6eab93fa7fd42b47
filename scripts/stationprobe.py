"""What the scripts that drive a whole station (bench-line.py, soak.py) ask of it: its
Prometheus metrics, a process's CPU time and resident memory, and a wait with a deadline.
Only the standard library."""

from __future__ import annotations

import os
import time
import urllib.request
from pathlib import Path


def metrics(base: str, token: str) -> dict[str, float]:
    """The station's /metrics, each family summed over its labels."""
    request = urllib.request.Request(base + "/metrics", headers={"Authorization": f"Bearer {token}"})
    values: dict[str, float] = {}
    with urllib.request.urlopen(request, timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("#") or not line.strip():
                continue
            name, _, value = line.rpartition(" ")
            key = name.split("{")[0]
            try:
                values[key] = values.get(key, 0.0) + float(value)
            except ValueError:
                pass
    return values


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process so far; None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float | None:
    """Resident memory of a process in MiB; None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def wait_for(condition, seconds: float, what: str) -> None:
    """Polls `condition` every 0.2 s (an OSError counts as not yet) until it holds; raises
    RuntimeError naming `what` after `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"timed out after {seconds:g} s waiting for {what}")

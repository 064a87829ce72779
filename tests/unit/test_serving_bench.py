"""The serving benchmark's pure parts: the binary / JSON line with its bound, and a server's CPU with its workers."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from benchmarks.figures import cpu_seconds, tree_cpu_seconds
from benchmarks.serving import binary_over_json


def point(server: str, mode: str, rps: float, server_cpu_ms: float) -> dict:
    return {"server": server, "mode": mode, "rows": 64, "clients": 16, "rps": rps, "server_cpu_ms": server_cpu_ms}


def test_binary_over_json_bounds_the_ratio_by_the_pass_alone() -> None:
    results = [
        point("cnn modelfleet fp32", "json", 100.0, 10.0),
        point("cnn modelfleet fp32", "binary", 150.0, 6.6),
        point("cnn kserve fp32", "json", 25.0, 40.0),
        point("cnn kserve fp32", "binary", 30.0, 33.0),
    ]
    line = binary_over_json("cnn modelfleet fp32", results, (5.0, 200.0))
    assert "binary / JSON req/s = 1.50" in line and "binary 6.60 ms, JSON 10.00 ms" in line
    assert line.endswith("the pass alone 5.00 ms: at most 2.00 with nothing else")
    assert binary_over_json("cnn kserve fp32", results, None).endswith("binary 33.00 ms, JSON 40.00 ms")


def test_a_servers_cpu_counts_its_worker_processes() -> None:
    spin = "import time\nend = time.process_time() + 0.6\nwhile time.process_time() < end: pass\ntime.sleep(30)"
    parent = subprocess.Popen(
        [sys.executable, "-c", f"import subprocess, sys; subprocess.run([sys.executable, '-c', {spin!r}])"]
    )
    try:
        deadline = time.monotonic() + 20
        while tree_cpu_seconds(parent.pid) - cpu_seconds(parent.pid) < 0.5 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert tree_cpu_seconds(parent.pid) - cpu_seconds(parent.pid) >= 0.5
    finally:
        subprocess.run(["pkill", "-P", str(parent.pid)], check=False)
        parent.kill()
        parent.wait()
    assert tree_cpu_seconds(os.getpid()) >= cpu_seconds(os.getpid())

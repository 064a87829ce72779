"""All benchmarks in one command: python -m benchmarks [--quick]."""

from __future__ import annotations

import subprocess
import sys

BENCHMARKS = (
    "benchmarks.autoscaling",
    "benchmarks.placement",
    "benchmarks.serving",
    "benchmarks.gateway",
    "benchmarks.sharding",
    "benchmarks.compression",
    "benchmarks.scale",
)

if __name__ == "__main__":
    failed = [m for m in BENCHMARKS if subprocess.run([sys.executable, "-m", m, *sys.argv[1:]]).returncode]
    sys.exit(f"failed: {', '.join(failed)}" if failed else 0)

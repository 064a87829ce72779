"""The operator as a real process against the test cluster."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


class OperatorProcess:
    def __init__(self, kubeconfig: Path, log_path: Path) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it open
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "modelfleet.cli", "operator", "--log-level", "info"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        time.sleep(1.0)
        if self.proc.poll() is not None:
            raise RuntimeError(f"operator exited at once:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: no cleanup, as when a node dies under the operator."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

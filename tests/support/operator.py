"""The operator as a real process against the test cluster."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path


class OperatorProcess:
    """`modelfleet operator` as `identity` in the Lease (default: `<hostname>-<pid>`), with `args` added.

    Like a pod's container it is started again when it exits by itself (the operator exits when it cannot renew
    its Lease, e.g. while kube-apiserver restarts); `kill` and `stop` end it for good.
    """

    def __init__(self, kubeconfig: Path, log_path: Path, identity: str | None = None, args: Sequence[str] = ()) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.identity = identity
        self.args = list(args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.wanted = False
        self.restarts = 0
        self.mutex = threading.Lock()

    def start(self) -> None:
        with self.mutex:
            self.wanted = True
            proc = self._spawn()
        time.sleep(1.0)
        if proc.poll() is not None:
            self.wanted = False
            raise RuntimeError(f"operator exited at once:\n{self.log_tail()}")
        threading.Thread(target=self._supervise, args=(proc,), daemon=True).start()

    def _spawn(self) -> subprocess.Popen[bytes]:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it open
        identity = ["--identity", self.identity] if self.identity else []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "modelfleet.cli", "operator", "--log-level", "info", *identity, *self.args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self.proc

    def _supervise(self, proc: subprocess.Popen[bytes]) -> None:
        while True:
            code = proc.wait()
            time.sleep(1.0)
            with self.mutex:
                if not self.wanted or self.proc is not proc:
                    return
                with open(self.log_path, "ab") as log:
                    log.write(f"[tests] the operator exited with code {code}: starting it again\n".encode())
                self.restarts += 1
                proc = self._spawn()

    def kill(self) -> None:
        """SIGKILL: no cleanup, as when a node dies under the operator."""
        with self.mutex:
            self.wanted = False
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        with self.mutex:
            self.wanted = False
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

"""Real runtime processes for tests: the model server and training workers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def env_with(values: dict[str, str]) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", **values}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServerProcess:
    """`python -m modelfleet.runtime.serve` bound to `host:port` (and gRPC to a free port), with the given env."""

    def __init__(self, env: dict[str, str], host: str, port: int, log: Path) -> None:
        self.url = f"http://{host}:{port}"
        grpc_port = free_port(host)
        self.grpc_address = f"{host}:{grpc_port}"
        self.log = log
        self.ready = False
        server_env = env_with(
            {**env, "MODELFLEET_HOST": host, "MODELFLEET_PORT": str(port), "MODELFLEET_GRPC_PORT": str(grpc_port)}
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "modelfleet.runtime.serve"],
            env=server_env,
            stdout=open(log, "ab"),  # noqa: SIM115 - the child keeps it open
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"server not ready after {timeout}s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()

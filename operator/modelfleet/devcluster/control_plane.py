"""A real Kubernetes control plane on loopback, with KWOK simulating GPU nodes and pods.

etcd, kube-apiserver (RBAC on, service-account tokens), kube-controller-manager, kube-scheduler and kwok run as
local processes from binaries that operator/modelfleet/devcluster/build-binaries.sh builds from their Go modules. Everything binds
to 127.0.0.1 and kwok hands out pod IPs from a loopback range, so no test traffic leaves the machine. The pod runner
(modelfleet.devcluster.runner) runs the pods of the run-pods nodes as real local processes, from `workdir`.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from modelfleet.devcluster.nodes import default_inventory, fake_nodes, run_pods_inventory

BUILD_SCRIPT = Path(__file__).with_name("build-binaries.sh")
STAGES = Path(__file__).with_name("stages.yaml")
POD_CIDR = "127.100.0.0/16"
SERVICE_CIDR = "10.96.0.0/16"
RUNNER = "pod-runner"
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", RUNNER)


class ClusterError(RuntimeError):
    pass


def free_port() -> int:
    """A free port below the kernel's ephemeral range: a component restarted on it cannot find it taken as the
    local port of some client's connection (nor a client connect to itself there while the server is down)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for _ in range(200):
        port = random.randrange(min(20000, low // 2), low)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise ClusterError(f"no free port below {low}")


def binaries_dir() -> Path:
    """Builds the control-plane binaries once (cached per version) and returns their directory."""
    if env_dir := os.environ.get("MODELFLEET_BIN_DIR"):
        return Path(env_dir)
    out = subprocess.run(["bash", str(BUILD_SCRIPT)], check=True, stdout=subprocess.PIPE, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certificates(pki: Path) -> None:
    """A CA, the apiserver's serving certificate, an admin client certificate and the service-account key pair."""
    pki.mkdir(parents=True, exist_ok=True)
    if (pki / "admin.crt").exists():
        return
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
            "-days", "3650", "-subj", "/CN=modelfleet-dev-ca", cwd=pki)  # fmt: skip
    sans = "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default.svc,IP:10.96.0.1"
    (pki / "server.ext").write_text(sans + "\nextendedKeyUsage=serverAuth\n")
    (pki / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name, subject, ext in (
        ("apiserver", "/CN=kube-apiserver", "server.ext"),
        ("admin", "/CN=modelfleet-admin/O=system:masters", "client.ext"),
    ):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", subject, cwd=pki)  # fmt: skip
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.crt", "-days", "3650", "-extfile", ext, cwd=pki)  # fmt: skip
    openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
    openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)


def kubeconfig(server: str, pki: Path) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "modelfleet-dev", "cluster": {
            "server": server, "certificate-authority": str(pki / "ca.crt")}}],
        "users": [{"name": "admin", "user": {
            "client-certificate": str(pki / "admin.crt"), "client-key": str(pki / "admin.key")}}],
        "contexts": [{"name": "modelfleet-dev", "context": {"cluster": "modelfleet-dev", "user": "admin"}}],
        "current-context": "modelfleet-dev",
    }  # fmt: skip


@dataclass
class DevCluster:
    """One local cluster whose state (certificates, etcd data, logs, pids, kubeconfig) lives in `workdir`."""

    workdir: Path
    apiserver_port: int = 0
    bin_dir: Path | None = None
    nodes: list[dict] | None = None
    """Node manifests to create; default: the fake GPU inventory of modelfleet.devcluster.nodes and its run-pods
    nodes."""
    processes: dict[str, int] = field(default_factory=dict)
    argv: dict[str, list[str]] = field(default_factory=dict)
    """Each component's arguments as started, so that restart() starts it again the same way."""

    @property
    def kubeconfig_path(self) -> Path:
        return self.workdir / "kubeconfig"

    @property
    def pki(self) -> Path:
        return self.workdir / "pki"

    @property
    def pids_path(self) -> Path:
        return self.workdir / "pids.json"

    @property
    def argv_path(self) -> Path:
        return self.workdir / "argv.json"

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        bin_dir = self.bin_dir or binaries_dir()
        result = subprocess.run(
            [str(bin_dir / "kubectl"), "--kubeconfig", str(self.kubeconfig_path), *args],
            input=stdin, capture_output=True, text=True,
        )  # fmt: skip
        if check and result.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def running(self) -> bool:
        if not self.pids_path.exists():
            return False
        pids = json.loads(self.pids_path.read_text())
        return all(name in pids and _alive(pids[name]) for name in COMPONENTS)

    def up(self, timeout: float = 120) -> DevCluster:
        """Starts every component (if not already running) and creates the fake GPU nodes; on failure stops
        whatever it started."""
        if self.running():
            return self
        self.down()
        try:
            return self._start_all(timeout)
        except BaseException:
            self.down()
            raise

    def _start_all(self, timeout: float) -> DevCluster:
        self.bin_dir = self.bin_dir or binaries_dir()
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "logs").mkdir(exist_ok=True)
        make_certificates(self.pki)
        port = self.apiserver_port or free_port()
        etcd_port, etcd_peer = free_port(), free_port()
        self.kubeconfig_path.write_text(yaml.safe_dump(kubeconfig(f"https://127.0.0.1:{port}", self.pki)))
        kc = str(self.kubeconfig_path)
        pki = self.pki
        self._start("etcd", [
            "--name", "modelfleet-dev", "--data-dir", str(self.workdir / "etcd"),
            "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
            "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
            "--listen-peer-urls", f"http://127.0.0.1:{etcd_peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{etcd_peer}",
            "--initial-cluster", f"modelfleet-dev=http://127.0.0.1:{etcd_peer}",
            "--unsafe-no-fsync", "--quota-backend-bytes", str(4 * 1024**3),
        ])  # fmt: skip
        self._start("kube-apiserver", [
            "--etcd-servers", f"http://127.0.0.1:{etcd_port}",
            "--bind-address", "127.0.0.1", "--secure-port", str(port),
            "--tls-cert-file", str(pki / "apiserver.crt"), "--tls-private-key-file", str(pki / "apiserver.key"),
            "--client-ca-file", str(pki / "ca.crt"),
            "--service-account-key-file", str(pki / "sa.pub"),
            "--service-account-signing-key-file", str(pki / "sa.key"),
            "--service-account-issuer", "https://kubernetes.default.svc",
            "--service-cluster-ip-range", SERVICE_CIDR,
            "--authorization-mode", "Node,RBAC",
            "--endpoint-reconciler-type", "none",
            "--max-requests-inflight", "0", "--max-mutating-requests-inflight", "0",
            "--enable-priority-and-fairness=false",
        ])  # fmt: skip
        self._wait(self._apiserver_ready, timeout, "kube-apiserver")
        self._start("kube-controller-manager", [
            "--kubeconfig", kc, "--authentication-kubeconfig", kc, "--authorization-kubeconfig", kc,
            "--bind-address", "127.0.0.1", "--secure-port", str(free_port()),
            "--root-ca-file", str(pki / "ca.crt"),
            "--service-account-private-key-file", str(pki / "sa.key"),
            "--use-service-account-credentials", "--leader-elect=false",
            # no endpoints: they would hold kwok's loopback pod IPs, which the API refuses (no test uses them)
            "--controllers", "*,-node-ipam-controller,-cloud-node-lifecycle-controller,-service-lb-controller,"
            "-node-route-controller,-endpoints-controller,-endpointslice-controller,"
            "-endpointslice-mirroring-controller",
            "--kube-api-qps", "500", "--kube-api-burst", "1000",
        ])  # fmt: skip
        self._start("kube-scheduler", [
            "--kubeconfig", kc, "--authentication-kubeconfig", kc, "--authorization-kubeconfig", kc,
            "--bind-address", "127.0.0.1", "--secure-port", str(free_port()), "--leader-elect=false",
            "--kube-api-qps", "500", "--kube-api-burst", "1000",
        ])  # fmt: skip
        self._start("kwok", [
            "--kubeconfig", kc, "--config", str(STAGES),
            "--manage-nodes-with-annotation-selector", "kwok.x-k8s.io/node=fake",
            "--cidr", POD_CIDR, "--node-ip", "127.0.0.1",
            "--server-address", f"127.0.0.1:{free_port()}",
        ])  # fmt: skip
        self._start(RUNNER, ["--kubeconfig", kc, "--state-dir", str(self.workdir)])
        self.pids_path.write_text(json.dumps(self.processes))
        self.create_nodes()
        self._wait(lambda: "default" in self.kubectl("get", "serviceaccounts", "-o", "name", check=False),
                   timeout, "the default ServiceAccount")  # fmt: skip
        self._wait(self._nodes_ready, timeout, "nodes Ready")
        return self

    def create_nodes(self) -> None:
        manifests = self.nodes if self.nodes is not None else fake_nodes(default_inventory() + run_pods_inventory())
        self.kubectl("apply", "--server-side", "-f", "-", stdin=yaml.safe_dump_all(manifests))

    def _nodes_ready(self) -> bool:
        out = self.kubectl("get", "nodes", "-o", "json", check=False)
        if not out:
            return False
        items = json.loads(out)["items"]
        return bool(items) and all(
            any(c["type"] == "Ready" and c["status"] == "True" for c in node.get("status", {}).get("conditions", []))
            for node in items
        )

    def down(self) -> None:
        """Stops every component; the workdir stays (remove it to start from nothing)."""
        pids: dict[str, int] = {}
        if self.pids_path.exists():
            pids = json.loads(self.pids_path.read_text())
        pids.update(self.processes)
        operator_pid = self.workdir / "operator.pid"
        if operator_pid.exists():
            _terminate(int(operator_pid.read_text()))
            operator_pid.unlink()
        for name in reversed(COMPONENTS):
            if pid := pids.get(name):
                _terminate(pid)
        self.processes = {}
        self.argv = {}
        self.pids_path.unlink(missing_ok=True)
        self.argv_path.unlink(missing_ok=True)
        for data in ("etcd", "pods", "pvc"):  # the cluster's objects go, and with them the runner's pods and claims
            if (self.workdir / data).exists():
                subprocess.run(["rm", "-rf", str(self.workdir / data)], check=False)

    def restart(self, component: str, down_for: float = 0, kill: bool = False, timeout: float = 120) -> None:
        """Stops one component (SIGTERM, or SIGKILL with `kill`), leaves it down for `down_for` seconds, then
        starts it again with the same arguments (etcd keeps its data, the apiserver its port) and waits until it
        is healthy, and for etcd and the apiserver until the apiserver is ready again."""
        self.stop_component(component, kill=kill)
        time.sleep(down_for)
        self.start_component(component, timeout)

    def stop_component(self, component: str, kill: bool = False) -> None:
        """Stops one component and waits until it has exited; it stays down until start_component()."""
        self._load_state()
        pid = self.processes.pop(component)
        if kill:
            _signal(pid, signal.SIGKILL)
            _wait_exit(pid, 10)
        else:
            _terminate(pid)
        self.pids_path.write_text(json.dumps(self.processes))

    def start_component(self, component: str, timeout: float = 120) -> None:
        """Starts a stopped component with its original arguments and waits until it is healthy."""
        self._load_state()
        if component in self.processes:
            raise ClusterError(f"{component} is running (pid {self.processes[component]})")
        self.bin_dir = self.bin_dir or binaries_dir()
        self._start(component, self.argv[component])
        self._wait(lambda: self._healthy(component), timeout, f"{component} healthy")
        if component in ("etcd", "kube-apiserver"):
            self._wait(self._apiserver_ready, timeout, "kube-apiserver ready")

    def revive(self) -> list[str]:
        """Starts again every component that exited on its own, as a kubelet restarts a crashed static pod
        (kube-scheduler, for one, exits when it finds its cache inconsistent, which an apiserver restart can
        cause); a component stopped with stop_component() stays down. Returns the names started."""
        self._load_state()
        exited = [name for name, pid in self.processes.items() if not _alive(pid)]
        for name in exited:
            _wait_exit(self.processes.pop(name), 10)  # reaped, when it is our child
            self.start_component(name)
        return exited

    def pause(self, component: str) -> None:
        """SIGSTOP: the component stays in memory, its connections open, and answers nothing until resume()."""
        self._load_state()
        _signal(self.processes[component], signal.SIGSTOP)

    def resume(self, component: str) -> None:
        self._load_state()
        _signal(self.processes[component], signal.SIGCONT)

    def _load_state(self) -> None:
        """Pids and arguments from the workdir, for a DevCluster object made after another one ran up()."""
        if not self.processes and self.pids_path.exists():
            self.processes = json.loads(self.pids_path.read_text())
        if not self.argv and self.argv_path.exists():
            self.argv = json.loads(self.argv_path.read_text())

    def _apiserver_ready(self) -> bool:
        return self.kubectl("get", "--raw", "/readyz", check=False) == "ok"

    def _healthy(self, component: str) -> bool:
        if component == "kube-apiserver":
            return self._apiserver_ready()
        if component == RUNNER:
            return _alive(self.processes[RUNNER])
        args = self.argv[component]
        if component == "etcd":
            url = args[args.index("--listen-client-urls") + 1] + "/health"
        elif component == "kwok":
            url = f"http://{args[args.index('--server-address') + 1]}/healthz"
        else:
            url = f"https://127.0.0.1:{args[args.index('--secure-port') + 1]}/healthz"
        insecure = ssl.create_default_context()
        insecure.check_hostname, insecure.verify_mode = False, ssl.CERT_NONE
        try:
            with urllib.request.urlopen(url, timeout=2, context=insecure) as response:
                return response.status == 200
        except OSError:
            return False

    def _start(self, name: str, args: list[str]) -> None:
        assert self.bin_dir is not None
        log = open(self.workdir / "logs" / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps it open
        command = (
            [sys.executable, "-m", "modelfleet.devcluster.runner"] if name == RUNNER else [str(self.bin_dir / name)]
        )
        proc = subprocess.Popen([*command, *args], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.processes[name] = proc.pid
        self.argv[name] = args
        self.pids_path.write_text(json.dumps(self.processes))
        self.argv_path.write_text(json.dumps(self.argv))

    def _wait(self, ready: object, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():  # type: ignore[operator]
                return
            for name, pid in self.processes.items():
                if not _alive(pid):
                    tail = (self.workdir / "logs" / f"{name}.log").read_text(errors="replace")[-3000:]
                    raise ClusterError(f"{name} exited while waiting for {what}:\n{tail}")
            time.sleep(0.5)
        raise ClusterError(f"timed out after {timeout}s waiting for {what}; logs in {self.workdir / 'logs'}")


def _alive(pid: int) -> bool:
    """Whether any thread of the process still runs: a multi-threaded process whose main thread has exited shows
    as a zombie while its other threads still hold its sockets (a restart on its port would then fail)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:
            zombie = stat.read().split()[2] == "Z"
        return not zombie or len(os.listdir(f"/proc/{pid}/task")) > 1
    except OSError:
        return True


def _signal(pid: int, sig: int) -> bool:
    """Signals the process group `pid` leads, or the process alone when it leads none; False when it is gone."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return False
    return True


def _wait_exit(pid: int, timeout: float) -> bool:
    """Waits until `pid` has exited, every thread of it (reaping it when it is our child: the kernel reports a
    child's exit only when its whole thread group is gone); False when it still runs after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:  # not our child, or reaped already
            if not _alive(pid):
                return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def _terminate(pid: int, grace: float = 10) -> None:
    if not _signal(pid, signal.SIGTERM):
        return
    _signal(pid, signal.SIGCONT)  # a paused process acts on SIGTERM only once it runs
    if not _wait_exit(pid, grace):
        _signal(pid, signal.SIGKILL)
        _wait_exit(pid, grace)

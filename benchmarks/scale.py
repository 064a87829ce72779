"""Operator at scale on the real control plane with KWOK nodes: modelfleet vs Kubeflow's training operator (jobs)
and KServe's controller (services).

    python -m benchmarks.scale [--quick | --large] [--jobs N] [--nodes N] [--part jobs|services|all]
                               [--systems modelfleet,peer,peer-tuned,kserve] [--repeats N]

N fake GPU nodes in 3 regions; M TrainingJobs of 1-6 one-GPU workers (seeded) submitted as fast as the API takes
them; the same mix as PyTorchJobs (a Master and n-1 Workers) for the peer, as shipped and tuned (more reconcile
threads, a higher client rate), each system on a fresh cluster of the same shape. Measured: submit -> every worker
pod Running (p50, p99, total); the API requests the operator made, by verb, from the apiserver's audit log of the
operator's user (the same count for both); the requests it made in the 30 s after all were Running (nothing changes);
watch events handled where the operator counts them; its peak RSS and CPU seconds, and each control-plane process's
CPU seconds from submission until all are Running (the operator's work lands there too: API requests, watch events,
the pods KWOK plays). `--repeats N` runs the systems in turns N times and prints each figure's median and spread.
`--part services`: 2,000 InferenceServices (300 with --quick) until all are Ready, modelfleet's and KServe's
(RawDeployment mode, benchmarks/scale_kserve.py). Each system's figures are kept in
benchmarks/results/scale-<jobs>.json, so systems can be measured one per run (one e2e-lock hold each) and the tables
compare whatever that file holds.
"""

from __future__ import annotations

import argparse
import base64
import functools
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml
from kubernetes import client, config
from kubernetes.watch.watch import iter_resp_lines
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from benchmarks import scale_kserve, scale_timeline
from benchmarks.figures import cpu_seconds, median_and_spread, with_spread
from benchmarks.scale_cluster import READS, WRITES, ScaleCluster
from modelfleet.api.common import GPU_RESOURCE
from modelfleet.contract import JOB_NAME_LABEL
from modelfleet.devcluster import binaries_dir
from modelfleet.devcluster.nodes import NodeGroup, fake_nodes

ROOT = Path(__file__).resolve().parents[1]
REGIONS = ("cn-hangzhou", "cn-beijing", "us-west-1")
SYSTEMS = ("modelfleet", "peer", "peer-tuned")
SERVICE_SYSTEMS = ("modelfleet", "kserve")
MODELFLEET_OPERATOR = (sys.executable, "-m", "modelfleet.cli", "operator", "--log-level", "warning", "--no-leader-elect")  # fmt: skip
"""One replica without a Lease, as the peers run by default. (With one, on two loaded cores at 5,000 jobs the apiserver
answered no renewal for 10 s, twice, and the fenced operator exited, as it must; no kubelet restarts it here.)"""
PEER_VERSIONS = {"peer": "v1.8.1", "peer-tuned": "v1.9.2"}
"""v1.8.1 as shipped; its client is held to 20 requests/s, burst 30 (controller-runtime's defaults) with no flag to
raise them, so the tuned peer is v1.9.2, the first release with --kube-api-qps/--kube-api-burst. (v1.9.2 as shipped
is slower than v1.8.1: its one rate limiter is shared by every client, events included.)"""
PEER_TUNED_FLAGS = ("--controller-threads=16", "--kube-api-qps=500", "--kube-api-burst=1000")
"""The training operator's own throughput flags (defaults: 1 thread, 20 requests/s, burst 30), raised to the
reconcile threads and client rate the cluster's controller-manager and scheduler get here."""
IDLE_SECONDS = 30


@dataclass(frozen=True)
class Size:
    jobs: int
    nodes: int
    gpus_per_node: int = 8

    @property
    def node_count(self) -> int:
        return max(self.nodes // 12, 1) * 12


def inventory(size: Size) -> list[dict[str, Any]]:
    per_group = size.node_count // 12
    groups = [NodeGroup(r, f"{r}{z}", gpu, per_group) for r in REGIONS for z in "ab" for gpu in ("H100", "A100")]
    nodes = fake_nodes(groups)
    for node in nodes:
        for amounts in (node["status"]["capacity"], node["status"]["allocatable"]):
            amounts[GPU_RESOURCE] = str(size.gpus_per_node)
    return nodes


def job_mix(count: int, seed: int) -> list[tuple[str, int, str]]:
    rng = random.Random(seed)
    return [(f"job-{i}", rng.randint(1, 6), rng.choice(REGIONS)) for i in range(count)]


# What the peer's install brings besides its CRDs: its namespace, the Secret its certificate rotator fills, and
# the webhook configuration it injects the CA into. The API server cannot reach the webhook here (no endpoints on
# this control plane), so the configuration says Ignore: PyTorchJobs go in unvalidated, which only helps the peer.
PEER_SETUP: list[dict[str, Any]] = [
    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kubeflow"}},
    {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "training-operator-webhook-cert", "namespace": "kubeflow"}},
    {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": "validator.training-operator.kubeflow.org"},
        "webhooks": [{
            "name": "validator.pytorchjob.training-operator.kubeflow.org", "admissionReviewVersions": ["v1"],
            "clientConfig": {"service": {"name": "training-operator", "namespace": "kubeflow", "path": "/validate-kubeflow-org-v1-pytorchjob"}},
            "failurePolicy": "Ignore", "sideEffects": "None", "timeoutSeconds": 2,
            "rules": [{"apiGroups": ["kubeflow.org"], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"], "resources": ["pytorchjobs"]}],
        }],
    },
]  # fmt: skip


def training_job(name: str, workers: int, region: str) -> dict[str, Any]:
    return {
        "apiVersion": "modelfleet.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name},
        "spec": {"workers": {"replicas": workers}, "resources": {"gpus": 1}, "placement": {"regions": [region]}},
    }  # fmt: skip


def pytorch_job(name: str, workers: int, region: str) -> dict[str, Any]:
    def replica(count: int) -> dict[str, Any]:
        return {
            "replicas": count, "restartPolicy": "OnFailure",
            "template": {"spec": {
                "nodeSelector": {"topology.kubernetes.io/region": region},
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                "containers": [{"name": "pytorch", "image": "example.com/train:1",
                                "resources": {"limits": {"nvidia.com/gpu": "1"}}}],
            }},
        }  # fmt: skip

    specs = {"Master": replica(1)}
    if workers > 1:
        specs["Worker"] = replica(workers - 1)
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": name},
        "spec": {"pytorchReplicaSpecs": specs},
    }


class ProcessSampler(threading.Thread):
    """Peak RSS and CPU seconds of a process, read from /proc."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak_rss_mb, self.cpu_seconds, self.stopped = pid, 0.0, 0.0, threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                status = Path(f"/proc/{self.pid}/status").read_text()
                rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
                self.peak_rss_mb = max(self.peak_rss_mb, rss / 1024)
                self.cpu_seconds = cpu_seconds(self.pid)
            except (OSError, StopIteration):
                return
            time.sleep(0.5)


def cluster_cpu(cluster: ScaleCluster) -> dict[str, float]:
    """CPU seconds each control-plane process has used so far."""
    return {name: cpu_seconds(pid) for name, pid in cluster.processes.items()}


class RunningPods(threading.Thread):
    """When each job first had all its workers Running (not terminating), from a watch on the namespace's pods:
    LISTing 17,500 pods every half second would cost the 2 cores more than the operators under test."""

    def __init__(self, api_client: client.ApiClient, namespace: str, label: str, workers: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.core, self.namespace, self.label, self.workers = client.CoreV1Api(api_client), namespace, label, workers
        self.running: dict[str, set[str]] = {name: set() for name in workers}
        self.done: dict[str, float] = {}
        self.stopped = threading.Event()

    def run(self) -> None:
        version = ""
        while not self.stopped.is_set():
            try:
                version = version or self.relist()
                response = self.core.list_namespaced_pod(
                    self.namespace, label_selector=self.label, watch=True, resource_version=version,
                    allow_watch_bookmarks=True, timeout_seconds=60, _preload_content=False,
                )  # fmt: skip
                for line in iter_resp_lines(response):
                    event = json.loads(line)
                    if event["type"] == "ERROR":  # 410 Gone: the version is too old to watch from
                        version = ""
                        break
                    version = event["object"]["metadata"]["resourceVersion"]
                    if event["type"] != "BOOKMARK":
                        self.record(event["object"], deleted=event["type"] == "DELETED")
            except Exception:  # an apiserver under load drops a watch now and then: relist
                version = ""
                time.sleep(1)

    def relist(self) -> str:
        response = self.core.list_namespaced_pod(self.namespace, label_selector=self.label, _preload_content=False)
        body = json.loads(response.data)
        for pod in body["items"]:
            self.record(pod, deleted=False)
        return body["metadata"]["resourceVersion"]

    def record(self, pod: dict[str, Any], deleted: bool) -> None:
        job = (pod["metadata"].get("labels") or {}).get(self.label)
        if job not in self.running:
            return
        name = pod["metadata"]["name"]
        running = (pod.get("status") or {}).get("phase") == "Running" and not pod["metadata"].get("deletionTimestamp")
        if running and not deleted:
            self.running[job].add(name)
        else:
            self.running[job].discard(name)
        if job not in self.done and len(self.running[job]) >= self.workers[job]:
            self.done[job] = time.monotonic()

    def wait(self, timeout: float, stall: float = 180) -> None:
        """Until every job is Running, `timeout` passes, or no job has reached Running for `stall` seconds."""
        deadline = time.monotonic() + timeout
        progress, last = 0, time.monotonic()
        while len(self.done) < len(self.workers) and time.monotonic() < min(deadline, last + stall):
            if len(self.done) > progress:
                progress, last = len(self.done), time.monotonic()
            time.sleep(0.5)
        self.stopped.set()


def run_jobs(system: str, size: Size, mix: list[tuple[str, int, str]], profile: Path | None = None) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix=f"modelfleet-scale-{system}-"))
    cluster = ScaleCluster(work, bin_dir=binaries_dir(), nodes=inventory(size)).up(timeout=900)
    try:
        return measure(system, cluster, work, mix, profile)
    finally:
        cluster.down()


def operator_command(system: str, cluster: ScaleCluster, env: dict[str, str]) -> tuple[list[str], str, str, Any]:
    """The operator's command line (after installing what it needs), and its resource's plural, label, maker."""
    if system == "modelfleet":
        cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
        env["MODELFLEET_METRICS_PORT"] = str(free_port())
        cmd = list(MODELFLEET_OPERATOR)
        return cmd, "trainingjobs", JOB_NAME_LABEL, training_job
    binary, crd = build_peer(PEER_VERSIONS[system])
    cluster.kubectl("apply", "--server-side", "-f", crd)
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(PEER_SETUP))
    env["KUBEFLOW_NAMESPACE"] = "kubeflow"
    env["PEER_METRICS_PORT"] = str(free_port())
    cmd = [binary, "--namespace=bench", "--enable-scheme=pytorchjob",
           f"--metrics-bind-address=127.0.0.1:{env['PEER_METRICS_PORT']}",
           "--health-probe-bind-address=127.0.0.1:0"]  # fmt: skip
    if system == "peer-tuned":
        cmd.extend(PEER_TUNED_FLAGS)
    return cmd, "pytorchjobs", "training.kubeflow.org/job-name", pytorch_job


def measure(
    system: str, cluster: ScaleCluster, work: Path, mix: list[tuple[str, int, str]], profile: Path | None = None
) -> dict[str, Any]:
    env = {**os.environ, "KUBECONFIG": str(cluster.operator_kubeconfig())}
    cmd, plural, label, make = operator_command(system, cluster, env)
    group, version = ("modelfleet.dev", "v1alpha1") if system == "modelfleet" else ("kubeflow.org", "v1")
    time.sleep(2)  # a CRD has no status.conditions for a moment after it is created
    cluster.kubectl("wait", "--for", "condition=Established", "crd", "--all", "--timeout=60s")
    cluster.kubectl("create", "namespace", "bench")
    proc = subprocess.Popen(cmd, env=env, stdout=(work / "operator.log").open("wb"), stderr=subprocess.STDOUT)
    sampler = ProcessSampler(proc.pid)
    try:
        if system != "modelfleet":
            threading.Thread(target=mount_peer_certs, args=(cluster,), daemon=True).start()
        sampler.start()
        profiler = start_profiler(proc.pid, profile / f"{system}.txt") if profile else None
        time.sleep(3)
        api_client = config.new_client_from_config(config_file=str(cluster.kubeconfig_path))
        api_client.configuration.connection_pool_maxsize = 16
        custom = client.CustomObjectsApi(api_client)
        tracker = RunningPods(api_client, "bench", label, {name: workers for name, workers, _ in mix})
        tracker.start()
        submitted: dict[str, float] = {}

        def submit(item: tuple[str, int, str]) -> None:
            name, workers, region = item
            submitted[name] = time.monotonic()
            custom.create_namespaced_custom_object(group, version, "bench", plural, make(name, workers, region))

        start, cpu_before = time.monotonic(), cluster_cpu(cluster)
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(submit, mix))
        submit_seconds = time.monotonic() - start
        tracker.wait(timeout=600 + 0.3 * len(mix))
        total = time.monotonic() - start
        cpu_during = {name: cpu - cpu_before.get(name, 0.0) for name, cpu in cluster_cpu(cluster).items()}
        busy = cluster.operator_requests()
        time.sleep(IDLE_SECONDS)
        idle = sum(cluster.operator_requests().values()) - sum(busy.values())
        events = scrape(env.get("MODELFLEET_METRICS_PORT"), "modelfleet_watch_events")
        reconciles = scrape(env.get("MODELFLEET_METRICS_PORT"), "modelfleet_reconcile") or scrape(
            env.get("PEER_METRICS_PORT"), "controller_runtime_reconcile"
        )
        diagnostics = {}
        if system == "modelfleet":
            running_at = {name: done + time.time() - time.monotonic() for name, done in tracker.done.items()}
            path, odd = scale_timeline.modelfleet_path(api_client, "bench", running_at)
            counters = scale_timeline.operator_counters(env.get("MODELFLEET_METRICS_PORT"))
            diagnostics = {"path": path, "oddities": odd, "counters": counters}
        if profiler:
            profiler.send_signal(signal.SIGINT)  # py-spy writes what it sampled and exits
            profiler.wait(timeout=60)
    finally:  # also when the run is interrupted (SIGTERM, an error): no operator outlives its cluster
        stop(proc, sampler)
    verbs = cluster.operator_requests()
    times = sorted(done - submitted[name] for name, done in tracker.done.items())
    jobs = len(mix)
    return {
        "jobs": jobs, "jobs_running": len(times), "submit_seconds": round(submit_seconds, 1),
        "p50_seconds": round(times[len(times) // 2], 1) if times else None,
        "p99_seconds": round(times[max(int(len(times) * 0.99) - 1, 0)], 1) if times else None,
        "all_running_seconds": round(total, 1),
        "reads_per_job": round(sum(verbs[v] for v in READS) / jobs, 2),
        **{f"  {verb}": round(verbs[verb] / jobs, 2) for verb in READS},
        "writes_per_job": round(sum(verbs[v] for v in WRITES) / jobs, 2),
        **{f"  {verb}": round(verbs[verb] / jobs, 2) for verb in WRITES if verb != "deletecollection"},
        f"requests_{IDLE_SECONDS}s_after_all_running": idle,
        "watch_events_handled": int(events) if events is not None else None,
        "reconciles": int(reconciles) if reconciles is not None else None,
        "peak_rss_mb": round(sampler.peak_rss_mb, 1), "cpu_seconds": round(sampler.cpu_seconds, 1),
        "control_plane_cpu_seconds": round(sum(cpu_during.values()), 1),
        **{f"  {name}": round(cpu, 1) for name, cpu in sorted(cpu_during.items())},
        "measured": time.strftime("%H:%M UTC", time.gmtime()),
        "build": f"modelfleet@{git_commit()}" if system == "modelfleet" else Path(cmd[0]).parent.name,
        **({"diagnostics": diagnostics} if diagnostics else {}),
    }  # fmt: skip


def build_peer(version: str) -> tuple[str, str]:
    """The training operator's binary and its PyTorchJob CRD (built once per version, cached)."""
    env = {**os.environ, "TRAINING_OPERATOR_VERSION": version}
    out = subprocess.run(["bash", str(ROOT / "benchmarks" / "build_training_operator.sh")],
                         env=env, capture_output=True, text=True, check=True)  # fmt: skip
    binary, crd = out.stdout.split()[-2:]
    return binary, crd


PEER_CERT_DIR = Path("/tmp/k8s-webhook-server/serving-certs")


def mount_peer_certs(cluster: ScaleCluster, timeout: float = 120) -> None:
    """Plays the kubelet for the peer: its certificate rotator waits until the Secret it filled appears as files,
    which in a cluster is the Secret volume's job."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = cluster.kubectl(
            "get", "secret", "training-operator-webhook-cert", "-n", "kubeflow", "-o", "json", check=False
        )
        data = (json.loads(out).get("data") or {}) if out else {}
        if "tls.crt" in data and "tls.key" in data:
            PEER_CERT_DIR.mkdir(parents=True, exist_ok=True)
            for key, value in data.items():
                (PEER_CERT_DIR / key).write_bytes(base64.b64decode(value))
            return
        time.sleep(1)


def start_profiler(pid: int, out: Path) -> subprocess.Popen:
    """py-spy sampling the operator 20 times a second without pausing it, collapsed stacks into `out` (one line per
    stack and its count: `py-spy record -f raw`). Only the thread holding the GIL is sampled: where the CPU goes, not
    the client's threads waiting on their sockets."""
    out.parent.mkdir(parents=True, exist_ok=True)
    py_spy = Path(sys.executable).with_name("py-spy")
    cmd = [str(py_spy), "record", "--nonblocking", "--gil", "-r", "20", "-f", "raw", "-o", str(out), "-p", str(pid)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=(out.with_suffix(".log")).open("wb"))


def stop(proc: subprocess.Popen, sampler: ProcessSampler) -> None:
    """Stops the operator under test; one that will not stop in 30 s is killed."""
    sampler.stopped.set()
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: str | None, family: str) -> float | None:
    """The sum of a metric family's samples from the operator's /metrics; None when it has no such family."""
    if not port:
        return None
    families = text_string_to_metric_families(httpx.get(f"http://127.0.0.1:{port}/metrics").text)
    found = [f for f in families if f.name == family]
    return sum(s.value for f in found for s in f.samples if s.name.endswith("_total")) if found else None


@functools.cache
def git_commit() -> str:
    """The checkout's commit when the benchmark started (`main` asks first), `-dirty` when files differed from it:
    a commit landing during a long run does not relabel the code that ran."""
    out = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True)
    return out.stdout.strip()


def inference_service(name: str, _workers: int, region: str) -> dict[str, Any]:
    return {
        "apiVersion": "modelfleet.dev/v1alpha1", "kind": "InferenceService", "metadata": {"name": name},
        "spec": {"model": {"uri": "file:///models/m"}, "regions": [{"name": region}], "resources": {"gpus": 1},
                 "autoscaling": {"enabled": False}},
    }  # fmt: skip


def service_ready(service: dict[str, Any]) -> bool:
    return (service.get("status") or {}).get("phase") == "Ready"


def run_inference(system: str, size: Size, count: int) -> dict[str, Any]:
    """Time until `count` InferenceServices are all Ready (one GPU replica each), and what the operator spent."""
    work = Path(tempfile.mkdtemp(prefix=f"modelfleet-scale-isvc-{system}-"))
    cluster = ScaleCluster(work, bin_dir=binaries_dir(), nodes=inventory(size)).up(timeout=900)
    try:
        env = {**os.environ, "KUBECONFIG": str(cluster.operator_kubeconfig())}
        if system == "modelfleet":
            cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
            env["MODELFLEET_METRICS_PORT"] = str(free_port())
            cmd = list(MODELFLEET_OPERATOR)
            group, version, make = "modelfleet.dev", "v1alpha1", inference_service
            is_ready = service_ready
        else:
            binary, module = scale_kserve.build()
            scale_kserve.install(cluster, module)
            env["POD_NAMESPACE"] = scale_kserve.NAMESPACE
            cmd = scale_kserve.command(binary, webhook_port=free_port())
            group, version, make, is_ready = (
                "serving.kserve.io",
                "v1beta1",
                scale_kserve.inference_service,
                scale_kserve.ready,
            )
        time.sleep(2)
        cluster.kubectl("wait", "--for", "condition=Established", "crd", "--all", "--timeout=60s")
        cluster.kubectl("create", "namespace", "bench")
        proc = subprocess.Popen(cmd, env=env, stdout=(work / "operator.log").open("wb"), stderr=subprocess.STDOUT)
        sampler = ProcessSampler(proc.pid)
        sampler.start()
        time.sleep(3)
        custom = client.CustomObjectsApi(config.new_client_from_config(config_file=str(cluster.kubeconfig_path)))
        start = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda item: custom.create_namespaced_custom_object(
                group, version, "bench", "inferenceservices", make(*item)), job_mix(count, seed=12)))  # fmt: skip
        ready, deadline = 0, time.monotonic() + 900
        while ready < count and time.monotonic() < deadline and proc.poll() is None:
            items = custom.list_namespaced_custom_object(group, version, "bench", "inferenceservices")["items"]
            ready = sum(map(is_ready, items))
            time.sleep(2)
        total = time.monotonic() - start
        stop(proc, sampler)
        verbs = cluster.operator_requests()
        return {
            "services": count, "services_ready": ready, "all_ready_seconds": round(total, 1),
            "reads_per_service": round(sum(verbs[v] for v in READS) / count, 2),
            "writes_per_service": round(sum(verbs[v] for v in WRITES) / count, 2),
            "peak_rss_mb": round(sampler.peak_rss_mb, 1), "cpu_seconds": round(sampler.cpu_seconds, 1),
            "measured": time.strftime("%H:%M UTC", time.gmtime()),
            "build": f"modelfleet@{git_commit()}" if system == "modelfleet" else Path(cmd[0]).parent.name,
        }  # fmt: skip
    finally:
        cluster.down()


def repeated_figures(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One run as it is; several: each figure's median (ratios and targets are taken on medians; jobs_running is
    the fewest of any run), the runs themselves under "runs", and the diagnostics of the run whose p99 is the
    median's."""
    if len(runs) == 1:
        return runs[0]
    by_p99 = sorted(runs, key=lambda r: r["p99_seconds"] if r["p99_seconds"] is not None else float("inf"))
    middle = by_p99[(len(runs) - 1) // 2]
    figures = {key: _median(runs, key, value) for key, value in middle.items() if key != "diagnostics"}
    figures["jobs_running"] = min(run["jobs_running"] for run in runs)  # "all reach Running" holds in every run
    figures["measured"] = f"{runs[0]['measured']} to {runs[-1]['measured']}"
    figures["runs"] = [{k: v for k, v in run.items() if k != "diagnostics"} for run in runs]
    if "diagnostics" in middle:
        figures["diagnostics"] = middle["diagnostics"]
    return figures


def _median(runs: list[dict[str, Any]], key: str, example: Any) -> Any:
    """The median of a figure (an int stays an int where the median is whole); anything else as `example` has it."""
    if not isinstance(example, int | float):
        return example
    mid = median_and_spread(runs, key)[0]
    return int(mid) if isinstance(example, int) and mid is not None and float(mid).is_integer() else mid


def ratio(a: Any, b: Any) -> str:
    return f"{a / b:.2f}" if isinstance(a, int | float) and isinstance(b, int | float) and a and b else "-"


def print_jobs(size: Size, results: dict[str, dict[str, Any]]) -> None:
    print(
        f"Operator at scale: {size.jobs:,} jobs of 1-6 GPU workers on {size.node_count:,} KWOK nodes of "
        f"{size.gpus_per_node} GPUs (lower is better). peer: Kubeflow's training operator {PEER_VERSIONS['peer']} "
        f"as shipped; peer-tuned: {PEER_VERSIONS['peer-tuned']} {' '.join(PEER_TUNED_FLAGS)}. Requests: the "
        "apiserver's audit log of the operator's user."
    )
    table = Table()
    systems = [s for s in SYSTEMS if s in results]
    repeated = any("runs" in results[s] for s in systems)
    table.add_column("figure (median, min-max)" if repeated else "figure")
    for system in systems:
        table.add_column(system, justify="right")
    peers = [p for p in ("peer", "peer-tuned") if p in results and "modelfleet" in results]
    for peer in peers:
        table.add_column(f"modelfleet / {peer}", justify="right")
    keys = [key for key in next(iter(results.values())) if key not in ("diagnostics", "runs")]

    def cell(system: str, key: str) -> str:
        value, runs = results[system].get(key), results[system].get("runs") or []
        if runs and isinstance(value, int | float):
            return with_spread(value, [run[key] for run in runs if run.get(key) is not None])
        return "n/a" if value is None else str(value)

    for key in keys:
        ratios = [ratio(results["modelfleet"].get(key), results[p].get(key)) for p in peers]
        table.add_row(key, *(cell(s, key) for s in systems), *ratios)
    if repeated:
        table.add_row("runs", *(str(len(results[s].get("runs") or [0])) for s in systems), *("" for _ in peers))
    Console(width=160).print(table)
    for line in targets(size, results):
        print(line)
    scale_timeline.print_path(results.get("modelfleet", {}).get("diagnostics") or {})


def targets(size: Size, results: dict[str, dict[str, Any]]) -> list[str]:
    """The issue's done-criteria, each with whether the figures here meet it."""
    mf, peer, tuned = (results.get(s) for s in SYSTEMS)
    if not mf:
        return []
    lines = [f"{'met' if mf['jobs_running'] == mf['jobs'] else 'NOT met'}: all {mf['jobs']:,} jobs reach Running"]

    def check(label: str, value: Any, limit: Any, factor: float = 1.0) -> None:
        if value is None or limit is None:
            lines.append(f"not measured: {label}")
        else:
            met = value <= limit * factor
            lines.append(f"{'met' if met else 'NOT met'}: {label} ({round(value, 1)} vs {round(limit * factor, 1)})")

    check("peak RSS <= 200 MB", mf["peak_rss_mb"], 200)
    check("CPU <= 1.5x the as-shipped peer's", mf["cpu_seconds"], peer and peer["cpu_seconds"], 1.5)
    check("p99 to Running <= 0.5x the as-shipped peer's", mf["p99_seconds"], peer and peer["p99_seconds"], 0.5)
    check("p99 to Running <= 1.0x the tuned peer's", mf["p99_seconds"], tuned and tuned["p99_seconds"])
    if size.jobs != 1000:
        lines.append("(the issue sets RSS, CPU and p99 targets at 1,000 jobs; here they are for reference)")
    return lines


def print_services(count: int, services: dict[str, dict[str, Any]]) -> None:
    print(f"{count:,} InferenceServices reconciled to Ready (one GPU replica each, autoscaling off); kserve: KServe's "
          "controller, RawDeployment mode")  # fmt: skip
    table = Table()
    systems = [s for s in SERVICE_SYSTEMS if s in services]
    table.add_column("figure")
    for system in systems:
        table.add_column(system, justify="right")
    compare = "modelfleet" in services and "kserve" in services
    if compare:
        table.add_column("modelfleet / kserve", justify="right")
    for key in next(iter(services.values())):
        values = [services[s].get(key) for s in systems]
        table.add_row(key, *map(str, values), *([ratio(*values)] if compare else []))
    Console(width=160).print(table)


def main() -> None:
    # SIGTERM (a `timeout` around the run) unwinds like Ctrl-C: the clusters' teardown runs, no apiserver is left behind
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="200 jobs on 120 nodes, 300 services")
    parser.add_argument("--large", action="store_true", help="5,000 jobs on 2,000 nodes of 16 GPUs")
    parser.add_argument("--jobs", type=int, help="jobs (default 1,000; --quick 200; --large 5,000)")
    parser.add_argument("--nodes", type=int, help="nodes, rounded down to a multiple of 12")
    every = dict.fromkeys(SYSTEMS + SERVICE_SYSTEMS)
    parser.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help=f"which to measure now, of {', '.join(every)} (kserve, not run by default: a 10+ minute build)",
    )
    parser.add_argument("--no-peer", action="store_true", help="same as --systems modelfleet")
    parser.add_argument("--part", choices=["jobs", "services", "all"], default="all")
    parser.add_argument("--out", type=Path, help="default benchmarks/results/scale-<jobs>.json")
    parser.add_argument("--profile", type=Path, help="a folder: py-spy samples each operator into <system>.txt")
    parser.add_argument(
        "--repeats", type=int, default=1, help="runs of each system, in turns; the tables show medians and spreads"
    )
    args = parser.parse_args()
    git_commit()  # the label of the code under test, taken before it runs
    size = Size(200, 120) if args.quick else Size(5000, 2000, 16) if args.large else Size(1000, 500)
    size = Size(args.jobs or size.jobs, args.nodes or size.nodes, size.gpus_per_node)
    systems = ["modelfleet"] if args.no_peer else [s for s in args.systems.split(",") if s]
    if unknown := set(systems) - set(every):
        parser.error(f"unknown systems: {', '.join(sorted(unknown))}")
    out = args.out or ROOT / "benchmarks" / "results" / f"scale-{size.jobs}.json"
    results: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    if args.part in ("jobs", "all"):
        mix = job_mix(size.jobs, seed=11)
        runs: dict[str, list[dict[str, Any]]] = {}
        for _ in range(args.repeats):  # in turns: a slow spell of the machine falls on every system alike
            for system in (s for s in SYSTEMS if s in systems):
                runs.setdefault(system, []).append(run_jobs(system, size, mix, args.profile))
                results[system] = repeated_figures(runs[system])
                write(out, results)
        print_jobs(size, {s: results[s] for s in SYSTEMS if s in results})
    if args.part in ("services", "all"):
        count = 300 if args.quick else 2000
        services = results.setdefault("services", {})
        for system in (s for s in SERVICE_SYSTEMS if s in systems):
            services[system] = run_inference(system, Size(size.jobs, size.nodes), count)
            write(out, results)
        print_services(count, services)


def write(out: Path, results: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"raw figures: {out}")


if __name__ == "__main__":
    main()

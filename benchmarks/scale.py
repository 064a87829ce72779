"""Operator at scale on the real control plane with KWOK nodes: modelfleet vs Kubeflow's training operator.

    python -m benchmarks.scale [--quick] [--no-peer]

N fake 8-GPU nodes in 3 regions; M TrainingJobs of 1-6 one-GPU workers (seeded) submitted as fast as the API
takes them; the same mix as PyTorchJobs (a Master and n-1 Workers) for the peer, on a fresh cluster of the same
shape. Measured: submit -> every worker pod Running (p50, p99, total), the operator's peak RSS and CPU seconds,
and (for modelfleet) the API requests its reconcilers made per job. Then 2,000 InferenceServices (300 with
--quick) on a fresh cluster: time until all are Ready, and what the operator spent.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import yaml
from kubernetes import client, config
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from modelfleet.devcluster import DevCluster, binaries_dir
from modelfleet.devcluster.nodes import NodeGroup, fake_nodes

ROOT = Path(__file__).resolve().parents[1]
REGIONS = ("cn-hangzhou", "cn-beijing", "us-west-1")


def inventory(nodes: int) -> list[dict[str, Any]]:
    per_group = max(nodes // 12, 1)
    groups = [NodeGroup(r, f"{r}{z}", gpu, per_group) for r in REGIONS for z in "ab" for gpu in ("H100", "A100")]
    return fake_nodes(groups)


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
        ticks = os.sysconf("SC_CLK_TCK")
        while not self.stopped.is_set():
            try:
                status = Path(f"/proc/{self.pid}/status").read_text()
                rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
                stat = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
                self.peak_rss_mb = max(self.peak_rss_mb, rss / 1024)
                self.cpu_seconds = (int(stat[11]) + int(stat[12])) / ticks
            except (OSError, StopIteration):
                return
            time.sleep(0.5)


def running_times(
    api: client.CoreV1Api, namespace: str, jobs: dict[str, int], label: str, submitted: dict[str, float], timeout: float
) -> dict[str, float]:
    """Seconds from submit until every worker of each job is Running, polling the pods."""
    done: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(done) < len(jobs) and time.monotonic() < deadline:
        counts: dict[str, int] = {}
        for pod in api.list_namespaced_pod(namespace, label_selector=label).items:
            if pod.status.phase == "Running" and not pod.metadata.deletion_timestamp:
                owner = pod.metadata.labels.get(label)
                counts[owner] = counts.get(owner, 0) + 1
        now = time.monotonic()
        for name, want in jobs.items():
            if name not in done and counts.get(name, 0) >= want:
                done[name] = now - submitted[name]
        time.sleep(0.5)
    return done


def run(
    system: str, nodes: int, mix: list[tuple[str, int, str]], peer_bin: str | None, peer_crd: str | None
) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix=f"modelfleet-scale-{system}-"))
    cluster = DevCluster(work, bin_dir=binaries_dir(), nodes=inventory(nodes)).up(timeout=300)
    try:
        return measure(system, cluster, work, mix, peer_bin, peer_crd)
    finally:
        cluster.down()


def measure(
    system: str,
    cluster: DevCluster,
    work: Path,
    mix: list[tuple[str, int, str]],
    peer_bin: str | None,
    peer_crd: str | None,
) -> dict[str, Any]:
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig_path)}
    log = (work / "operator.log").open("wb")
    if system == "modelfleet":
        cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
        cmd = [sys.executable, "-m", "modelfleet.cli", "operator", "--log-level", "warning"]
        env["MODELFLEET_METRICS_PORT"] = str(free_port())
        group, plural, make, label = "modelfleet.dev", "trainingjobs", training_job, "modelfleet.dev/job-name"
    else:
        cluster.kubectl("apply", "--server-side", "-f", peer_crd)
        cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(PEER_SETUP))
        env["KUBEFLOW_NAMESPACE"] = "kubeflow"
        cmd = [
            peer_bin,
            "--namespace=bench",
            "--enable-scheme=pytorchjob",
            "--metrics-bind-address=127.0.0.1:0",
            "--health-probe-bind-address=127.0.0.1:0",
        ]
        group, plural, make, label = "kubeflow.org", "pytorchjobs", pytorch_job, "training.kubeflow.org/job-name"
    time.sleep(2)  # a CRD has no status.conditions for a moment after it is created
    cluster.kubectl("wait", "--for", "condition=Established", "crd", "--all", "--timeout=60s")
    cluster.kubectl("create", "namespace", "bench")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    if system != "modelfleet":
        threading.Thread(target=mount_peer_certs, args=(cluster,), daemon=True).start()
    sampler = ProcessSampler(proc.pid)
    sampler.start()
    time.sleep(3)
    api_client = config.new_client_from_config(config_file=str(cluster.kubeconfig_path))
    custom, core = client.CustomObjectsApi(api_client), client.CoreV1Api(api_client)
    submitted: dict[str, float] = {}

    def submit(item: tuple[str, int, str]) -> None:
        name, workers, region = item
        submitted[name] = time.monotonic()
        version = "v1alpha1" if system == "modelfleet" else "v1"
        custom.create_namespaced_custom_object(group, version, "bench", plural, make(name, workers, region))

    start = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(submit, mix))
    submit_seconds = time.monotonic() - start
    times = running_times(core, "bench", {n: w for n, w, _ in mix}, label, submitted, timeout=600)
    total = time.monotonic() - start
    api_requests = scrape_requests(env.get("MODELFLEET_METRICS_PORT")) if system == "modelfleet" else None
    stop(proc, sampler)
    values = sorted(times.values())
    return {
        "jobs": len(mix), "jobs_running": len(values), "submit_seconds": round(submit_seconds, 1),
        "p50_seconds": round(values[len(values) // 2], 2) if values else None,
        "p99_seconds": round(values[max(int(len(values) * 0.99) - 1, 0)], 2) if values else None,
        "total_seconds": round(total, 1), "peak_rss_mb": round(sampler.peak_rss_mb, 1),
        "cpu_seconds": round(sampler.cpu_seconds, 1),
        "api_requests_per_job": round(api_requests / len(mix), 1) if api_requests else None,
    }  # fmt: skip


PEER_CERT_DIR = Path("/tmp/k8s-webhook-server/serving-certs")


def mount_peer_certs(cluster: DevCluster, timeout: float = 120) -> None:
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


def scrape_requests(port: str | None) -> float | None:
    if not port:
        return None
    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "modelfleet_api_requests_total"
    )


def inference_service(name: str, _workers: int, region: str) -> dict[str, Any]:
    return {
        "apiVersion": "modelfleet.dev/v1alpha1", "kind": "InferenceService", "metadata": {"name": name},
        "spec": {"model": {"uri": "file:///models/m"}, "regions": [{"name": region}], "resources": {"gpus": 1},
                 "autoscaling": {"enabled": False}},
    }  # fmt: skip


def run_inference(nodes: int, count: int) -> dict[str, Any]:
    """Time until `count` InferenceServices are all Ready (one GPU replica each), and what the operator spent."""
    work = Path(tempfile.mkdtemp(prefix="modelfleet-scale-isvc-"))
    cluster = DevCluster(work, bin_dir=binaries_dir(), nodes=inventory(nodes)).up(timeout=300)
    try:
        cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
        time.sleep(2)
        cluster.kubectl("wait", "--for", "condition=Established", "crd", "--all", "--timeout=60s")
        cluster.kubectl("create", "namespace", "bench")
        env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig_path), "MODELFLEET_METRICS_PORT": str(free_port())}
        proc = subprocess.Popen([sys.executable, "-m", "modelfleet.cli", "operator", "--log-level", "warning"], env=env,
                                stdout=(work / "operator.log").open("wb"), stderr=subprocess.STDOUT)  # fmt: skip
        sampler = ProcessSampler(proc.pid)
        sampler.start()
        time.sleep(3)
        custom = client.CustomObjectsApi(config.new_client_from_config(config_file=str(cluster.kubeconfig_path)))
        start = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda item: custom.create_namespaced_custom_object(
                "modelfleet.dev", "v1alpha1", "bench", "inferenceservices", inference_service(*item)),
                job_mix(count, seed=12)))  # fmt: skip
        ready, deadline = 0, time.monotonic() + 900
        while ready < count and time.monotonic() < deadline:
            items = custom.list_namespaced_custom_object("modelfleet.dev", "v1alpha1", "bench", "inferenceservices")[
                "items"
            ]
            ready = sum((i.get("status") or {}).get("phase") == "Ready" for i in items)
            time.sleep(1)
        total = time.monotonic() - start
        requests = scrape_requests(env["MODELFLEET_METRICS_PORT"])
        stop(proc, sampler)
        return {
            "services": count, "services_ready": ready, "all_ready_seconds": round(total, 1),
            "peak_rss_mb": round(sampler.peak_rss_mb, 1), "cpu_seconds": round(sampler.cpu_seconds, 1),
            "api_requests_per_service": round(requests / count, 1) if requests else None,
        }  # fmt: skip
    finally:
        cluster.down()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--part", choices=["jobs", "services", "all"], default="all")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/scale.json"))
    args = parser.parse_args()
    nodes, jobs = (120, 200) if args.quick else (500, 1000)
    results: dict[str, Any] = {}
    if args.part in ("jobs", "all"):
        mix = job_mix(jobs, seed=11)
        results["modelfleet"] = run("modelfleet", nodes, mix, None, None)
        if not args.no_peer:
            out = subprocess.run(
                ["bash", str(ROOT / "benchmarks" / "build_training_operator.sh")],
                capture_output=True,
                text=True,
                check=True,
            )
            peer_bin, peer_crd = out.stdout.split()[-2:]
            results["training-operator"] = run("training-operator", nodes, mix, peer_bin, peer_crd)
        table = Table(
            title=f"Operator at scale: {jobs} jobs of 1-6 GPU workers on {nodes // 12 * 12} KWOK nodes (lower is better)"
        )
        table.add_column("figure")
        for system in results:
            table.add_column(system, justify="right")
        if len(results) > 1:
            table.add_column("ratio", justify="right")
        for key in results["modelfleet"]:
            values = [results[s][key] for s in results]
            ratio = (
                [f"{values[0] / values[1]:.2f}"]
                if len(values) > 1 and values[0] and values[1]
                else (["-"] if len(values) > 1 else [])
            )
            table.add_row(key, *map(str, values), *ratio)
        Console(width=140).print(table)
    if args.part == "jobs":
        write(args.out, results)
        return
    services = run_inference(nodes, 300 if args.quick else 2000)
    isvc = Table(title="InferenceServices reconciled to Ready (one GPU replica each, autoscaling off)")
    isvc.add_column("figure")
    isvc.add_column("modelfleet", justify="right")
    for key, value in services.items():
        isvc.add_row(key, str(value))
    Console(width=140).print(isvc)
    results["inference-services"] = services
    write(args.out, results)


def write(out: Path, results: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"raw figures: {out}")


if __name__ == "__main__":
    main()

"""KServe's controller manager (RawDeployment mode) as the peer for the scale benchmark's InferenceServices.

It runs as it ships but for what a cluster install adds around it: its CRDs and its inferenceservice-config
ConfigMap are applied (RawDeployment by default, no Ingress: nothing here would serve one), and it gets a
self-signed serving certificate for its webhook server (cert-manager's job in a cluster), which it needs to
start. No webhook configuration is registered, so InferenceServices go in without its defaulting and validation
(which only spares it work) and its pods without the storage-initializer it would inject.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

from benchmarks.scale_cluster import ScaleCluster

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = "kserve"
CERT_DIR = Path("/tmp/k8s-webhook-server/serving-certs")  # controller-runtime's default for the webhook server


def build() -> tuple[str, Path]:
    """The manager's binary and the Go module's directory (built once, cached)."""
    out = subprocess.run(["bash", str(ROOT / "benchmarks" / "build_kserve.sh")],
                         capture_output=True, text=True, check=True)  # fmt: skip
    binary, module = out.stdout.split()[-2:]
    return binary, Path(module)


def install(cluster: ScaleCluster, module: Path) -> None:
    """CRDs, the namespace and the ConfigMap the manager reads at start, and its webhook certificate."""
    for crd in sorted((module / "config" / "crd" / "full").glob("serving.kserve.io_*.yaml")):
        cluster.kubectl("apply", "--server-side", "-f", str(crd))
    shipped = yaml.safe_load((module / "config" / "configmap" / "inferenceservice.yaml").read_text())
    data = {key: value for key, value in shipped["data"].items() if not key.startswith("_")}
    data["deploy"] = json.dumps({"defaultDeploymentMode": "RawDeployment"})
    ingress = yaml.safe_load(data["ingress"])  # JSON with trailing spaces: YAML reads it
    data["ingress"] = json.dumps({**ingress, "disableIngressCreation": True})
    config_map = {"apiVersion": "v1", "kind": "ConfigMap",
                  "metadata": {"name": "inferenceservice-config", "namespace": NAMESPACE}, "data": data}  # fmt: skip
    cluster.kubectl("create", "namespace", NAMESPACE)
    cluster.kubectl("apply", "--server-side", "-f", "-", stdin=yaml.safe_dump(config_map))
    CERT_DIR.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=kserve-webhook",
         "-keyout", str(CERT_DIR / "tls.key"), "-out", str(CERT_DIR / "tls.crt")],
        check=True, capture_output=True,
    )  # fmt: skip


def command(binary: str, webhook_port: int) -> list[str]:
    return [binary, "--metrics-addr=127.0.0.1:0", "--health-probe-addr=127.0.0.1:0",
            f"--webhook-port={webhook_port}", "--leader-elect=false"]  # fmt: skip


def inference_service(name: str, _workers: int, region: str) -> dict[str, Any]:
    """One GPU replica in `region`, no autoscaler: modelfleet's service with autoscaling off, as KServe says it."""
    return {
        "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
        "metadata": {"name": name, "annotations": {"serving.kserve.io/deploymentMode": "RawDeployment",
                                                   "serving.kserve.io/autoscalerClass": "none"}},
        "spec": {"predictor": {
            "minReplicas": 1, "maxReplicas": 1,
            "nodeSelector": {"topology.kubernetes.io/region": region},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "containers": [{"name": "kserve-container", "image": "example.com/serve:1",
                            "resources": {"limits": {"nvidia.com/gpu": "1"}}}],
        }},
    }  # fmt: skip


def ready(service: dict[str, Any]) -> bool:
    conditions = (service.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)

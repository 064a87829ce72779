"""The scale benchmark's control plane: DevCluster sized for thousands of KWOK nodes on 2 cores, and the
apiserver's own record of what the operator under test asked of it.

Both operators run as one user (`OPERATOR_USER`, a client certificate signed by the cluster's CA) and the
apiserver audits that user alone, so requests are counted the same way for a Python and a Go operator: every
request once (by audit ID), by verb, as the apiserver saw it.
"""

from __future__ import annotations

import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config

from modelfleet.devcluster.control_plane import RUNNER, STAGES, DevCluster, kubeconfig, openssl

OPERATOR_USER = "scale-bench-operator"
READS = ("get", "list", "watch")
WRITES = ("create", "update", "patch", "delete", "deletecollection")

AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [{"level": "Metadata", "users": [OPERATOR_USER]}, {"level": "None"}],
}

KWOK_OPTIONS = {
    "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
    "kind": "KwokConfiguration",
    # KWOK plays 4 pod and node stages at a time by default: thousands of pods then queue in KWOK, not the operator.
    # Node leases last 120 s (renewed every 30 s) instead of a kubelet's 40 s: 2,000 nodes renewing every 10 s
    # would take a third of the 2 cores; the node lifecycle controller's grace period is raised to match.
    "options": {
        "podPlayStageParallelism": 16,
        "nodePlayStageParallelism": 16,
        "nodeLeaseParallelism": 8,
        "nodeLeaseDurationSeconds": 120,
    },
}
NODE_STATUS_EVERY_MS = (240_000, 300_000)
"""An unchanged node status is reported every 4-5 min, as a kubelet does (nodeStatusReportFrequency 5 m; the lease
is the heartbeat); the test cluster's 10 s would send both operators ~200 node events a second at 2,000 nodes."""


@dataclass
class ScaleCluster(DevCluster):
    """A DevCluster whose apiserver audits OPERATOR_USER, whose KWOK plays more stages at once and heartbeats
    nodes as a kubelet does, whose nodes are created in parallel rather than by one kubectl apply, and which runs
    no pod runner."""

    @property
    def audit_log(self) -> Path:
        return self.workdir / "logs" / "audit.jsonl"

    def _start(self, name: str, args: list[str]) -> None:
        if name == RUNNER:  # no node here runs its pods for real, and the runner would watch 17,500 pods
            return
        if name == "kube-apiserver" and "--audit-log-path" not in args:
            policy = self.workdir / "audit-policy.yaml"
            policy.write_text(yaml.safe_dump(AUDIT_POLICY))
            args = [*args, "--audit-policy-file", str(policy), "--audit-log-path", str(self.audit_log),
                    "--audit-log-format", "json", "--audit-log-maxsize", "0"]  # fmt: skip
        elif name == "kube-controller-manager" and "--node-monitor-grace-period" not in args:
            args = [*args, "--node-monitor-grace-period", "180s"]
        elif name == "kwok":
            args = [str(self.kwok_config()) if arg == str(STAGES) else arg for arg in args]
        super()._start(name, args)

    def kwok_config(self) -> Path:
        """The test cluster's stages with a kubelet's node status frequency, and KWOK_OPTIONS."""
        stages = list(yaml.safe_load_all(STAGES.read_text()))
        for stage in stages:
            if stage["metadata"]["name"] == "node-heartbeat":
                low, high = NODE_STATUS_EVERY_MS
                stage["spec"]["delay"] = {"durationMilliseconds": low, "jitterDurationMilliseconds": high}
        path = self.workdir / "kwok.yaml"
        path.write_text(yaml.safe_dump_all([*stages, KWOK_OPTIONS]))
        return path

    def create_nodes(self) -> None:
        core = client.CoreV1Api(config.new_client_from_config(config_file=str(self.kubeconfig_path)))
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(core.create_node, self.nodes or []))

    def operator_kubeconfig(self) -> Path:
        """A kubeconfig for OPERATOR_USER (cluster-admin through system:masters), the only user audited."""
        name = "operator"
        if not (self.pki / f"{name}.crt").exists():
            openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                    "-subj", f"/CN={OPERATOR_USER}/O=system:masters", cwd=self.pki)  # fmt: skip
            openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                    "-out", f"{name}.crt", "-days", "30", "-extfile", "client.ext", cwd=self.pki)  # fmt: skip
        server = yaml.safe_load(self.kubeconfig_path.read_text())["clusters"][0]["cluster"]["server"]
        doc = kubeconfig(server, self.pki)
        doc["users"][0]["user"] = {
            "client-certificate": str(self.pki / f"{name}.crt"),
            "client-key": str(self.pki / f"{name}.key"),
        }
        path = self.workdir / "operator.kubeconfig"
        path.write_text(yaml.safe_dump(doc))
        return path

    def operator_requests(self) -> Counter[str]:
        """OPERATOR_USER's requests by verb, each once (a watch is audited when it starts and when it ends)."""
        seen: set[str] = set()
        verbs: Counter[str] = Counter()
        if not self.audit_log.exists():
            return verbs
        with self.audit_log.open() as log:
            for line in log:
                entry: dict[str, Any] = json.loads(line)
                if entry.get("user", {}).get("username") == OPERATOR_USER and entry["auditID"] not in seen:
                    seen.add(entry["auditID"])
                    verbs[entry["verb"]] += 1
        return verbs

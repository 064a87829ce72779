"""The local cluster's pod runner: pods on run-pods nodes run as real local processes, like a kubelet runs them."""

from __future__ import annotations

import time
from typing import Any

import pytest

from modelfleet.devcluster.nodes import RUN_PODS_LABEL
from tests.support.kube import Kube, wait_for

pytestmark = pytest.mark.e2e
SCRIPT = """
import os, pathlib, signal, sys, time
data = pathlib.Path(os.environ["DATA"])
data.mkdir(parents=True, exist_ok=True)
(data / "seen").write_text(" ".join(os.environ[k] for k in ("POD_NAME", "POD_IP", "NAMESPACE", "TMPDIR")))
pathlib.Path(os.environ["MESSAGE"]).write_text("done: " + os.environ["DATA"])
if sys.argv[1] == "wait":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # only SIGKILL at the end of the grace period ends it
    time.sleep(600)
sys.exit(int(sys.argv[1]))
"""


def pod(name: str, arg: str, grace: int = 30) -> dict[str, Any]:
    field = lambda path: {"valueFrom": {"fieldRef": {"fieldPath": path}}}  # noqa: E731
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": grace,
            "nodeSelector": {RUN_PODS_LABEL: "true"},
            "tolerations": [{"key": RUN_PODS_LABEL, "operator": "Exists"}],
            "containers": [
                {
                    "name": "main",
                    "image": "none",
                    "command": ["python", "-c", SCRIPT, arg],
                    "env": [
                        {"name": "POD_NAME", **field("metadata.name")},
                        {"name": "POD_IP", **field("status.podIP")},
                        {"name": "NAMESPACE", **field("metadata.namespace")},
                        {"name": "DATA", "value": f"/data/{name}"},
                        {"name": "TMPDIR", "value": "/scratch"},
                        {"name": "MESSAGE", "value": "/dev/termination-log"},
                    ],
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}, {"name": "s", "mountPath": "/scratch"}],
                }
            ],
            "volumes": [
                {"name": "data", "persistentVolumeClaim": {"claimName": "shared"}},
                {"name": "s", "emptyDir": {}},
            ],
        },
    }


def test_exit_code_message_env_and_claim_reach_the_pod_status(kube: Kube, namespace: str, run_pods_nodes: None) -> None:
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "shared"},
             "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}}}  # fmt: skip
    kube.apply(claim, namespace)
    kube.apply(pod("fails", "3"), namespace)
    kube.apply(pod("works", "0"), namespace)
    done = {
        name: wait_for(
            lambda name=name: (
                (p := kube.get_json("pod", name, "-n", namespace))["status"].get("phase") in ("Succeeded", "Failed")
                and p
            ),
            timeout=60,
            what=f"{name} to end",
        )
        for name in ("fails", "works")
    }
    failed = done["fails"]["status"]
    assert failed["phase"] == "Failed" and failed["podIP"].startswith("127.101.")
    terminated = failed["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 3 and terminated["message"] == "done: /data/fails", terminated
    assert done["works"]["status"]["phase"] == "Succeeded"
    assert done["works"]["status"]["podIP"] != failed["podIP"]


def test_a_deleted_pod_is_stopped_within_its_grace_period(kube: Kube, namespace: str, run_pods_nodes: None) -> None:
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "shared"},
             "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}}}  # fmt: skip
    kube.apply(claim, namespace)
    kube.apply(pod("stubborn", "wait", grace=3), namespace)
    wait_for(
        lambda: kube.get_json("pod", "stubborn", "-n", namespace)["status"].get("phase") == "Running",
        timeout=60,
        what="running",
    )
    started = time.monotonic()
    kube.kubectl("delete", "pod", "stubborn", "-n", namespace, "--wait=true", "--timeout=30s")
    assert time.monotonic() - started < 10, "SIGKILL at the end of the 3 s grace period, then the pod is removed"

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
CLAIM = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "shared"},
         "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}}}  # fmt: skip


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
    kube.apply(CLAIM, namespace)
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
    kube.apply(CLAIM, namespace)
    kube.apply(pod("stubborn", "wait", grace=3), namespace)
    wait_for(
        lambda: kube.get_json("pod", "stubborn", "-n", namespace)["status"].get("phase") == "Running",
        timeout=60,
        what="running",
    )
    started = time.monotonic()
    kube.kubectl("delete", "pod", "stubborn", "-n", namespace, "--wait=true", "--timeout=30s")
    assert time.monotonic() - started < 10, "SIGKILL at the end of the 3 s grace period, then the pod is removed"


def test_a_container_that_cannot_start_is_reported_and_backs_off(
    kube: Kube, namespace: str, run_pods_nodes: None
) -> None:
    """As a kubelet: StartError with exit code 128 and the reason in the message, then restarts with back-off (not a
    retry every pass), and the runner's other pods keep running meanwhile."""
    status_of = lambda name: kube.get_json("pod", name, "-n", namespace)["status"]  # noqa: E731
    once, always = pod("no-binary", "0"), pod("no-binary-again", "0")
    for manifest in (once, always):
        manifest["spec"]["containers"][0]["command"] = ["/opt/not-installed/bin/serve"]
    always["spec"]["restartPolicy"] = "Always"
    kube.apply(CLAIM, namespace)
    for manifest in (once, always, pod("beside", "0")):
        kube.apply(manifest, namespace)

    failed = wait_for(lambda: (s := status_of("no-binary"))["phase"] == "Failed" and s, 60, what="no-binary failed")
    state = failed["containerStatuses"][0]["state"]["terminated"]
    assert (state["reason"], state["exitCode"]) == ("StartError", 128), state
    assert "/opt/not-installed/bin/serve" in state["message"]
    wait_for(lambda: status_of("beside")["phase"] == "Succeeded", 60, what="the pod beside it to run")

    time.sleep(6)  # back-off 1, 2, 4 s: at most four starts in this time, where a retry per 0.3 s pass made 20
    container = status_of("no-binary-again")["containerStatuses"][0]
    assert 1 <= container["restartCount"] <= 4, container
    assert container["lastState"]["terminated"]["reason"] == "StartError"
    assert container["state"]["waiting"]["reason"] == "CrashLoopBackOff"

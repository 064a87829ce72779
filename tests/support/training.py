"""Helpers for TrainingJob e2e tests."""

from __future__ import annotations

from typing import Any

from tests.support.kube import Kube, wait_for


def training_job(
    name: str,
    workers: int | dict[str, int] = 2,
    gpus: int = 8,
    gpu_type: str | None = "H100",
    regions: tuple[str, ...] = (),
    exit_code: int | None = None,
    run_for: str = "2s",
    policy: str = "Pack",
    termination_delay: str | None = "2s",
    fail_attempts: int = 0,
    **spec: Any,
) -> dict[str, Any]:
    """A TrainingJob whose workers (simulated by KWOK) end with `exit_code` after `run_for`, or run until stopped.

    A deleted worker stays Terminating for `termination_delay` (None: until its grace period ends, 30 s by
    default), so every restart meets the old gang still terminating. With `fail_attempts` = f, the gang's
    attempts 0..f-1 fail (exit code 1) before attempt f ends with `exit_code`."""
    annotations: dict[str, str] = {}
    if exit_code is not None:
        annotations = {"sim.modelfleet.dev/exit-code": str(exit_code), "sim.modelfleet.dev/run-duration": run_for}
    if termination_delay is not None:
        annotations["sim.modelfleet.dev/termination-delay"] = termination_delay
    if fail_attempts:
        annotations["sim.modelfleet.dev/fail-attempts"] = str(fail_attempts)
    resources: dict[str, Any] = {"gpus": gpus}
    if gpu_type:
        resources["gpuType"] = gpu_type
    return {
        "apiVersion": "modelfleet.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {
            "workers": workers if isinstance(workers, dict) else {"replicas": workers},
            "resources": resources,
            "placement": {"regions": list(regions), "policy": policy},
            "podMetadata": {"annotations": annotations},
            **spec,
        },
    }


def job(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    return kube.get_json("trainingjob", name, "-n", namespace)


def status(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    return job(kube, namespace, name).get("status") or {}


def workers(kube: Kube, namespace: str, name: str) -> list[dict[str, Any]]:
    pods = kube.get_json("pods", "-n", namespace, "-l", f"modelfleet.dev/job-name={name}")["items"]
    return sorted(pods, key=lambda p: p["metadata"]["name"])


def wait_phase(kube: Kube, namespace: str, name: str, phase: str, timeout: float = 60) -> dict[str, Any]:
    return wait_for(
        lambda: (s := status(kube, namespace, name)).get("phase") == phase and s,
        timeout=timeout,
        what=f"{name} {phase}",
    )


def condition(status_: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status_.get("conditions", []) if c["type"] == type_), {})


def env_of(pod: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in pod["spec"]["containers"][0]["env"]}


def events_of(kube: Kube, namespace: str, name: str) -> list[str]:
    items = kube.get_json("events", "-n", namespace, "--field-selector", f"involvedObject.name={name}")["items"]
    return [f"{e['reason']}: {e.get('message', '')}" for e in items]

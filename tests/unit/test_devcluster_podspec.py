from __future__ import annotations

from pathlib import Path

import pytest

from modelfleet.devcluster.nodes import RUN_NODE_PREFIX, RUN_PODS_LABEL, fake_nodes, run_pods_inventory
from modelfleet.devcluster.podspec import (
    PathMap,
    UnsupportedPod,
    command_line,
    container_env,
    dns_names,
    expand,
    probe_url,
    resolve_names,
    volume_dirs,
)

POD = {
    "metadata": {"name": "job-worker-1", "namespace": "ns", "uid": "u-1", "labels": {"app": "a"}},
    "spec": {
        "nodeName": "run-local-a-l4-0",
        "hostname": "job-worker-1",
        "subdomain": "job",
        "volumes": [
            {"name": "store", "persistentVolumeClaim": {"claimName": "models"}},
            {"name": "scratch", "emptyDir": {}},
            {"name": "kube-api-access", "projected": {"sources": []}},
        ],
    },
}


def test_env_resolves_field_refs_and_expands_earlier_vars() -> None:
    container = {
        "env": [
            {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "URL", "value": "http://$(IP):80/$(NAME)/$(UNSET)$$"},
        ]
    }
    env = container_env(POD, container, "127.101.0.7", "127.0.0.1")
    assert env == {
        "NAME": "job-worker-1",
        "IP": "127.101.0.7",
        "APP": "a",
        "URL": "http://127.101.0.7:80/job-worker-1/$(UNSET)$",
    }


def test_env_from_secrets_is_refused_clearly() -> None:
    with pytest.raises(UnsupportedPod, match="fieldRef"):
        container_env(POD, {"env": [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}, "", "")


def test_pod_dns_names_resolve_to_the_pod_ip_or_wait() -> None:
    known = {("ns", "job-worker-0.job"): "127.101.0.3"}
    lookup = lambda ns, name: known.get((ns, name))  # noqa: E731
    assert "job-worker-1.job.ns.svc.cluster.local" in dns_names(POD)
    assert resolve_names("job-worker-0.job", "ns", lookup) == ("127.101.0.3", True)
    assert resolve_names("job-worker-0.job.ns.svc:29500", "ns", lookup) == ("127.101.0.3:29500", True)
    assert resolve_names("job-worker-2.job", "ns", lookup) == ("job-worker-2.job", False)
    for untouched in ("0.5", "/models/x.pt", "a.b.other", "plain", "http://x.y"):
        assert resolve_names(untouched, "ns", lookup) == (untouched, True)


def test_volumes_map_to_claim_and_pod_directories(tmp_path: Path) -> None:
    dirs = volume_dirs(POD, tmp_path / "pod", tmp_path / "pvc")
    assert dirs["store"] == tmp_path / "pvc" / "ns" / "models"
    assert dirs["scratch"] == tmp_path / "pod" / "volumes" / "scratch"
    container = {
        "volumeMounts": [
            {"name": "store", "mountPath": "/models"},
            {"name": "store", "mountPath": "/models/deep", "subPath": "d"},
            {"name": "scratch", "mountPath": "/tmp/"},
        ]
    }
    paths = PathMap.of(container, dirs, tmp_path / "msg")
    assert paths.local("/models/run-1/model.pt") == str(dirs["store"] / "run-1" / "model.pt")
    assert paths.local("/models/deep/x") == str(dirs["store"] / "d" / "x")
    assert paths.local("/tmp") == str(dirs["scratch"])
    assert paths.local("/dev/termination-log") == str(tmp_path / "msg")
    assert paths.local("/modelsX") == "/modelsX"
    message = f'{{"path": "{dirs["store"] / "run-1"}", "scratch": "{dirs["scratch"]}"}}'
    assert paths.container(message) == '{"path": "/models/run-1", "scratch": "/tmp"}'


def test_command_uses_the_given_python_and_needs_a_command() -> None:
    container = {"name": "c", "command": ["python", "-m", "m"], "args": ["--x", "$(A)"]}
    assert command_line(container, {"A": "1"}, "/venv/bin/python") == ["/venv/bin/python", "-m", "m", "--x", "1"]
    with pytest.raises(UnsupportedPod, match="command"):
        command_line({"name": "c", "args": ["x"]}, {}, "py")
    assert expand("$(A)-$(B)", {"A": "1"}) == "1-$(B)"


def test_the_interpreter_is_never_remapped_but_the_arguments_are() -> None:
    """The project's venv may itself lie under a mount path of the pod (a cache under /tmp, where every pod mounts
    an emptyDir): the interpreter is a local path already; the arguments are container paths."""
    container = {"name": "c", "command": ["python", "-m", "m"], "args": ["--out", "/tmp/x"]}
    local = {"/tmp/x": "/state/pod/tmp/x"}.get
    argv = command_line(container, {}, "/tmp/cache/venv/bin/python", lambda a: local(a, a))
    assert argv == ["/tmp/cache/venv/bin/python", "-m", "m", "--out", "/state/pod/tmp/x"]


def test_probe_url_follows_named_ports() -> None:
    container = {
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/r", "port": "http"}},
    }
    assert probe_url(container, "127.101.0.2") == "http://127.101.0.2:8080/r"
    assert probe_url({}, "127.101.0.2") is None


def test_run_pods_nodes_are_labelled_and_named_for_kwok_to_skip() -> None:
    nodes = fake_nodes(run_pods_inventory())
    assert nodes and all(n["metadata"]["name"].startswith(RUN_NODE_PREFIX) for n in nodes)
    assert all(n["metadata"]["labels"][RUN_PODS_LABEL] == "true" for n in nodes)
    assert any("nvidia.com/gpu" in n["status"]["capacity"] for n in nodes)
    assert any("nvidia.com/gpu" not in n["status"]["capacity"] for n in nodes)

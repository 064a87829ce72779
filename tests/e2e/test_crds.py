"""The CRDs on a real apiserver: examples apply, kubectl explain works, bad input is refused with a clear message."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.support.kube import Kube, wait_for

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
BAD = sorted((Path(__file__).parent / "bad").glob("*.yaml"))


def test_explain_prints_descriptions(kube: Kube) -> None:
    # the apiserver publishes a new CRD's OpenAPI a moment after the CRD is Established
    out = wait_for(
        lambda: kube.kubectl("explain", "trainingjob.spec.workers", check=False).stdout, 30, what="published OpenAPI"
    )
    assert "minReplicas" in out and "Elastic: fewest workers" in out
    out = kube.kubectl("explain", "inferenceservice.spec.model.quantization").stdout
    assert "int8" in out


@pytest.mark.parametrize("example", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_example_applies(kube: Kube, namespace: str, example: Path) -> None:
    kube.kubectl("apply", "-n", namespace, "--dry-run=server", "-f", str(example))


def test_defaults_are_applied_by_the_apiserver(kube: Kube, namespace: str) -> None:
    kube.kubectl("apply", "-n", namespace, "-f", str(ROOT / "examples" / "trainingjob-paper-mlp.yaml"))
    spec = kube.get_json("trainingjob", "paper-mlp", "-n", namespace)["spec"]
    assert spec["restartPolicy"] == "OnFailure"
    assert spec["masterPort"] == 29500
    assert spec["dataset"]["sharding"] == "Weighted"
    listed = kube.kubectl("get", "modelfleet", "-n", namespace).stdout
    assert "paper-mlp" in listed


def test_running_job_shape_changes_only_while_suspended(kube: Kube, namespace: str) -> None:
    kube.kubectl("apply", "-n", namespace, "-f", str(ROOT / "examples" / "trainingjob-paper-mlp.yaml"))
    result = kube.kubectl(
        "patch", "trainingjob", "paper-mlp", "-n", namespace, "--type=merge",
        "-p", '{"spec": {"image": "example.com/other:2"}}', check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "can only change while the job is suspended" in result.stderr
    kube.kubectl(
        "patch", "trainingjob", "paper-mlp", "-n", namespace, "--type=merge",
        "-p", '{"spec": {"suspend": true, "workers": {"replicas": 2}}}',
    )  # fmt: skip


def test_at_least_fifty_bad_manifests() -> None:
    assert len(BAD) >= 50


@pytest.mark.parametrize("manifest", BAD, ids=lambda p: p.stem)
def test_bad_manifest_is_refused_with_its_reason(kube: Kube, namespace: str, manifest: Path) -> None:
    text = manifest.read_text()
    lines = text.splitlines()
    expected = lines[0].removeprefix("# expect:").strip()
    # the name is `bad` unless a `# name:` line declares another one (for the cases about the name itself)
    name = lines[1].removeprefix("# name:").strip() if lines[1].startswith("# name:") else "bad"
    assert yaml.safe_load(text)["metadata"]["name"] == name
    result = kube.kubectl("apply", "-n", namespace, "-f", str(manifest), check=False)
    assert result.returncode != 0, f"{manifest.name} was accepted"
    assert expected in result.stderr, result.stderr

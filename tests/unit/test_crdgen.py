from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from modelfleet.crdgen import render_all, structural

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("directory", ["crds", "charts/modelfleet/crds"])
def test_generated_crds_are_up_to_date(directory: str) -> None:
    for name, text in render_all().items():
        on_disk = (ROOT / directory / name).read_text()
        assert on_disk == text, f"{directory}/{name} is stale: run python -m modelfleet.crdgen"


def walk(schema: dict[str, Any], path: str = ""):
    yield path, schema
    for name, prop in schema.get("properties", {}).items():
        yield from walk(prop, f"{path}.{name}")
    if "items" in schema:
        yield from walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize("name", ["trainingjobs.yaml", "inferenceservices.yaml"])
def test_schemas_are_structural_and_described(name: str) -> None:
    crd = yaml.safe_load(render_all()[name])
    version = crd["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]
    for path, node in walk(schema["properties"]["spec"], ".spec"):
        assert not {"$ref", "anyOf", "allOf", "oneOf", "title"} & node.keys(), path
        assert "type" in node or node.get("x-kubernetes-int-or-string"), path
        if path.count(".") >= 2 and not path.endswith("[]") and not path.endswith("{}"):
            assert node.get("description"), f"{path} has no description"
    assert version["subresources"]["status"] == {}
    assert crd["spec"]["names"]["categories"] == ["modelfleet"]


def test_scale_subresource_only_on_inference_service() -> None:
    tj = yaml.safe_load(render_all()["trainingjobs.yaml"])["spec"]["versions"][0]["subresources"]
    isvc = yaml.safe_load(render_all()["inferenceservices.yaml"])["spec"]["versions"][0]["subresources"]
    assert "scale" not in tj
    assert isvc["scale"]["specReplicasPath"] == ".spec.replicas"


def test_structural_unwraps_optional_and_inlines_refs() -> None:
    schema = {
        "type": "object",
        "properties": {
            "a": {"$ref": "#/$defs/A", "description": "an A"},
            "maybe": {"anyOf": [{"$ref": "#/$defs/A"}, {"type": "null"}], "default": None},
            "q": {"anyOf": [{"type": "string"}, {"type": "integer"}], "x-kubernetes-int-or-string": True},
        },
        "$defs": {
            "A": {"type": "object", "title": "A", "properties": {"n": {"type": "integer", "title": "N", "default": 3}}}
        },
    }
    out = structural(schema)
    assert out["properties"]["a"] == {
        "type": "object", "properties": {"n": {"type": "integer", "default": 3}}, "description": "an A", "default": {"n": 3},
    }  # fmt: skip
    assert "default" not in out["properties"]["maybe"]
    assert out["properties"]["q"] == {"x-kubernetes-int-or-string": True}


@pytest.mark.parametrize("name", ["trainingjobs.yaml", "inferenceservices.yaml"])
def test_the_name_is_checked_at_the_root(name: str) -> None:
    root = yaml.safe_load(render_all()[name])["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    rules = [r["rule"] for r in root["x-kubernetes-validations"]]
    assert len(rules) == 2 and all("self.metadata.name" in r for r in rules)


@pytest.mark.parametrize("name", ["trainingjobs.yaml", "inferenceservices.yaml"])
def test_maps_that_cel_iterates_are_bounded(name: str) -> None:
    """Without maxProperties the CEL cost estimate of `self.all(k, k.matches(...))` is too high for the apiserver."""
    spec = yaml.safe_load(render_all()[name])["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    for path, node in walk(spec, ".spec"):
        if any(r["rule"].startswith("self.all(") for r in node.get("x-kubernetes-validations", [])):
            assert "maxProperties" in node, path

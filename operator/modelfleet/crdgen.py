"""Renders the CustomResourceDefinitions in crds/ from the pydantic models in modelfleet.api.

Run `python -m modelfleet.crdgen` after changing a model; a unit test fails while crds/ is stale.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from modelfleet.api import inference, quota, training
from modelfleet.api.common import GROUP, VERSION
from modelfleet.api.inference import InferenceServiceSpec, InferenceServiceStatus
from modelfleet.api.quota import GPUQuotaSpec
from modelfleet.api.training import TrainingJobSpec, TrainingJobStatus

KEPT_KEYWORDS = {
    "type", "description", "default", "enum", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
    "minLength", "maxLength", "pattern", "minItems", "maxItems", "maxProperties", "items", "properties",
    "required", "additionalProperties", "format", "nullable",
}  # fmt: skip


def structural(schema: dict[str, Any]) -> dict[str, Any]:
    """A pydantic JSON schema turned into a structural OpenAPI v3 schema: refs inlined, optionals unwrapped."""
    defs = schema.get("$defs", {})

    def convert(node: dict[str, Any], optional_object_default: bool = False) -> dict[str, Any]:
        node = copy.deepcopy(node)
        if "$ref" in node:
            target = defs[node.pop("$ref").split("/")[-1]]
            node = {**target, **node}
        if "anyOf" in node:
            branches = [b for b in node.pop("anyOf") if b.get("type") != "null"]
            types = {b.get("type") for b in branches}
            if types == {"string", "integer"}:
                node = {**node, **{k: v for b in branches for k, v in b.items() if k != "type"}}
            elif len(branches) == 1:
                node = {**convert(branches[0]), **node}
            else:
                raise ValueError(f"cannot express union {branches} structurally")
        if "const" in node:
            node["enum"] = [node.pop("const")]
        out = {k: v for k, v in node.items() if k in KEPT_KEYWORDS or k.startswith("x-kubernetes-")}
        if "properties" in out:
            out["type"] = "object"
            required = set(out.get("required", []))
            out["properties"] = {
                name: convert(prop, optional_object_default=name not in required)
                for name, prop in out["properties"].items()
            }
            if optional_object_default and "default" not in out and not required:
                # the defaulted object must satisfy its own CEL rules, so spell out the nested defaults
                out["default"] = {k: v["default"] for k, v in out["properties"].items() if "default" in v}
        if "items" in out:
            out["items"] = convert(out["items"])
        if isinstance(out.get("additionalProperties"), dict):
            out["additionalProperties"] = convert(out["additionalProperties"])
        elif out.get("additionalProperties") is False:
            del out["additionalProperties"]
        elif out.get("additionalProperties") is True:
            del out["additionalProperties"]
            out["x-kubernetes-preserve-unknown-fields"] = True
        for bound in ("Minimum", "Maximum"):
            if isinstance(out.get(f"exclusive{bound}"), int | float) and not isinstance(out[f"exclusive{bound}"], bool):
                out[bound.lower()] = out[f"exclusive{bound}"]
                out[f"exclusive{bound}"] = True
        if out.get("x-kubernetes-int-or-string"):
            out.pop("type", None)
        if out.get("default") is None:
            out.pop("default", None)
        if out.get("type") == "array" and out.get("default") == []:
            del out["default"]
        return out

    root = {k: v for k, v in schema.items() if k != "$defs"}
    return convert(root)


def model_schema(model: type[BaseModel]) -> dict[str, Any]:
    return structural(model.model_json_schema(by_alias=True, mode="validation"))


def crd(
    *,
    kind: str,
    plural: str,
    short_names: list[str],
    spec: type[BaseModel],
    status: type[BaseModel] | None,
    description: str,
    printer_columns: list[dict[str, Any]],
    name_rules: list[dict[str, str]],
    scale: bool = False,
    scope: str = "Namespaced",
) -> dict[str, Any]:
    """One CRD; `name_rules` are CEL rules at the root, the only place where metadata.name is visible."""
    subresources: dict[str, Any] = {"status": {}} if status else {}
    if scale:
        subresources["scale"] = {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": scope,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": short_names,
                "categories": ["modelfleet"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": subresources,
                    "additionalPrinterColumns": printer_columns,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": description,
                            "required": ["spec"],
                            "x-kubernetes-validations": name_rules,
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                # declared so that `name_rules` may point at it (fieldPath)
                                "metadata": {"type": "object", "properties": {"name": {"type": "string"}}},
                                "spec": model_schema(spec),
                                **({"status": model_schema(status)} if status else {}),
                            },
                        }
                    },
                }
            ],
        },
    }


def column(name: str, path: str, type_: str = "string", priority: int = 0) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "type": type_, "jsonPath": path}
    if priority:
        entry["priority"] = priority
    return entry


AGE = column("Age", ".metadata.creationTimestamp", "date")


def training_job_crd() -> dict[str, Any]:
    return crd(
        kind="TrainingJob",
        plural="trainingjobs",
        short_names=["tj"],
        spec=TrainingJobSpec,
        status=TrainingJobStatus,
        description="A gang of PyTorch workers placed on GPU nodes and wired for torch.distributed.",
        printer_columns=[
            column("Phase", ".status.phase"),
            column("Workers", ".status.ready"),
            column("GPUs", ".status.gpus", "integer"),
            column("Region", ".status.region"),
            column("Queue", ".status.queue.position", "integer"),
            column("Restarts", ".status.restarts", "integer", priority=1),
            column("Step", ".status.progress.step", "integer", priority=1),
            column("Loss", ".status.progress.loss", "number", priority=1),
            AGE,
        ],
        name_rules=training.NAME_RULES,
    )


def inference_service_crd() -> dict[str, Any]:
    return crd(
        kind="InferenceService",
        plural="inferenceservices",
        short_names=["mfis"],
        spec=InferenceServiceSpec,
        status=InferenceServiceStatus,
        description="Model servers in each named region, pinned there and scaled by observed load.",
        printer_columns=[
            column("Phase", ".status.phase"),
            column("Replicas", ".status.replicas", "integer"),
            column("Ready", ".status.readyReplicas", "integer"),
            column("Regions", ".status.regionNames"),
            column("URL", ".status.url"),
            AGE,
        ],
        name_rules=inference.NAME_RULES,
        scale=True,
    )


def gpu_quota_crd() -> dict[str, Any]:
    return crd(
        kind="GPUQuota",
        plural="gpuquotas",
        short_names=["gq"],
        spec=GPUQuotaSpec,
        status=None,
        description="GPUs one namespace's TrainingJobs may hold at once (named after that namespace).",
        printer_columns=[
            column("GPUs", ".spec.gpus", "integer"),
            column("Borrowing", ".spec.borrowing", "boolean"),
            AGE,
        ],
        name_rules=quota.NAME_RULES,
        scope="Cluster",
    )


def render_all() -> dict[str, str]:
    """File name -> YAML text of every CRD."""
    crds = {
        "trainingjobs.yaml": training_job_crd(),
        "inferenceservices.yaml": inference_service_crd(),
        "gpuquotas.yaml": gpu_quota_crd(),
    }
    header = "# Generated by `python -m modelfleet.crdgen` from operator/modelfleet/api. Do not edit.\n"
    return {name: header + yaml.safe_dump(body, sort_keys=False, width=120) for name, body in crds.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, nargs="+", default=[Path("crds"), Path("charts/modelfleet/crds")])
    args = parser.parse_args(argv)
    for out in args.out:
        out.mkdir(parents=True, exist_ok=True)
        for name, text in render_all().items():
            (out / name).write_text(text)
            print(f"wrote {out / name}")


if __name__ == "__main__":
    main()

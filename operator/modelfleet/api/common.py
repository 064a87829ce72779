"""Building blocks shared by both resources: the API base model, resources, env vars and conditions."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, with_config
from pydantic.alias_generators import to_camel
from typing_extensions import TypedDict

GROUP = "modelfleet.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
REGION_LABEL = "topology.kubernetes.io/region"
ZONE_LABEL = "topology.kubernetes.io/zone"
HOSTNAME_LABEL = "kubernetes.io/hostname"

# Patterns that CEL rules embed are written without backslashes, so a CEL string literal holds them as they are.
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_1035_LABEL_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
DNS_SUBDOMAIN_PATTERN = f"^{DNS_SUBDOMAIN}$"
LABEL_VALUE_PATTERN = r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$"
NON_EMPTY_LABEL_VALUE_PATTERN = r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
QUALIFIED_NAME_PATTERN = rf"^({DNS_SUBDOMAIN}/)?[A-Za-z0-9]([-A-Za-z0-9_.]{{0,61}}[A-Za-z0-9])?$"
ENV_NAME_PATTERN = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
QUANTITY_PATTERN = r"^[+-]?([0-9]+([.][0-9]*)?|[.][0-9]+)([KMGTPE]i|[numkMGTPE]|[eE][+-]?[0-9]+)?$"
IMAGE_PATTERN = r"^\S+$"
MAX_METADATA_ENTRIES = 64


def rule(expression: str, message: str, field_path: str | None = None) -> dict[str, str]:
    """One CEL validation rule as the CRD's `x-kubernetes-validations` entry."""
    entry = {"rule": expression, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    return entry


def check_quantity(value: str | int) -> str | int:
    if isinstance(value, str) and not re.fullmatch(QUANTITY_PATTERN, value):
        raise ValueError("must be a quantity such as 4, 500m or 16Gi")
    if str(value).startswith("-"):
        raise ValueError("must not be negative")
    return value


Quantity = Annotated[
    str | int,
    Field(
        json_schema_extra={
            "x-kubernetes-int-or-string": True,
            "x-kubernetes-validations": [
                rule("type(self) == int || isQuantity(self)", "must be a quantity such as 4, 500m or 16Gi"),
                rule(
                    "type(self) == int ? self >= 0 : !self.startsWith('-')",
                    "must not be negative",
                ),
            ],
        },
        union_mode="left_to_right",
    ),
    AfterValidator(check_quantity),
]

RegionName = Annotated[str, Field(min_length=1, max_length=40, pattern=DNS_LABEL_PATTERN)]
Image = Annotated[str, Field(min_length=1, pattern=IMAGE_PATTERN)]
ServiceAccountName = Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)]

QUALIFIED_NAME_MESSAGE = (
    "keys must be qualified names: an optional DNS subdomain prefix of at most 253 characters and '/', "
    "then a name of at most 63 letters, digits, '-', '_' or '.' that starts and ends with a letter or digit"
)


def check_qualified_name(key: str) -> str:
    if not re.fullmatch(QUALIFIED_NAME_PATTERN, key) or key.find("/") > 253:
        raise ValueError(QUALIFIED_NAME_MESSAGE)
    return key


QualifiedName = Annotated[str, AfterValidator(check_qualified_name)]
QUALIFIED_KEYS_RULE = rule(
    f"self.all(k, k.matches('{QUALIFIED_NAME_PATTERN}') && k.indexOf('/') <= 253)", QUALIFIED_NAME_MESSAGE
)


class ApiModel(BaseModel):
    """Base of every spec and status model: camelCase on the wire, snake_case in Python."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    def to_api(self) -> dict[str, Any]:
        """The object as the Kubernetes API spells it, without unset optional fields."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class EnvVar(ApiModel):
    name: str = Field(
        min_length=1,
        pattern=ENV_NAME_PATTERN,
        description="Name of the environment variable: letters, digits, '_', '-' or '.', not starting with a digit.",
    )
    value: str = Field(default="", description="Value of the environment variable.")


class Resources(ApiModel):
    """What one worker or one replica asks for."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                rule("!has(self.gpuType) || self.gpus > 0", "gpuType needs gpus of at least 1", ".gpuType"),
            ]
        }
    )

    gpus: int = Field(default=0, ge=0, le=64, description="GPUs (nvidia.com/gpu) for each pod.")
    gpu_type: str | None = Field(
        default=None,
        min_length=1,
        max_length=63,
        pattern=NON_EMPTY_LABEL_VALUE_PATTERN,
        description="Required GPU product, matched against the node label nvidia.com/gpu.product "
        "(for example H100, A100, T4), so a valid label value.",
    )
    cpu: Quantity | None = Field(default=None, description="CPU request and limit for each pod, e.g. 4 or 500m.")
    memory: Quantity | None = Field(default=None, description="Memory request and limit for each pod, e.g. 16Gi.")


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(ApiModel):
    """A Kubernetes-style condition."""

    model_config = ConfigDict(extra="ignore")

    type: str = Field(description="Type of the condition.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(default="", description="One CamelCase word saying why.")
    message: str = Field(default="", description="What happened, for a person.")
    last_transition_time: str | None = Field(default=None, description="When the status last changed.")
    observed_generation: int | None = Field(default=None, description="The generation this was computed from.")


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(conditions: list[dict[str, Any]], new: Condition) -> list[dict[str, Any]]:
    """Conditions with `new` in place of its type; lastTransitionTime moves only when status changes."""
    result: list[dict[str, Any]] = []
    found = False
    for existing in conditions:
        if existing.get("type") != new.type:
            result.append(existing)
            continue
        found = True
        same_status = existing.get("status") == new.status
        merged = new.to_api()
        merged["lastTransitionTime"] = (
            (existing.get("lastTransitionTime") if same_status else None) or new.last_transition_time or now_iso()
        )
        result.append(merged)
    if not found:
        merged = new.to_api()
        merged.setdefault("lastTransitionTime", now_iso())
        result.append(merged)
    return result


LabelValue = Annotated[str, Field(max_length=63, pattern=LABEL_VALUE_PATTERN)]


class PodMetadata(ApiModel):
    labels: dict[QualifiedName, LabelValue] = Field(
        default_factory=dict,
        max_length=MAX_METADATA_ENTRIES,
        json_schema_extra={"x-kubernetes-validations": [QUALIFIED_KEYS_RULE]},
        description="Extra labels on every pod. Values: at most 63 letters, digits, '-', '_' or '.', "
        "starting and ending with a letter or digit, or empty.",
    )
    annotations: dict[QualifiedName, str] = Field(
        default_factory=dict,
        max_length=MAX_METADATA_ENTRIES,
        json_schema_extra={"x-kubernetes-validations": [QUALIFIED_KEYS_RULE]},
        description="Extra annotations on every pod.",
    )


VolumeName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=63,
        pattern=DNS_LABEL_PATTERN,
        description="Name of the volume: a DNS-1123 label (lowercase letters, digits and '-').",
    ),
]


@with_config(ConfigDict(extra="allow"))
class Volume(TypedDict):
    """A core/v1 Volume: the name is checked here, the volume source by the API server when the pod is created."""

    name: VolumeName


@with_config(ConfigDict(extra="allow"))
class VolumeMount(TypedDict):
    """A core/v1 VolumeMount of one of the volumes."""

    name: VolumeName
    mountPath: Annotated[str, Field(min_length=1, description="Path in the container; unique among the mounts.")]


MAX_VOLUMES = 64
VOLUMES_BY_NAME = {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]}
MOUNTS_BY_PATH = {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["mountPath"]}


MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "modelfleet"
JOB_NAME_LABEL = "modelfleet.dev/job-name"
SERVICE_NAME_LABEL = "modelfleet.dev/service-name"
REPLICA_INDEX_LABEL = "modelfleet.dev/replica-index"
GANG_ATTEMPT_LABEL = "modelfleet.dev/attempt"
REGION_NAME_LABEL = "modelfleet.dev/region"
GANG_SCHEDULING_GATE = "modelfleet.dev/gang"
PROGRESS_ANNOTATION = "modelfleet.dev/progress"


def owner_reference(kind: str, meta: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": kind,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def validation_message(exc: ValidationError) -> str:
    """A pydantic error as one line that names each field, for a condition and an Event."""
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())


def invalid_spec_status(
    prev: Mapping[str, Any], generation: int, message: str, condition_type: str, phase: str
) -> dict[str, Any]:
    """The status of an object whose spec the operator cannot use: reason InvalidSpec, never a crash loop."""
    conditions = set_condition(
        list(prev.get("conditions") or []),
        Condition(
            type=condition_type, status="False", reason="InvalidSpec", message=message, observed_generation=generation
        ),
    )
    return {**prev, "phase": phase, "conditions": conditions, "observedGeneration": generation}

"""Building blocks shared by both resources: the API base model, resources, env vars and conditions."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, with_config
from pydantic.alias_generators import to_camel
from typing_extensions import TypedDict

# The operator's own labels are defined in its contract with what it runs; still importable from here.
from modelfleet.contract import GANG_ATTEMPT_LABEL as GANG_ATTEMPT_LABEL
from modelfleet.contract import GANG_SCHEDULING_GATE as GANG_SCHEDULING_GATE
from modelfleet.contract import JOB_NAME_LABEL as JOB_NAME_LABEL
from modelfleet.contract import MANAGED_BY as MANAGED_BY
from modelfleet.contract import MANAGED_BY_LABEL as MANAGED_BY_LABEL
from modelfleet.contract import REGION_NAME_LABEL as REGION_NAME_LABEL
from modelfleet.contract import REPLICA_INDEX_LABEL as REPLICA_INDEX_LABEL
from modelfleet.contract import SERVICE_NAME_LABEL as SERVICE_NAME_LABEL

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


SCRATCH_VOLUME = (
    "modelfleet-tmp"  # the emptyDir at /tmp the operator gives every pod (its root filesystem is read-only)
)
SCRATCH_VOLUME_RULE = rule(
    f"!has(self.volumes) || !self.volumes.exists(v, v.name == '{SCRATCH_VOLUME}')",
    f"the volume name '{SCRATCH_VOLUME}' is taken by the operator's emptyDir at /tmp",
    ".volumes",
)
ROOT_NEEDS_RUN_AS_NON_ROOT_FALSE = rule(
    "!has(self.runAsUser) || self.runAsUser != 0 || (has(self.runAsNonRoot) && !self.runAsNonRoot)",
    "runAsUser 0 (root) needs runAsNonRoot: false beside it: with the default runAsNonRoot: true the container "
    "would not start",
    ".runAsUser",
)
UserId = Annotated[int, Field(ge=0, le=2147483647)]


class SeccompProfile(ApiModel):
    """A core/v1 SeccompProfile."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                rule(
                    "self.type == 'Localhost' ? has(self.localhostProfile) : !has(self.localhostProfile)",
                    "localhostProfile is set exactly when type is Localhost",
                    ".localhostProfile",
                )
            ]
        }
    )

    type: Literal["RuntimeDefault", "Localhost", "Unconfined"] = Field(
        description="RuntimeDefault (the container runtime's profile; the default), Localhost (a profile file on "
        "the node) or Unconfined (no seccomp filter; refused by the Pod Security levels baseline and restricted)."
    )
    localhost_profile: str | None = Field(
        default=None,
        min_length=1,
        description="With type Localhost: the profile's path relative to the kubelet's seccomp directory.",
    )


class PodSecurityContext(ApiModel):
    """The pod-level securityContext (a subset of core/v1 PodSecurityContext), merged over the operator's
    restricted defaults: runAsNonRoot true, runAsUser, runAsGroup and fsGroup 65532, seccomp RuntimeDefault."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [ROOT_NEEDS_RUN_AS_NON_ROOT_FALSE]})

    run_as_user: UserId | None = Field(
        default=None, description="UID the containers run as. Default 65532; 0 (root) needs runAsNonRoot: false."
    )
    run_as_group: UserId | None = Field(default=None, description="Primary GID of the containers. Default 65532.")
    run_as_non_root: bool | None = Field(
        default=None,
        description="Refuse to start a container that would run as root. Default true; false is refused by the "
        "Pod Security level restricted.",
    )
    fs_group: UserId | None = Field(
        default=None,
        description="Group that owns the pod's volumes (so the containers can write to a PVC). Default 65532.",
    )
    fs_group_change_policy: Literal["OnRootMismatch", "Always"] | None = Field(
        default=None,
        description="When volume ownership is changed to fsGroup: OnRootMismatch (the default: only when the "
        "volume's root differs, fast on large volumes) or Always.",
    )
    supplemental_groups: list[UserId] | None = Field(
        default=None,
        max_length=32,
        description="Extra GIDs of the first process of each container, e.g. the group of a shared data volume.",
    )
    seccomp_profile: SeccompProfile | None = Field(
        default=None, description="Seccomp profile of the containers. Default RuntimeDefault."
    )


class Capabilities(ApiModel):
    """Linux capabilities to add to and drop from the container runtime's defaults."""

    add: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = Field(
        default=None,
        max_length=64,
        description="Capabilities to add, e.g. NET_BIND_SERVICE (the only one the Pod Security level restricted "
        "allows) or SYS_PTRACE.",
    )
    drop: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = Field(
        default=None,
        max_length=64,
        description="Capabilities to drop. Default [ALL]; restricted requires ALL.",
    )


class ContainerSecurityContext(ApiModel):
    """The container securityContext (a subset of core/v1 SecurityContext) of the worker or server container, merged
    over the operator's restricted defaults: allowPrivilegeEscalation false, capabilities drop [ALL],
    readOnlyRootFilesystem true (with an emptyDir at /tmp)."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [ROOT_NEEDS_RUN_AS_NON_ROOT_FALSE]})

    allow_privilege_escalation: bool | None = Field(
        default=None,
        description="Whether a process may gain more privileges than its parent (setuid binaries). Default false; "
        "true is refused by restricted.",
    )
    capabilities: Capabilities | None = Field(
        default=None, description="Capabilities added to, or dropped from, the default drop [ALL]."
    )
    privileged: bool | None = Field(
        default=None,
        description="Run as privileged (all devices, no isolation). Default false; true is refused by the Pod "
        "Security levels baseline and restricted.",
    )
    read_only_root_filesystem: bool | None = Field(
        default=None,
        description="Mount the image's filesystem read-only. Default true; /tmp is a writable emptyDir "
        "(TMPDIR and HOME point there). Set false for an image that writes elsewhere.",
    )
    run_as_user: UserId | None = Field(
        default=None, description="UID of this container, over the pod's securityContext.runAsUser."
    )
    run_as_group: UserId | None = Field(
        default=None, description="GID of this container, over the pod's securityContext.runAsGroup."
    )
    run_as_non_root: bool | None = Field(
        default=None, description="Over the pod's securityContext.runAsNonRoot, for this container."
    )
    seccomp_profile: SeccompProfile | None = Field(
        default=None, description="Seccomp profile of this container, over the pod's."
    )


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


class PodOptions(ApiModel):
    """What both kinds pass on to every pod they make (core/v1 shapes), within what the namespace allows."""

    pod_metadata: PodMetadata = Field(default_factory=PodMetadata, description="Labels and annotations for the pods.")
    service_account_name: ServiceAccountName | None = Field(
        default=None, description="ServiceAccount of the pods (a DNS-1123 subdomain)."
    )
    security_context: PodSecurityContext | None = Field(
        default=None,
        description="Pod securityContext fields that relax or change the operator's restricted defaults (runAsNonRoot, "
        "UID/GID/fsGroup 65532, seccomp RuntimeDefault) for an image that needs it; the namespace's Pod Security "
        "level decides what is allowed.",
    )
    container_security_context: ContainerSecurityContext | None = Field(
        default=None,
        description="securityContext fields of the main container over the restricted defaults (no privilege "
        "escalation, capabilities drop [ALL], read-only root filesystem); the namespace's Pod Security level "
        "decides what is allowed.",
    )
    volumes: list[Volume] = Field(
        default_factory=list,
        max_length=MAX_VOLUMES,
        json_schema_extra=VOLUMES_BY_NAME,
        description="Pod volumes (core/v1 Volume), e.g. a PVC; names are unique.",
    )
    volume_mounts: list[VolumeMount] = Field(
        default_factory=list,
        max_length=MAX_VOLUMES,
        json_schema_extra=MOUNTS_BY_PATH,
        description="Where the main container mounts them (core/v1 VolumeMount); mount paths are unique.",
    )

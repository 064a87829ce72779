"""InferenceService: model servers in each named region, scaled by observed load."""

from __future__ import annotations

from enum import StrEnum

from pydantic import ConfigDict, Field

from modelfleet.api.common import (
    DNS_1035_LABEL_PATTERN,
    DNS_LABEL_PATTERN,
    DNS_SUBDOMAIN,
    SCRATCH_VOLUME_RULE,
    ApiModel,
    Condition,
    EnvVar,
    Image,
    PodOptions,
    RegionName,
    Resources,
    rule,
)

DEFAULT_SERVING_IMAGE = "ghcr.io/modelfleet/runtime:0.1.0"
DEFAULT_SERVING_PORT = 8080
MODEL_URI_PATTERN = rf"^((file://|/)\S+|pvc://{DNS_SUBDOMAIN}/\S+)$"
MODEL_VOLUME = "model"  # the volume the operator adds for a pvc:// model

NAME_RULES = [
    rule(
        f"self.metadata.name.matches('{DNS_1035_LABEL_PATTERN}')",
        "must be a DNS-1035 label: lowercase letters, digits and '-', starting with a letter and ending with a letter "
        "or digit (each region's Service is named <name>-<region>)",
        ".metadata.name",
    ),
    rule(
        "self.spec.regions.all(r, size(self.metadata.name) + 1 + size(r.name) <= 63)",
        "too long for a region: <name>-<region>, the name of the region's Deployment and Service, "
        "must fit in 63 characters",
        ".metadata.name",
    ),
]


class ModelFormat(StrEnum):
    TORCHSCRIPT = "torchscript"
    PYTORCH = "pytorch"


class Quantization(StrEnum):
    NONE = "none"
    INT8 = "int8"
    FP16 = "fp16"
    BF16 = "bf16"


class ScaleMetric(StrEnum):
    CONCURRENCY = "concurrency"
    RPS = "rps"
    LATENCY = "latency"


class MetricsSource(StrEnum):
    SCRAPE = "Scrape"
    PROMETHEUS = "Prometheus"
    GATEWAY = "Gateway"


class ServingPhase(StrEnum):
    PENDING = "Pending"
    READY = "Ready"
    DEGRADED = "Degraded"
    FAILED = "Failed"


class Model(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                rule("has(self.uri) != has(self.fromTrainingJob)", "set exactly one of uri and fromTrainingJob"),
            ]
        }
    )

    uri: str | None = Field(
        default=None,
        min_length=1,
        pattern=MODEL_URI_PATTERN,
        description="Where the model artifact is: file:///path, /path, or pvc://<claim>/<path> "
        "(the claim's name is a DNS-1123 subdomain). Set this or fromTrainingJob.",
    )
    from_training_job: str | None = Field(
        default=None,
        min_length=1,
        max_length=63,
        pattern=DNS_1035_LABEL_PATTERN,
        description="A TrainingJob in this namespace whose artifact (status.artifact) to serve: nothing is made "
        "until it succeeds, and a newer succeeded run of it rolls out again. Set this or uri.",
    )
    format: ModelFormat = Field(default=ModelFormat.TORCHSCRIPT, description="torchscript or pytorch (pickled).")
    name: str | None = Field(
        default=None,
        min_length=1,
        max_length=63,
        pattern=DNS_LABEL_PATTERN,
        description="Name the model is served under (/v2/models/<name>). Default: the service's name.",
    )
    quantization: Quantization = Field(
        default=Quantization.NONE,
        description="none, int8 (dynamic quantization of Linear layers, CPU), fp16 or bf16 (GPU).",
    )


class Region(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                rule("self.minReplicas <= self.maxReplicas", "minReplicas must not exceed maxReplicas", ".minReplicas"),
            ]
        }
    )

    name: RegionName = Field(
        description="Region (topology.kubernetes.io/region): a DNS-1123 label of at most 40 characters."
    )
    min_replicas: int = Field(default=1, ge=0, le=1000, description="Fewest replicas in this region.")
    max_replicas: int = Field(default=3, ge=1, le=1000, description="Most replicas in this region.")
    weight: int = Field(
        default=1, ge=0, le=100, description="Share of the total when replicas are set by the scale subresource."
    )


class Autoscaling(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                rule(
                    "self.panicWindowSeconds <= self.stableWindowSeconds",
                    "panicWindowSeconds must not exceed stableWindowSeconds",
                    ".panicWindowSeconds",
                ),
                rule(
                    "!has(self.source) || self.source != 'Prometheus' || has(self.prometheusUrl)",
                    "source Prometheus needs prometheusUrl",
                    ".prometheusUrl",
                ),
            ]
        }
    )

    enabled: bool = Field(default=True, description="False: replicas come from spec.replicas (the scale subresource).")
    metric: ScaleMetric = Field(
        default=ScaleMetric.CONCURRENCY,
        description="concurrency (in-flight requests per replica), rps (requests/s per replica) "
        "or latency (p90 seconds).",
    )
    target: float = Field(default=4.0, gt=0, description="Per-replica target of the metric.")
    target_utilization: float = Field(
        default=0.7, gt=0, le=1, description="Fraction of target to aim at, leaving headroom for bursts."
    )
    stable_window_seconds: int = Field(default=60, ge=6, le=3600, description="Window averaged for normal scaling.")
    panic_window_seconds: int = Field(default=6, ge=1, le=600, description="Short window that triggers panic mode.")
    panic_threshold: float = Field(
        default=2.0, gt=1, le=10, description="Panic when the panic-window demand is this many times ready capacity."
    )
    scale_down_delay_seconds: int = Field(
        default=60, ge=0, le=3600, description="Scale down only to the highest recommendation of this window."
    )
    max_scale_down_rate: float = Field(
        default=2.0, ge=1, le=100, description="At most divide replicas by this per decision."
    )
    max_scale_up_rate: float = Field(
        default=10.0, ge=1, le=1000, description="At most multiply ready replicas by this per decision."
    )
    scale_to_zero: bool = Field(default=False, description="Allow regions with minReplicas 0 to go to zero when idle.")
    scale_to_zero_grace_period_seconds: int = Field(
        default=30, ge=0, le=3600, description="Idle time before scaling to zero."
    )
    source: MetricsSource | None = Field(
        default=None,
        description="Scrape: the operator reads each ready replica's /metrics. Prometheus: query prometheusUrl. "
        "Gateway: in-flight and held requests per region from the gateway's /metrics (what wakes a region at zero). "
        "Default: Gateway when the operator runs with a gateway (--gateway-url), else Scrape.",
    )
    prometheus_url: str | None = Field(
        default=None, pattern=r"^https?://\S+$", description="Prometheus base URL (source Prometheus)."
    )
    interval_seconds: float = Field(default=2.0, ge=0.5, le=60, description="How often load is observed.")


class Batching(ApiModel):
    max_batch_size: int = Field(default=1, ge=1, le=1024, description="Most requests merged into one forward pass.")
    max_delay_ms: float = Field(default=5.0, ge=0, le=10000, description="Longest wait for a batch to fill.")


class InferenceServiceSpec(PodOptions):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                rule(
                    "!(self.model.quantization in ['fp16', 'bf16']) || self.resources.gpus > 0",
                    "quantization fp16 and bf16 need resources.gpus of at least 1 (use int8 on CPU)",
                    ".model.quantization",
                ),
                rule(
                    "self.autoscaling.scaleToZero || self.regions.all(r, r.minReplicas > 0)",
                    "minReplicas 0 needs autoscaling.scaleToZero",
                    ".regions",
                ),
                rule(
                    "self.regions.exists(r, r.maxReplicas > 0 && r.weight > 0)",
                    "at least one region needs a weight above 0",
                    ".regions",
                ),
                rule(
                    "!has(self.model.uri) || !self.model.uri.startsWith('pvc://') || !has(self.volumes) "
                    f"|| !self.volumes.exists(v, v.name == '{MODEL_VOLUME}')",
                    f"the volume name '{MODEL_VOLUME}' is taken by the model's PVC (model.uri pvc://...)",
                    ".volumes",
                ),
                rule(
                    "!has(self.volumeMounts) || self.volumeMounts.all(m, "
                    "(has(self.volumes) && self.volumes.exists(v, v.name == m.name)) "
                    f"|| (m.name == '{MODEL_VOLUME}' && has(self.model.uri) && self.model.uri.startsWith('pvc://')))",
                    "each volumeMounts[].name must be the name of one of spec.volumes",
                    ".volumeMounts",
                ),
                SCRATCH_VOLUME_RULE,
                rule(
                    "!has(self.replicas) || !self.autoscaling.enabled",
                    "replicas (kubectl scale) take effect only with autoscaling.enabled false: while autoscaling is on "
                    "the autoscaler sets them",
                    ".replicas",
                ),
            ]
        }
    )

    model: Model = Field(description="The model to serve.")
    regions: list[Region] = Field(
        min_length=1,
        max_length=32,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
        description="Regions to serve in; each gets its own Deployment pinned there.",
    )
    replicas: int | None = Field(
        default=None,
        ge=0,
        description="Total replicas when autoscaling is off (split across regions by weight); "
        "the scale subresource sets it.",
    )
    image: Image | None = Field(default=None, description="Server image (no spaces). Default: modelfleet's runtime.")
    command: list[str] = Field(
        default_factory=list, description="Entrypoint. Default: python -m modelfleet.runtime.serve."
    )
    args: list[str] = Field(default_factory=list, description="Arguments to the entrypoint.")
    env: list[EnvVar] = Field(default_factory=list, description="Extra environment variables.")
    port: int = Field(default=DEFAULT_SERVING_PORT, ge=1024, le=65535, description="Port the server listens on.")
    resources: Resources = Field(default_factory=Resources, description="What each replica asks for.")
    autoscaling: Autoscaling = Field(default_factory=Autoscaling, description="How replicas follow load.")
    batching: Batching = Field(default_factory=Batching, description="Dynamic batching in the server.")


class RegionStatus(ApiModel):
    model_config = ConfigDict(extra="ignore")

    name: str = Field(description="Region.")
    replicas: int = Field(default=0, description="Replicas of the region's Deployment.")
    ready_replicas: int = Field(default=0, description="Ready replicas.")
    desired_replicas: int = Field(default=0, description="What the autoscaler asks for.")
    observed_load: float | None = Field(default=None, description="Latest per-replica load in the chosen metric.")
    last_scale_time: str | None = Field(default=None, description="When replicas last changed.")
    url: str | None = Field(default=None, description="URL of the region's Service.")
    revision: str | None = Field(default=None, description="Hash of the pod template now serving.")
    reason: str | None = Field(
        default=None, description="Why the region is (not) serving: Ready, Starting, Unschedulable, ..."
    )
    message: str | None = Field(default=None, description="Details, e.g. the scheduler's message.")


class ServedArtifact(ApiModel):
    model_config = ConfigDict(extra="ignore")

    uri: str = Field(description="The model's URI.")
    digest: str | None = Field(default=None, description="sha256:<hex> of the artifact, when the job reported it.")
    training_job: str | None = Field(default=None, description="The TrainingJob it came from.")
    job_uid: str | None = Field(default=None, description="The uid of the job run that made it.")


class InferenceServiceStatus(ApiModel):
    model_config = ConfigDict(extra="ignore")

    phase: ServingPhase | None = Field(default=None, description="Pending, Ready, Degraded or Failed.")
    conditions: list[Condition] = Field(default_factory=list, description="Conditions of the service.")
    observed_generation: int | None = Field(default=None, description="The spec generation last acted on.")
    replicas: int = Field(default=0, description="Replicas over all regions (scale subresource).")
    ready_replicas: int = Field(default=0, description="Ready replicas over all regions.")
    selector: str | None = Field(default=None, description="Label selector of the pods (scale subresource).")
    regions: list[RegionStatus] = Field(default_factory=list, description="Per region.")
    region_names: str | None = Field(default=None, description="Regions, comma separated, for kubectl get.")
    artifact: ServedArtifact | None = Field(
        default=None, description="The model the Deployments are built from: a fromTrainingJob's resolved artifact."
    )
    url: str | None = Field(
        default=None,
        description="Where to send requests: the gateway's URL for the model when the operator knows a gateway, "
        "else the first ready region's.",
    )

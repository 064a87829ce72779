"""TrainingJob: a gang of PyTorch workers wired for torch.distributed."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import ConfigDict, Field

from modelfleet.api.common import (
    DNS_1035_LABEL_PATTERN,
    DNS_SUBDOMAIN_PATTERN,
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
from modelfleet.api.inference import MODEL_URI_PATTERN

DEFAULT_TRAINING_IMAGE = "ghcr.io/modelfleet/runtime:0.1.0"
TEACHER_VOLUME = "teacher"  # the volume the operator adds for a pvc:// distillation teacher
DEFAULT_MASTER_PORT = 29500
MAX_WORKERS = 1024
# the worker pods' hostname `<job>-worker-<index>` is a DNS label of at most 63 characters
MAX_NAME_LENGTH = 63 - len("-worker-") - len(str(MAX_WORKERS - 1))

NAME_RULES = [
    rule(
        f"self.metadata.name.matches('{DNS_1035_LABEL_PATTERN}')",
        "must be a DNS-1035 label: lowercase letters, digits and '-', starting with a letter and ending with a letter "
        "or digit (the job's headless Service takes this name)",
        ".metadata.name",
    ),
    rule(
        f"size(self.metadata.name) <= {MAX_NAME_LENGTH}",
        f"must be at most {MAX_NAME_LENGTH} characters, so that the worker hostnames <name>-worker-<index> "
        "stay within 63",
        ".metadata.name",
    ),
]


class PlacementPolicy(StrEnum):
    PACK = "Pack"
    SPREAD = "Spread"


class RestartPolicy(StrEnum):
    NEVER = "Never"
    ON_FAILURE = "OnFailure"
    EXIT_CODE = "ExitCode"


class ShardingMode(StrEnum):
    WEIGHTED = "Weighted"
    EQUAL = "Equal"
    ADAPTIVE = "Adaptive"


class SuccessPolicy(StrEnum):
    ALL_WORKERS = "AllWorkers"
    RANK_ZERO = "RankZero"


class TrainingPhase(StrEnum):
    PENDING = "Pending"
    QUEUED = "Queued"
    RUNNING = "Running"
    RESTARTING = "Restarting"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"


class Workers(ApiModel):
    """How many workers: a fixed `replicas`, or `minReplicas`..`maxReplicas` for elastic training."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                rule(
                    "has(self.replicas) != (has(self.minReplicas) && has(self.maxReplicas))",
                    "set either replicas, or both minReplicas and maxReplicas",
                ),
                rule(
                    "has(self.minReplicas) == has(self.maxReplicas)",
                    "minReplicas and maxReplicas go together",
                ),
                rule(
                    "!has(self.minReplicas) || self.minReplicas <= self.maxReplicas",
                    "minReplicas must not exceed maxReplicas",
                    ".minReplicas",
                ),
            ]
        }
    )

    replicas: int | None = Field(default=None, ge=1, le=MAX_WORKERS, description="Number of workers (fixed size).")
    min_replicas: int | None = Field(
        default=None, ge=1, le=MAX_WORKERS, description="Elastic: fewest workers the job runs with."
    )
    max_replicas: int | None = Field(
        default=None, ge=1, le=MAX_WORKERS, description="Elastic: most workers the job runs with."
    )
    nproc_per_node: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="Processes per worker pod (torchrun --nproc-per-node). Default: the worker's GPU count, or 1.",
    )


class Placement(ApiModel):
    regions: list[RegionName] = Field(
        default_factory=list,
        max_length=32,
        json_schema_extra={"x-kubernetes-list-type": "set"},
        description="Regions the job may run in (topology.kubernetes.io/region); the whole gang stays in one. "
        "Empty: any region. Each is a DNS-1123 label of at most 40 characters.",
    )
    policy: PlacementPolicy = Field(
        default=PlacementPolicy.PACK,
        description="Pack: fewest nodes and zones, best fit. Spread: one worker per node where possible.",
    )
    gang: bool = Field(
        default=True,
        description="Deprecated, no effect: every gang is placed whole (every worker's node planned and written to "
        "status before the first worker is created).",
    )


class Dataset(ApiModel):
    sharding: ShardingMode = Field(
        default=ShardingMode.WEIGHTED,
        description="Weighted: each worker's share of every batch follows its GPU's speed. Equal: same share each. "
        "Adaptive: starts as Weighted, then follows each worker's measured throughput.",
    )
    rebalance_interval_steps: int = Field(
        default=20,
        ge=1,
        le=100000,
        description="Every this many steps the workers share their measured throughput; Adaptive moves the shares.",
    )
    gpu_speeds: dict[str, Annotated[float, Field(gt=0)]] = Field(
        default_factory=dict,
        description="Relative speed per GPU product, overriding the operator's table (e.g. {H100: 3, A100: 1.5}); "
        "each above 0.",
    )


class Distillation(ApiModel):
    teacher: str = Field(
        min_length=1,
        pattern=MODEL_URI_PATTERN,
        description="The teacher's model artifact (TorchScript), as an InferenceService's model.uri: file:///path, "
        "/path, or pvc://<claim>/<path> (the claim is mounted read-only).",
    )
    temperature: float = Field(
        default=2.0,
        gt=0,
        le=100,
        description="Softens both models' outputs (above 0); the soft loss's gradient grows with it, so a high "
        "temperature may want a lower learning rate.",
    )
    alpha: float = Field(
        default=0.5, ge=0, le=1, description="Weight of the teacher's soft targets; 1 - alpha weighs the labels."
    )


class Pruning(ApiModel):
    amount: float = Field(gt=0, lt=1, description="Fraction of the weights set to zero by magnitude (0 < amount < 1).")
    structured: bool = Field(
        default=False,
        description="False: the smallest weights across all layers. True: whole output channels by L2 norm, "
        "per layer (the output layer is kept whole).",
    )
    at_fraction: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="When in training: the fraction of the steps done before pruning; training goes on with the "
        "pruned weights held at zero (1: prune the final model).",
    )


class Compression(ApiModel):
    distillation: Distillation | None = Field(
        default=None, description="Train the job's model as a student on the teacher's soft targets."
    )
    pruning: Pruning | None = Field(
        default=None, description="Magnitude pruning, made permanent in the artifact (torch.nn.utils.prune)."
    )


class Checkpoint(ApiModel):
    path: str | None = Field(default=None, min_length=1, description="Directory for checkpoints (a mounted volume).")
    interval_steps: int = Field(default=100, ge=1, description="Save every this many steps.")


class TrainingJobSpec(PodOptions):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                rule(
                    "self.restartPolicy != 'ExitCode' || (has(self.retryableExitCodes) && size(self.retryableExitCodes) > 0)",
                    "restartPolicy ExitCode needs retryableExitCodes",
                    ".retryableExitCodes",
                ),
                rule(
                    "!has(self.retryableExitCodes) || size(self.retryableExitCodes) == 0 || self.restartPolicy == 'ExitCode'",
                    "retryableExitCodes applies only to restartPolicy ExitCode",
                    ".retryableExitCodes",
                ),
                rule(
                    "!has(self.workers.nprocPerNode) || self.resources.gpus == 0 "
                    "|| self.workers.nprocPerNode <= self.resources.gpus",
                    "workers.nprocPerNode must not exceed resources.gpus",
                    ".workers.nprocPerNode",
                ),
                rule(
                    "oldSelf.suspend || self.suspend || (self.image == oldSelf.image"
                    " && self.workers == oldSelf.workers && self.resources == oldSelf.resources"
                    " && self.placement == oldSelf.placement"
                    " && (has(self.command) ? self.command : []) == (has(oldSelf.command) ? oldSelf.command : [])"
                    " && (has(self.args) ? self.args : []) == (has(oldSelf.args) ? oldSelf.args : []))",
                    "image, command, args, workers, resources and placement can only change while the job is "
                    "suspended (set spec.suspend: true first)",
                ),
                rule(
                    "!has(self.volumeMounts) || self.volumeMounts.all(m, has(self.volumes) "
                    "&& self.volumes.exists(v, v.name == m.name))",
                    "each volumeMounts[].name must be the name of one of spec.volumes",
                    ".volumeMounts",
                ),
                SCRATCH_VOLUME_RULE,
                rule(
                    "!has(self.compression.distillation) || !self.compression.distillation.teacher.startsWith('pvc://')"
                    f" || !has(self.volumes) || !self.volumes.exists(v, v.name == '{TEACHER_VOLUME}')",
                    f"the volume name '{TEACHER_VOLUME}' is taken by the teacher's PVC (compression.distillation"
                    ".teacher pvc://...)",
                    ".volumes",
                ),
            ]
        }
    )

    image: Image = Field(default=DEFAULT_TRAINING_IMAGE, description="Container image of every worker (no spaces).")
    command: list[str] = Field(
        default_factory=list,
        description="Entrypoint. Default: python -m modelfleet.runtime.train.",
    )
    args: list[str] = Field(default_factory=list, description="Arguments to the entrypoint.")
    env: list[EnvVar] = Field(default_factory=list, description="Extra environment variables for every worker.")
    workers: Workers = Field(description="Number of workers.")
    resources: Resources = Field(default_factory=Resources, description="What each worker asks for.")
    placement: Placement = Field(default_factory=Placement, description="Where the gang may run and how to pack it.")
    restart_policy: RestartPolicy = Field(
        default=RestartPolicy.ON_FAILURE,
        description="Never: first failure fails the job. OnFailure: restart the whole gang. "
        "ExitCode: restart only on retryableExitCodes.",
    )
    retryable_exit_codes: list[int] = Field(
        default_factory=list, max_length=64, description="Exit codes that restart the gang (restartPolicy ExitCode)."
    )
    backoff_limit: int = Field(default=3, ge=0, le=1000, description="Gang restarts before the job fails.")
    success_policy: SuccessPolicy = Field(
        default=SuccessPolicy.ALL_WORKERS,
        description="AllWorkers: succeeded when every worker exits 0. RankZero: when worker 0 exits 0.",
    )
    active_deadline_seconds: int | None = Field(
        default=None, ge=1, description="Fail the job when it has run this long since it started."
    )
    ttl_seconds_after_finished: int | None = Field(
        default=None, ge=0, description="Delete the job this long after it succeeded or failed."
    )
    suspend: bool = Field(default=False, description="True deletes the workers and keeps the job; false resumes it.")
    priority_class_name: str | None = Field(
        default=None,
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
        description="A PriorityClass (scheduling.k8s.io/v1) whose value orders the GPU queue and decides who may "
        "preempt whom; its preemptionPolicy Never makes the job wait instead of preempting. Default: the "
        "cluster's globalDefault class, else 0.",
    )
    master_port: int = Field(
        default=29500, ge=1024, le=65535, description="Port of the rendezvous (MASTER_PORT) on worker 0."
    )
    dataset: Dataset = Field(default_factory=Dataset, description="How the data is split among workers.")
    checkpoint: Checkpoint = Field(default_factory=Checkpoint, description="Where and how often to checkpoint.")
    output_path: str | None = Field(
        default=None, min_length=1, description="Where the final model artifact is written (a mounted volume)."
    )
    compression: Compression = Field(
        default_factory=Compression, description="Distillation and pruning while training."
    )


class WorkerPlacement(ApiModel):
    model_config = ConfigDict(extra="ignore")

    worker: str = Field(description="Pod name.")
    node: str = Field(description="Node the worker is pinned to.")
    region: str = Field(default="", description="Region of the node.")
    zone: str = Field(default="", description="Zone of the node.")
    gpu_type: str = Field(default="", description="GPU product of the node.")
    shard_weight: float = Field(default=1.0, description="Share of each batch this worker was planned to take.")
    current_share: float | None = Field(
        default=None, description="Share of each batch it takes now, as rank 0 last reported (Adaptive moves it)."
    )
    samples_per_second: float | None = Field(
        default=None, description="Its measured throughput (samples per second of its own compute, smoothed)."
    )


class WorkerCounts(ApiModel):
    model_config = ConfigDict(extra="ignore")

    desired: int = Field(default=0, description="Workers the job should have.")
    pending: int = Field(default=0, description="Workers not yet running.")
    running: int = Field(default=0, description="Workers running.")
    succeeded: int = Field(default=0, description="Workers that exited 0.")
    failed: int = Field(default=0, description="Workers that failed.")


class Progress(ApiModel):
    model_config = ConfigDict(extra="ignore")

    step: int | None = Field(default=None, description="Global step reported by rank 0.")
    epoch: int | None = Field(default=None, description="Epoch reported by rank 0.")
    loss: float | None = Field(default=None, description="Latest training loss.")
    samples_per_second: float | None = Field(default=None, description="Throughput of the whole gang.")
    updated_at: str | None = Field(default=None, description="When rank 0 reported it.")


class QueueStatus(ApiModel):
    model_config = ConfigDict(extra="ignore")

    position: int = Field(description="1 + the waiting jobs ahead of it that compete for the same regions.")
    reason: str = Field(
        description="Capacity (does not fit now), Reserved (fits, but the GPUs are held for jobs ahead), "
        "Preempting (waits for the jobs it preempted to stop), Draining (its previous workers are stopping), "
        "PriorityClassNotFound, QuotaExceeded (its namespace's GPUQuota is used up)."
    )
    message: str = Field(default="", description="Why it waits, for a person.")
    reserved_nodes: list[str] = Field(default_factory=list, description="Nodes whose GPUs are held for it.")


class Artifact(ApiModel):
    """The model a succeeded job made: what an InferenceService with model.fromTrainingJob serves."""

    model_config = ConfigDict(extra="ignore")

    uri: str = Field(description="Where it is: pvc://<claim>/<path> when outputPath is on a claim, else file://.")
    digest: str | None = Field(default=None, description="sha256:<hex> over the artifact's files.")
    metrics: dict[str, float] = Field(default_factory=dict, description="Rank 0's final metrics (loss, accuracy).")
    job_uid: str | None = Field(default=None, description="The uid of the job run that made it.")
    created_at: str | None = Field(default=None, description="When the run that made it succeeded.")


class TrainingJobStatus(ApiModel):
    model_config = ConfigDict(extra="ignore")

    phase: TrainingPhase | None = Field(default=None, description="Where the job is in its life.")
    conditions: list[Condition] = Field(default_factory=list, description="Conditions of the job.")
    observed_generation: int | None = Field(default=None, description="The spec generation last acted on.")
    workers: WorkerCounts | None = Field(default=None, description="Workers by state.")
    ready: str | None = Field(default=None, description="Running/desired workers, for kubectl get.")
    gpus: int | None = Field(default=None, description="GPUs the gang holds or asks for.")
    region: str | None = Field(default=None, description="Region the gang is placed in.")
    placement: list[WorkerPlacement] = Field(default_factory=list, description="Worker to node.")
    restarts: int = Field(default=0, description="Gang restarts so far.")
    start_time: str | None = Field(default=None, description="When the workers were first placed.")
    completion_time: str | None = Field(default=None, description="When the job succeeded or failed.")
    progress: Progress | None = Field(default=None, description="Training progress reported by rank 0.")
    artifact: Artifact | None = Field(
        default=None, description="The model artifact of the succeeded run (rank 0's termination message)."
    )
    queue: QueueStatus | None = Field(default=None, description="Where the job waits in the GPU queue (phase Queued).")

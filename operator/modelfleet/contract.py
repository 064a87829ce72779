"""The names the operator and what it runs agree on: env vars, labels, annotations and metric names.

The operator's builders write these env vars and labels into the pods; the runtime (`modelfleet.runtime.train`,
`modelfleet.runtime.serve`) reads the env; the runtime exports these metrics, which the operator's progress scraper
and autoscaler read. The chart's settings for the operator itself are here too. A value changed here changes the
wire format between an operator and the images it runs.

Constants only, with no import of its own, so either side can read it without loading the other's code (the
package's `__init__` still loads the Python client, `modelfleet.deploy`/`train`, and with it pydantic and kubernetes).
"""

# Labels and gates on everything the operator creates (the gateway and the operator's indexes select by them).
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "modelfleet"
JOB_NAME_LABEL = "modelfleet.dev/job-name"
SERVICE_NAME_LABEL = "modelfleet.dev/service-name"
REPLICA_INDEX_LABEL = "modelfleet.dev/replica-index"
GANG_ATTEMPT_LABEL = "modelfleet.dev/attempt"
"""The gang attempt a worker belongs to (`status.restarts` when it was made)."""
REGION_NAME_LABEL = "modelfleet.dev/region"
GANG_SCHEDULING_GATE = "modelfleet.dev/gang"

# Annotations.
REVISION_ANNOTATION = "modelfleet.dev/revision"
"""On a model server's pod template: the hash of what it serves; pods of another revision are the old rollout's."""

# Training workers: the operator writes these (beside torch.distributed's own RANK, WORLD_SIZE, MASTER_ADDR...).
SHARD_WEIGHTS_ENV = "MODELFLEET_SHARD_WEIGHTS"
"""Comma-separated static data shares, one per pod in replica-index order."""
REPLICA_INDEX_ENV = "MODELFLEET_REPLICA_INDEX"
SHARDING_ENV = "MODELFLEET_SHARDING"
REBALANCE_STEPS_ENV = "MODELFLEET_REBALANCE_STEPS"
METRICS_PORT_ENV = "MODELFLEET_METRICS_PORT"
"""Where rank 0 serves its progress."""
TRAINING_METRICS_PORT = 9400
"""The port the operator gives rank 0's progress endpoint (a container port named `metrics`)."""
CHECKPOINT_DIR_ENV = "MODELFLEET_CHECKPOINT_DIR"
CHECKPOINT_INTERVAL_ENV = "MODELFLEET_CHECKPOINT_INTERVAL"
OUTPUT_DIR_ENV = "MODELFLEET_OUTPUT_DIR"
DISTILL_TEACHER_ENV = "MODELFLEET_DISTILL_TEACHER"
DISTILL_TEMPERATURE_ENV = "MODELFLEET_DISTILL_TEMPERATURE"
DISTILL_ALPHA_ENV = "MODELFLEET_DISTILL_ALPHA"
PRUNE_AMOUNT_ENV = "MODELFLEET_PRUNE_AMOUNT"
PRUNE_STRUCTURED_ENV = "MODELFLEET_PRUNE_STRUCTURED"
PRUNE_AT_ENV = "MODELFLEET_PRUNE_AT"
# ... and these only for the user's own training code (the runtime does not read them):
JOB_NAME_ENV = "MODELFLEET_JOB_NAME"
NAMESPACE_ENV = "MODELFLEET_NAMESPACE"
ATTEMPT_ENV = "MODELFLEET_ATTEMPT"
POD_NAME_ENV = "MODELFLEET_POD_NAME"
# Training settings a user may set in spec.env; nothing writes them.
COLLECTIVE_TIMEOUT_ENV = "MODELFLEET_COLLECTIVE_TIMEOUT"
DEBUG_DELAY_PER_SAMPLE_ENV = "MODELFLEET_DEBUG_DELAY_PER_SAMPLE"

# Model servers: the operator writes these.
MODEL_PATH_ENV = "MODELFLEET_MODEL_PATH"
MODEL_NAME_ENV = "MODELFLEET_MODEL_NAME"
MODEL_FORMAT_ENV = "MODELFLEET_MODEL_FORMAT"
MODEL_DIGEST_ENV = "MODELFLEET_MODEL_DIGEST"
"""The digest of a catalog model, so a new digest is a new revision even at the same path (the server ignores it)."""
QUANTIZATION_ENV = "MODELFLEET_QUANTIZATION"
MAX_BATCH_SIZE_ENV = "MODELFLEET_MAX_BATCH_SIZE"
MAX_DELAY_MS_ENV = "MODELFLEET_MAX_DELAY_MS"
PORT_ENV = "MODELFLEET_PORT"
GRPC_PORT_ENV = "MODELFLEET_GRPC_PORT"
DEVICE_ENV = "MODELFLEET_DEVICE"
ALLOW_PICKLE_ENV = "MODELFLEET_ALLOW_PICKLE"
# Server settings a user may set in spec.env; nothing writes them.
MODEL_FACTORIES_ENV = "MODELFLEET_MODEL_FACTORIES"
"""Comma-separated module prefixes a model's `module:factory` may be imported from."""
MAX_BODY_BYTES_ENV = "MODELFLEET_MAX_BODY_BYTES"
MAX_QUEUE_ENV = "MODELFLEET_MAX_QUEUE"
REQUEST_TIMEOUT_SECONDS_ENV = "MODELFLEET_REQUEST_TIMEOUT_SECONDS"
SERVER_WORKERS_ENV = "MODELFLEET_WORKERS"
"""Server processes sharing the ports."""

# The operator's own settings: the chart writes these into the operator's Deployment (two names are the runtime's
# too, with the same sense in another process).
OPERATOR_METRICS_PORT_ENV = "MODELFLEET_METRICS_PORT"
OPERATOR_WORKERS_ENV = "MODELFLEET_WORKERS"
"""Reconcile threads."""
GPU_SPEEDS_ENV = "MODELFLEET_GPU_SPEEDS"
POLICY_ALLOW_HOST_PATH_ENV = "MODELFLEET_POLICY_ALLOW_HOST_PATH"
POLICY_ALLOW_PICKLED_MODELS_ENV = "MODELFLEET_POLICY_ALLOW_PICKLED_MODELS"
POLICY_PROMETHEUS_URLS_ENV = "MODELFLEET_POLICY_PROMETHEUS_URLS"
"""Space-separated base URLs (a URL has no spaces: the CRD's pattern for prometheusUrl refuses them)."""
GATEWAY_URL_ENV = "MODELFLEET_GATEWAY_URL"
GATEWAY_METRICS_ENV = "MODELFLEET_GATEWAY_METRICS_URLS"

# Where a process binds and leaves its termination message: the dev cluster's pod runner writes these, to give each
# pod its own loopback IP and a local file for the message; a kubelet leaves them unset.
HOST_ENV = "MODELFLEET_HOST"
METRICS_HOST_ENV = "MODELFLEET_METRICS_HOST"
TERMINATION_LOG_ENV = "MODELFLEET_TERMINATION_LOG"

# Training progress, served by rank 0 and scraped by the operator into status.progress.
TRAINING_STEP = "modelfleet_training_step"
TRAINING_EPOCH = "modelfleet_training_epoch"
TRAINING_LOSS = "modelfleet_training_loss"
TRAINING_SAMPLES_PER_SECOND = "modelfleet_training_samples_per_second"
TRAINING_UPDATED = "modelfleet_training_updated_timestamp_seconds"
"""Unix time of the last report; 0 until the first one."""
TRAINING_RANK = "modelfleet_training_rank"
TRAINING_WORKER_SHARE = "modelfleet_training_worker_share"
TRAINING_WORKER_SAMPLES_PER_SECOND = "modelfleet_training_worker_samples_per_second"
TRAINING_WORKER_LABEL = "worker"
"""Label of the per-worker gauges: the worker pod's replica index."""

# Model server metrics, exported by the server and read by the autoscaler (families; a counter's sample adds _total,
# a histogram's _bucket, _sum and _count).
SERVER_REQUESTS = "modelfleet_requests"
SERVER_INFLIGHT = "modelfleet_inflight_requests"
SERVER_LATENCY = "modelfleet_request_duration_seconds"
SERVER_BATCH_SIZE = "modelfleet_batch_size"
SERVER_MODEL_SIZE = "modelfleet_model_size_bytes"
SERVER_QUANTIZATION_INFO = "modelfleet_quantization_info"
SERVER_FREEZING_INFO = "modelfleet_freezing_info"
SERVER_BATCH_LIMIT = "modelfleet_batch_limit_rows"
SERVER_REJECTED = "modelfleet_rejected_requests"

# Gateway metrics, exported by the gateway per namespace, service and region, and read by the operator's
# `source: Gateway` (modelfleet.inference.gateway_load).
GATEWAY_INFLIGHT = "modelfleet_gateway_inflight_requests"
GATEWAY_QUEUED = "modelfleet_gateway_queued_requests"
GATEWAY_REDIRECTED = "modelfleet_gateway_redirected_requests"
GATEWAY_REQUESTS = "modelfleet_gateway_requests"
GATEWAY_LATENCY = "modelfleet_gateway_request_duration_seconds"

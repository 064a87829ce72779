"""GPUQuota: how many GPUs one namespace's TrainingJobs may hold at once, and whether they may borrow idle quota.

Cluster-scoped and named after the namespace it limits: the name makes "one quota per namespace" hold by
construction (no second object can exist), and only whoever may write cluster-scoped objects (a cluster admin,
not the namespace's own users) can change it.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import ConfigDict, Field

from modelfleet.api.common import DNS_LABEL_PATTERN, ApiModel, rule

MAX_GPU_TYPES = 16

NAME_RULES = [
    rule(
        f"self.metadata.name.matches('{DNS_LABEL_PATTERN}') && size(self.metadata.name) <= 63",
        "must be the name of the namespace it limits (a DNS label)",
        ".metadata.name",
    )
]


class GPUQuotaSpec(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                rule(
                    "has(self.gpus) || (has(self.gpusPerType) && size(self.gpusPerType) > 0)",
                    "set gpus, gpusPerType or both",
                ),
            ]
        }
    )

    gpus: int | None = Field(
        default=None, ge=0, description="GPUs of any type the namespace's TrainingJobs may hold at once."
    )
    gpus_per_type: dict[str, Annotated[int, Field(ge=0)]] = Field(
        default_factory=dict,
        max_length=MAX_GPU_TYPES,
        json_schema_extra={"maxProperties": MAX_GPU_TYPES},
        description="GPUs of one type (matched like resources.gpuType, e.g. A100) the namespace may hold at once.",
    )
    borrowing: bool = Field(
        default=False,
        description="Whether its jobs may also use quota that other namespaces' GPUQuotas leave idle; borrowed "
        "GPUs are taken back (the borrowing jobs preempted, newest first) when a lender needs them.",
    )

"""The gateway's settings: the routing tables and limits the chart's values give it (a YAML file), and flags."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

DEFAULT_REGION_HEADER = "X-Client-Region"


class Ejection(BaseModel):
    """Outlier detection per replica: connection refused ejects at once, other failures after `consecutive`."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    consecutive_failures: int = Field(default=3, ge=1, description="5xx or timeouts in a row that eject a replica.")
    base_seconds: float = Field(default=5.0, gt=0, description="First ejection; doubles each time, up to max.")
    max_seconds: float = Field(default=60.0, gt=0, description="Longest ejection.")
    probe_interval_seconds: float = Field(
        default=0.25, gt=0, description="How often a new or returning replica's /v2/health/ready is probed."
    )


class GatewayConfig(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    region: str = Field(default="", description="The gateway's own region: clients no other rule places are here.")
    region_header: str = Field(
        default=DEFAULT_REGION_HEADER, min_length=1, description="Header naming the client's region."
    )
    client_cidrs: dict[str, str] = Field(
        default_factory=dict, description="Client network (CIDR) -> region; the longest matching prefix wins."
    )
    latency_ms: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="Client region -> serving region -> expected milliseconds (symmetric when one way is missing).",
    )
    cross_region_ms: float = Field(
        default=50.0, ge=0, description="Latency of a pair missing from latencyMs (same region: 0)."
    )
    ewma_alpha: float = Field(default=0.2, gt=0, le=1, description="Weight of a new latency measurement.")
    ewma_half_life_seconds: float = Field(
        default=30.0, gt=0, description="A region's measured excess latency halves every this many seconds unseen."
    )
    spill_factor: float = Field(
        default=1.5, gt=0, description="A region spills above target x spillFactor in-flight requests per replica."
    )
    default_target: float = Field(
        default=4.0, gt=0, description="Concurrency per replica for services that autoscale on another metric."
    )
    queue_size: int = Field(default=256, ge=0, description="Requests the activator holds per service.")
    queue_timeout_seconds: float = Field(default=120.0, gt=0, description="Longest a request waits for a replica.")
    upstream_timeout_seconds: float = Field(default=30.0, gt=0, description="One attempt's limit at a replica.")
    ejection: Ejection = Field(default_factory=Ejection)
    namespaces: list[str] = Field(default_factory=list, description="Namespaces to serve; empty: all.")
    metrics_port: int = Field(
        default=0, ge=0, le=65535, description="Serve /metrics on this port only (0: on the traffic port)."
    )

    @field_validator("client_cidrs")
    @classmethod
    def _networks(cls, value: dict[str, str]) -> dict[str, str]:
        for cidr in value:
            ipaddress.ip_network(cidr, strict=False)  # ValueError names the bad entry
        return value

    @classmethod
    def load(cls, path: Path | None, **overrides: object) -> GatewayConfig:
        """The file's settings (YAML or JSON, camelCase), then the flags that were given."""
        data = (yaml.safe_load(path.read_text()) or {}) if path else {}
        given = {k: v for k, v in overrides.items() if v not in (None, [], "")}
        return cls.model_validate({**data, **given})

"""The gateway's Prometheus series, per service and region. The operator's `source: Gateway` reads in-flight,
queued and redirected requests from here (modelfleet.inference.gateway_load)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LABELS = ["namespace", "service", "region"]
INFLIGHT = "modelfleet_gateway_inflight_requests"
QUEUED = "modelfleet_gateway_queued_requests"
REDIRECTED = "modelfleet_gateway_redirected_requests"
REQUESTS = "modelfleet_gateway_requests"
LATENCY = "modelfleet_gateway_request_duration_seconds"


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter(REQUESTS, "Requests answered, by the region that served them and status code.",
                                [*LABELS, "code"], registry=r)  # fmt: skip
        self.inflight = Gauge(INFLIGHT, "Requests in flight to the region's replicas.", LABELS, registry=r)
        self.queued = Gauge(QUEUED, "Requests the activator holds, by the region they wait for.", LABELS, registry=r)
        self.redirected = Gauge(
            REDIRECTED, "Requests in flight elsewhere because this region, their nearest, has no ready replica.",
            LABELS, registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            LATENCY, "Request latency through the gateway, by the region that served it.", LABELS, registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )  # fmt: skip
        self.retries = Counter("modelfleet_gateway_retries", "Attempts retried after a failure.", LABELS, registry=r)
        self.failovers = Counter(
            "modelfleet_gateway_failovers", "Retries sent to another region than the failed one.", LABELS, registry=r
        )
        self.spills = Counter(
            "modelfleet_gateway_spills", "Requests sent past this, their nearest serving region, as it was saturated.",
            LABELS, registry=r,
        )  # fmt: skip
        self.ejections = Counter("modelfleet_gateway_ejections", "Replicas ejected as outliers.", LABELS, registry=r)
        self.activations = Counter(
            "modelfleet_gateway_activations", "Requests held for a region with no ready replica.", LABELS, registry=r
        )
        self.rejected = Counter(
            "modelfleet_gateway_rejected", "Requests refused: queue full or no replica in time.",
            [*LABELS, "reason"], registry=r,
        )  # fmt: skip

"""The gateway's Prometheus series, per service and region. Those the operator's `source: Gateway` reads
(modelfleet.inference.gateway_load: in-flight, queued, redirected, requests, latency) are named in modelfleet.contract."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from modelfleet.contract import (
    GATEWAY_INFLIGHT,
    GATEWAY_LATENCY,
    GATEWAY_QUEUED,
    GATEWAY_REDIRECTED,
    GATEWAY_REQUESTS,
)

LABELS = ["namespace", "service", "region"]


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter(GATEWAY_REQUESTS, "Requests answered, by the region that served them and status code.",
                                [*LABELS, "code"], registry=r)  # fmt: skip
        self.inflight = Gauge(GATEWAY_INFLIGHT, "Requests in flight to the region's replicas.", LABELS, registry=r)
        self.queued = Gauge(
            GATEWAY_QUEUED, "Requests the activator holds, by the region they wait for.", LABELS, registry=r
        )
        self.redirected = Gauge(
            GATEWAY_REDIRECTED, "Requests in flight elsewhere because this region, their nearest, has no ready replica.",
            LABELS, registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            GATEWAY_LATENCY, "Request latency through the gateway, by the region that served it.", LABELS, registry=r,
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
        self._series: dict[tuple[str, str, str], RegionSeries] = {}

    def series(self, namespace: str, service: str, region: str) -> RegionSeries:
        """One service's series in one region, resolved once (a `labels()` lookup per request costs a lock and a
        dict key of strings each time)."""
        key = (namespace, service, region)
        if (found := self._series.get(key)) is None:
            found = self._series[key] = RegionSeries(self, key)
        return found


class RegionSeries:
    def __init__(self, metrics: GatewayMetrics, labels: tuple[str, str, str]) -> None:
        self._metrics, self._labels = metrics, labels
        self.inflight = 0
        """Requests in flight here: a plain count the gauge reads at scrape time (no lock per request)."""
        metrics.inflight.labels(*labels).set_function(lambda: self.inflight)
        self.queued = metrics.queued.labels(*labels)
        self.redirected = metrics.redirected.labels(*labels)
        self.latency = metrics.latency.labels(*labels)
        self.retries = metrics.retries.labels(*labels)
        self.failovers = metrics.failovers.labels(*labels)
        self.spills = metrics.spills.labels(*labels)
        self.ejections = metrics.ejections.labels(*labels)
        self.activations = metrics.activations.labels(*labels)
        self._answered: dict[int, Counter] = {}

    def answered(self, status: int) -> Counter:
        if (child := self._answered.get(status)) is None:
            child = self._answered[status] = self._metrics.requests.labels(*self._labels, str(status))
        return child

    def rejected(self, reason: str) -> Counter:
        return self._metrics.rejected.labels(*self._labels, reason)

"""The gateway's HTTP side (thin): V2 paths in, one forwarded attempt (plus one retry) out, via aiohttp's pool.

Every decision is made elsewhere: the client's region (regions.py), the region (ranking.py via router.py), the
replica's health (outlier.py), waiting for a replica (activator.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest, start_http_server
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from modelfleet.gateway import watch
from modelfleet.gateway.activator import Activator, QueueFull
from modelfleet.gateway.config import GatewayConfig
from modelfleet.gateway.metrics import GatewayMetrics
from modelfleet.gateway.regions import client_region
from modelfleet.gateway.router import Router
from modelfleet.gateway.store import Replica, ServiceInfo, Store

HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "transfer-encoding",
     "upgrade", "host", "content-length"}
)  # fmt: skip
SERVED_BY = "X-Modelfleet-Region"
PROBE_TIMEOUT = aiohttp.ClientTimeout(total=1.0)


@dataclass
class Attempt:
    response: Response | None
    """The replica's answer; None when none came (connection error, timeout)."""
    retry: bool
    error: str = ""


class Gateway:
    def __init__(self, config: GatewayConfig, store: Store | None = None) -> None:
        self.config = config
        self.store = store or Store(config.namespaces)
        self.router = Router(config, self.store)
        self.activator = Activator(config.queue_size, config.queue_timeout_seconds)
        self.metrics = GatewayMetrics()
        self.client: aiohttp.ClientSession | None = None
        self.store.listeners.append(self._store_changed)

    def _store_changed(self, key: tuple[str, str]) -> None:
        self.router.sync(key)
        self.activator.wake(key)

    def labels(self, service: ServiceInfo, region: str) -> dict[str, str]:
        return {"namespace": service.namespace, "service": service.name, "region": region}

    async def forward(self, request: Request) -> Response:
        model = request.path_params["model"]
        service = self.store.service_for_model(model)
        if service is None:
            return JSONResponse({"error": f"unknown model '{model}'"}, status_code=404)
        where = client_region(
            request.headers.get(self.config.region_header),
            request.client.host if request.client else None,
            self.config.client_cidrs,
            self.config.region,
        )
        body = await request.body()
        route = self.router.route(service, where)
        if route.primary is None:
            if not request.url.path.endswith("/infer"):  # metadata and readiness say so; only inference waits
                return JSONResponse({"error": f"no replica of {service.name} is ready"}, status_code=503)
            if (refused := await self._hold(service, route.wanted or service.regions[0], where)) is not None:
                return refused
            route = self.router.route(service, where)
        assert route.primary is not None and route.fallback is not None
        if route.spilled and route.nearest:
            self.metrics.spills.labels(**self.labels(service, route.nearest)).inc()
        redirected = self.metrics.redirected.labels(**self.labels(service, route.cold)) if route.cold else None
        if redirected:
            redirected.inc()
        try:
            first = self.router.pick(service, route.primary)
            attempt = await self._attempt(service, first, request, body) if first else Attempt(None, True)
            if not attempt.retry:
                return attempt.response  # type: ignore[return-value]
            self.metrics.retries.labels(**self.labels(service, route.primary)).inc()
            second = self.router.pick(service, route.fallback, avoid=first)
            if second is None and route.fallback != route.primary:
                second = self.router.pick(service, route.primary, avoid=first)
            if second is None:
                return attempt.response or _bad_gateway(attempt.error or "no replica left to retry on")
            if second.region != route.primary:
                self.metrics.failovers.labels(**self.labels(service, route.primary)).inc()
            retried = await self._attempt(service, second, request, body)
            return retried.response or attempt.response or _bad_gateway(retried.error)
        finally:
            if redirected:
                redirected.dec()

    async def _hold(self, service: ServiceInfo, region: str, where: str) -> Response | None:
        """Holds the request until a region can serve it; a refusal response when it cannot be held or waited
        too long."""
        labels = self.labels(service, region)
        self.metrics.activations.labels(**labels).inc()
        queued = self.metrics.queued.labels(**labels)
        queued.inc()
        try:
            ready = await self.activator.wait(
                service.key, region, lambda: self.router.route(service, where).primary is not None
            )
        except QueueFull as full:
            self.metrics.rejected.labels(**labels, reason="QueueFull").inc()
            return JSONResponse({"error": str(full)}, status_code=503, headers={"Retry-After": "1"})
        finally:
            queued.dec()
        if ready:
            return None
        self.metrics.rejected.labels(**labels, reason="Timeout").inc()
        message = f"no replica of {service.name} became ready in {self.config.queue_timeout_seconds:g}s"
        return JSONResponse({"error": message}, status_code=503, headers={"Retry-After": "1"})

    async def _attempt(self, service: ServiceInfo, replica: Replica, request: Request, body: bytes) -> Attempt:
        assert self.client is not None
        labels = self.labels(service, replica.region)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        query = f"?{request.url.query}" if request.url.query else ""
        url = f"http://{replica.address}{request.url.path}{query}"
        inflight = self.metrics.inflight.labels(**labels)
        self.router.inflight[replica] += 1
        inflight.inc()
        started = time.monotonic()
        try:
            async with self.client.request(
                request.method, url, data=body, headers=headers, allow_redirects=False
            ) as upstream:
                content = await upstream.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            refused = isinstance(exc, aiohttp.ClientConnectorError)
            if self.router.outliers.failed(replica, time.monotonic(), refused=refused):
                self.metrics.ejections.labels(**labels).inc()
            return Attempt(None, True, f"{replica.region}: {type(exc).__name__}")
        finally:
            self.router.inflight[replica] -= 1
            inflight.dec()
        elapsed = time.monotonic() - started
        self.metrics.requests.labels(**labels, code=str(upstream.status)).inc()
        self.metrics.latency.labels(**labels).observe(elapsed)
        headers = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP | {"content-encoding"}}
        response = Response(content, upstream.status, {**headers, SERVED_BY: replica.region})
        if upstream.status >= 500:
            if self.router.outliers.failed(replica, time.monotonic()):
                self.metrics.ejections.labels(**labels).inc()
            return Attempt(response, True)
        self.router.measured_answer(replica, elapsed)
        return Attempt(response, False)

    async def probe_forever(self) -> None:
        """Probes new and ejected replicas' /v2/health/ready; one that passes gets traffic (waiters wake)."""
        assert self.client is not None
        interval = self.config.ejection.probe_interval_seconds
        while True:
            due = [r for r in self.router.outliers.due(time.monotonic()) if isinstance(r, Replica)]
            results = await asyncio.gather(*(self._probe(r) for r in due))
            for replica, ok in zip(due, results, strict=True):
                self.router.outliers.probed(replica, ok, time.monotonic())
                if ok:
                    self.activator.wake((replica.namespace, replica.service))
            await asyncio.sleep(interval)

    async def _probe(self, replica: Replica) -> bool:
        assert self.client is not None
        try:
            async with self.client.get(f"http://{replica.address}/v2/health/ready", timeout=PROBE_TIMEOUT) as answer:
                return answer.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False


def _bad_gateway(error: str) -> Response:
    return JSONResponse({"error": f"no replica answered: {error}"}, status_code=502)


def build_app(config: GatewayConfig, gateway: Gateway | None = None, watch_cluster: bool = True) -> Starlette:
    gw = gateway or Gateway(config)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=1024, limit_per_host=0, use_dns_cache=True)
        timeout = aiohttp.ClientTimeout(
            total=config.upstream_timeout_seconds, connect=min(2.0, config.upstream_timeout_seconds)
        )
        stop = threading.Event()
        async with aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False) as c:
            gw.client = c
            prober = asyncio.create_task(gw.probe_forever(), name="probe")
            if watch_cluster:
                watch.start(gw.store, config.namespaces, stop)
            metrics_server = (
                start_http_server(config.metrics_port, registry=gw.metrics.registry)[0] if config.metrics_port else None
            )
            try:
                yield
            finally:
                stop.set()
                prober.cancel()
                if metrics_server:
                    metrics_server.shutdown()

    async def live(_: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(_: Request) -> Response:
        synced = all(gw.store.synced.values())
        return JSONResponse({"ready": synced}, status_code=200 if synced else 503)

    async def server_metadata(_: Request) -> Response:
        return JSONResponse({"name": "modelfleet-gateway", "version": "v2", "extensions": []})

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(gw.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    model = "/v2/models/{model}"
    routes = [
        Route("/v2", server_metadata),
        Route("/v2/health/live", live),
        Route("/v2/health/ready", ready),
        *([] if config.metrics_port else [Route("/metrics", metrics)]),
        *(
            Route(f"{model}{version}{tail}", gw.forward, methods=methods)
            for version in ("", "/versions/{version}")
            for tail, methods in (("", ["GET"]), ("/ready", ["GET"]), ("/infer", ["POST"]))
        ),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.gateway = gw
    return app

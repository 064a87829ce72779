"""The gateway's HTTP side (thin): V2 paths in, one forwarded attempt (plus one retry) out, via aiohttp's pool.

Every decision is made elsewhere: the client's region (regions.py), the region (ranking.py via router.py), the
replica's health (outlier.py), waiting for a replica (activator.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest, start_http_server
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match, Route
from starlette.types import Receive, Scope, Send
from yarl import URL

from modelfleet.gateway import watch
from modelfleet.gateway.activator import Activator, QueueFull
from modelfleet.gateway.config import GatewayConfig
from modelfleet.gateway.metrics import GatewayMetrics, RegionSeries
from modelfleet.gateway.regions import client_region
from modelfleet.gateway.router import Router
from modelfleet.gateway.store import Replica, ServiceInfo, Store

HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te", b"trailer",
     b"transfer-encoding", b"upgrade", b"host", b"content-length"}
)  # fmt: skip
"""Headers of one connection, not of the request or answer: not passed on (lengths are set from the body)."""
SERVED_BY = b"x-modelfleet-region"
PROBE_TIMEOUT = aiohttp.ClientTimeout(total=1.0)
UPSTREAM_CONNECTIONS = 4096


@dataclass(frozen=True)
class Incoming:
    """A client's request as it is passed on: method, path and query as sent, headers less hop-by-hop, body."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    may_wait: bool
    """Inference may wait for a replica; metadata and readiness are answered at once."""


@dataclass(frozen=True)
class Answer:
    """A replica's answer as the client gets it (an ASGI response: the body untouched, as read)."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        await send({"type": "http.response.body", "body": self.body})


@dataclass
class Attempt:
    response: Answer | None
    """The replica's answer; None when none came (connection error, timeout)."""
    retry: bool
    error: str = ""


async def read_body(receive: Receive) -> bytes | None:
    """The request's body; None when the client went away first."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


class Gateway:
    """The model paths, as an ASGI app of their own (no per-request Request or Response objects)."""

    def __init__(self, config: GatewayConfig, store: Store | None = None) -> None:
        self.config = config
        self.store = store or Store(config.namespaces)
        self.router = Router(config, self.store)
        self.activator = Activator(config.queue_size, config.queue_timeout_seconds)
        self.metrics = GatewayMetrics()
        self.client: aiohttp.ClientSession | None = None
        self.store.listeners.append(self._store_changed)
        self._region_header = config.region_header.lower().encode("latin-1")

    def _store_changed(self, key: tuple[str, str]) -> None:
        self.router.sync(key)
        self.activator.wake(key)

    def series(self, service: ServiceInfo, region: str) -> RegionSeries:
        return self.metrics.series(service.namespace, service.name, region)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        model = scope["path_params"]["model"]
        service = self.store.service_for_model(model)
        if service is None:
            await JSONResponse({"error": f"unknown model '{model}'"}, status_code=404)(scope, receive, send)
            return
        header, headers = None, []
        for name, value in scope["headers"]:
            if name == self._region_header:
                header = value.decode("latin-1")
            if name not in HOP_BY_HOP:
                headers.append((name.decode("latin-1"), value.decode("latin-1")))
        client = scope.get("client")
        where = client_region(header, client[0] if client else None, self.config.client_cidrs, self.config.region)
        if (body := await read_body(receive)) is None:
            return
        path = scope.get("raw_path") or scope["path"].encode()
        query = scope.get("query_string")
        target = (path + b"?" + query if query else path).decode("latin-1")
        incoming = Incoming(scope["method"], target, headers, body, scope["path"].endswith("/infer"))
        response = await self.forward(service, where, incoming)
        await response(scope, receive, send)

    async def forward(self, service: ServiceInfo, where: str, request: Incoming) -> Answer | Response:
        route = self.router.route(service, where)
        if route.primary is None:
            if not request.may_wait:
                return JSONResponse({"error": f"no replica of {service.name} is ready"}, status_code=503)
            if (refused := await self._hold(service, route.wanted or service.regions[0], where)) is not None:
                return refused
            route = self.router.route(service, where)
        assert route.primary is not None and route.fallback is not None
        if route.spilled and route.nearest:
            self.series(service, route.nearest).spills.inc()
        redirected = self.series(service, route.cold).redirected if route.cold else None
        if redirected:
            redirected.inc()
        try:
            first = self.router.pick(service, route.primary)
            attempt = await self._attempt(service, first, request) if first else Attempt(None, True)
            if not attempt.retry:
                return attempt.response  # type: ignore[return-value]
            self.series(service, route.primary).retries.inc()
            second = self.router.pick(service, route.fallback, avoid=first)
            if second is None and route.fallback != route.primary:
                second = self.router.pick(service, route.primary, avoid=first)
            if second is None:
                return attempt.response or _bad_gateway(attempt.error or "no replica left to retry on")
            if second.region != route.primary:
                self.series(service, route.primary).failovers.inc()
            retried = await self._attempt(service, second, request)
            return retried.response or attempt.response or _bad_gateway(retried.error)
        finally:
            if redirected:
                redirected.dec()

    async def _hold(self, service: ServiceInfo, region: str, where: str) -> Response | None:
        """Holds the request until a region can serve it; a refusal response when it cannot be held or waited
        too long."""
        series = self.series(service, region)
        series.activations.inc()
        series.queued.inc()
        try:
            ready = await self.activator.wait(
                service.key, region, lambda: self.router.route(service, where).primary is not None
            )
        except QueueFull as full:
            series.rejected("QueueFull").inc()
            return JSONResponse({"error": str(full)}, status_code=503, headers={"Retry-After": "1"})
        finally:
            series.queued.dec()
        if ready:
            return None
        series.rejected("Timeout").inc()
        message = f"no replica of {service.name} became ready in {self.config.queue_timeout_seconds:g}s"
        return JSONResponse({"error": message}, status_code=503, headers={"Retry-After": "1"})

    async def _attempt(self, service: ServiceInfo, replica: Replica, request: Incoming) -> Attempt:
        assert self.client is not None
        series = self.series(service, replica.region)
        url = URL(f"http://{replica.address}{request.target}", encoded=True)
        self.router.inflight[replica] += 1
        series.inflight += 1
        started = time.monotonic()
        try:
            async with self.client.request(
                request.method, url, data=request.body, headers=request.headers, allow_redirects=False
            ) as upstream:
                body = await upstream.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            refused = isinstance(exc, aiohttp.ClientConnectorError)
            if self.router.outliers.failed(replica, time.monotonic(), refused=refused):
                series.ejections.inc()
            return Attempt(None, True, f"{replica.region}: {type(exc).__name__}")
        finally:
            self.router.inflight[replica] -= 1
            series.inflight -= 1
        elapsed = time.monotonic() - started
        series.answered(upstream.status).inc()
        series.latency.observe(elapsed)
        headers = [(k, v) for k, v in upstream.raw_headers if k.lower() not in HOP_BY_HOP]
        headers += ((b"content-length", str(len(body)).encode()), (SERVED_BY, replica.region.encode()))
        answer = Answer(upstream.status, headers, body)
        if upstream.status >= 500:
            if self.router.outliers.failed(replica, time.monotonic()):
                series.ejections.inc()
            return Attempt(answer, True)
        self.router.measured_answer(replica, elapsed)
        return Attempt(answer, False)

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


def build_app(config: GatewayConfig, gateway: Gateway | None = None, watch_cluster: bool = True) -> ModelPathsFirst:
    gw = gateway or Gateway(config)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        # Every connection is kept for reuse (no per-replica cap below the total), idle for less than the model
        # server's own keep-alive (uvicorn's 5 s), so a connection the replica is closing is not picked.
        connector = aiohttp.TCPConnector(limit=UPSTREAM_CONNECTIONS, limit_per_host=0, keepalive_timeout=4.0)
        timeout = aiohttp.ClientTimeout(
            total=config.upstream_timeout_seconds, connect=min(2.0, config.upstream_timeout_seconds)
        )
        async with aiohttp.ClientSession(
            connector=connector, timeout=timeout, trust_env=False, auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),  # the client's, or none
        ) as c:  # fmt: skip
            gw.client = c
            prober = asyncio.create_task(gw.probe_forever(), name="probe")
            watches = watch.start(gw.store, config.namespaces) if watch_cluster else []
            metrics_server = (
                start_http_server(config.metrics_port, registry=gw.metrics.registry)[0] if config.metrics_port else None
            )
            try:
                yield
            finally:
                for task in watches:
                    task.cancel()
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
    model_routes = [
        Route(f"{model}{version}{tail}", gw, methods=methods)
        for tail, methods in (("/infer", ["POST"]), ("", ["GET"]), ("/ready", ["GET"]))
        for version in ("", "/versions/{version}")
    ]
    routes = [
        Route("/v2", server_metadata),
        Route("/v2/health/live", live),
        Route("/v2/health/ready", ready),
        *([] if config.metrics_port else [Route("/metrics", metrics)]),
        *model_routes,
    ]
    return ModelPathsFirst(Starlette(routes=routes, lifespan=lifespan), model_routes, gw)


class ModelPathsFirst:
    """Sends a request that fully matches a model route straight to the gateway, past Starlette's middleware and
    router (a sizeable share of the gateway's time per request); everything else, and lifespan, to Starlette."""

    def __init__(self, app: Starlette, model_routes: list[Route], gateway: Gateway) -> None:
        self.app, self.model_routes, self.gateway = app, model_routes, gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for route in self.model_routes:
                match, child = route.matches(scope)
                if match is Match.FULL:
                    scope.update(child)
                    await self.gateway(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def server(app: ModelPathsFirst, host: str, port: int, log_level: str = "warning") -> uvicorn.Server:
    """uvicorn as the gateway runs it: uvloop, httptools, no access log; the replica's own headers pass through."""
    config = uvicorn.Config(
        app, host=host, port=port, loop="uvloop", http="httptools", log_level=log_level, access_log=False,
        server_header=False, date_header=False, backlog=4096,
    )  # fmt: skip
    return uvicorn.Server(config)

"""The model server: V2 open inference protocol over HTTP (starlette + uvicorn), dynamic batching, Prometheus
metrics, graceful shutdown. Configured by the env the InferenceService builder sets (MODELFLEET_*), or by flags.

Limits: a request body over --max-body-bytes is refused with 413 while it streams in (never buffered whole); with
--max-queue requests already waiting for the batcher, another gets 503 with Retry-After; a request not answered
within --request-timeout seconds (body upload included) gets 504.

    python -m modelfleet.runtime.serve --model-path /models/mlp --quantization int8 --port 8080
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Any

import torch
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from modelfleet.runtime.batching import Batcher
from modelfleet.runtime.modelio import LoadedModel, load_model

log = logging.getLogger("modelfleet.serve")
V2_DTYPES = {
    "FP32": torch.float32,
    "FP16": torch.float16,
    "BF16": torch.bfloat16,
    "FP64": torch.float64,
    "INT64": torch.int64,
    "INT32": torch.int32,
}
V2_NAMES = {v: k for k, v in V2_DTYPES.items()}


@dataclass
class ServerConfig:
    model_path: str
    model_name: str = "model"
    model_format: str = "torchscript"
    quantization: str = "none"
    max_batch_size: int = 1
    max_delay_ms: float = 5.0
    host: str = "0.0.0.0"
    port: int = 8080
    device: str = "cpu"
    max_body_bytes: int = 8 * 1024 * 1024
    max_queue: int = 256
    request_timeout: float = 30.0
    retry_after_seconds: int = 1

    @classmethod
    def from_env_and_args(cls, argv: list[str] | None = None) -> ServerConfig:
        env = os.environ
        parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        parser.add_argument("--model-path", default=env.get("MODELFLEET_MODEL_PATH"))
        parser.add_argument("--model-name", default=env.get("MODELFLEET_MODEL_NAME", "model"))
        parser.add_argument("--model-format", default=env.get("MODELFLEET_MODEL_FORMAT", "torchscript"))
        parser.add_argument("--quantization", default=env.get("MODELFLEET_QUANTIZATION", "none"))
        parser.add_argument("--max-batch-size", type=int, default=int(env.get("MODELFLEET_MAX_BATCH_SIZE", "1")))
        parser.add_argument("--max-delay-ms", type=float, default=float(env.get("MODELFLEET_MAX_DELAY_MS", "5")))
        parser.add_argument("--host", default=env.get("MODELFLEET_HOST", "0.0.0.0"))
        parser.add_argument("--port", type=int, default=int(env.get("MODELFLEET_PORT", "8080")))
        parser.add_argument("--device", default=env.get("MODELFLEET_DEVICE", "cpu"))
        parser.add_argument(
            "--max-body-bytes", type=int, default=int(env.get("MODELFLEET_MAX_BODY_BYTES", str(cls.max_body_bytes)))
        )
        parser.add_argument(
            "--max-queue", type=int, default=int(env.get("MODELFLEET_MAX_QUEUE", str(cls.max_queue))),
            help="requests that may wait for the batcher (0: no bound)",
        )  # fmt: skip
        parser.add_argument(
            "--request-timeout", type=float,
            default=float(env.get("MODELFLEET_REQUEST_TIMEOUT_SECONDS", str(cls.request_timeout))),
            help="seconds a request may take, body upload included",
        )  # fmt: skip
        args = parser.parse_args(argv)
        if not args.model_path:
            parser.error("--model-path (or MODELFLEET_MODEL_PATH) is required")
        return cls(**{k: v for k, v in vars(args).items()})


class Metrics:
    """Exactly the series the operator's autoscaler reads (see modelfleet.inference.observe)."""

    def __init__(self, model: str) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "modelfleet_requests", "Inference requests by HTTP status code.", ["model", "code"], registry=self.registry
        )
        self.inflight = Gauge(
            "modelfleet_inflight_requests", "Inference requests being served.", ["model"], registry=self.registry
        )
        self.latency = Histogram(
            "modelfleet_request_duration_seconds", "Inference request latency.", ["model"], registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )  # fmt: skip
        self.batch = Histogram(
            "modelfleet_batch_size", "Rows per forward pass.", ["model"], registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
        )  # fmt: skip
        self.size = Gauge(
            "modelfleet_model_size_bytes", "Model state size.", ["model", "stage"], registry=self.registry
        )
        self.rejected = Counter(
            "modelfleet_rejected_requests", "Requests refused by a server limit.", ["model", "reason"],
            registry=self.registry,
        )  # fmt: skip
        self.model = model


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def read_limited(declared_length: str | None, chunks: AsyncIterable[bytes], limit: int) -> bytes | None:
    """The body, or None as soon as it is known to be over `limit` bytes: from its Content-Length before a byte is
    read, else from the chunks read so far (nothing past the limit is kept)."""
    if declared_length is not None and declared_length.isdigit() and int(declared_length) > limit:
        return None
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def build_app(config: ServerConfig, loaded: LoadedModel | None = None) -> Starlette:
    metrics = Metrics(config.model_name)
    state: dict[str, Any] = {"model": loaded, "batcher": None, "draining": False}

    def forward(x: torch.Tensor) -> torch.Tensor:
        model: LoadedModel = state["model"]
        with torch.inference_mode():
            return model.module(x.to(model.device, model.dtype)).float().cpu()

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        if state["model"] is None:
            state["model"] = load_model(config.model_path, config.model_format, config.quantization, config.device)
        model: LoadedModel = state["model"]
        metrics.size.labels(config.model_name, "original").set(model.original_bytes)
        metrics.size.labels(config.model_name, "served").set(model.served_bytes)
        log.info(
            "serving %s (%s, %s): %d bytes -> %d bytes",
            config.model_name, config.model_path, config.quantization, model.original_bytes, model.served_bytes,
        )  # fmt: skip
        batcher = Batcher(
            forward, config.max_batch_size, config.max_delay_ms, metrics.batch.labels(config.model_name).observe,
            config.max_queue,
        )  # fmt: skip
        batcher.start()
        state["batcher"] = batcher
        yield
        state["draining"] = True
        await batcher.stop()

    async def live(_: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(_: Request) -> Response:
        ok = state["batcher"] is not None and not state["draining"]
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    def known(request: Request) -> bool:
        return request.path_params["name"] == config.model_name

    async def model_metadata(request: Request) -> Response:
        if not known(request):
            return error(404, f"unknown model {request.path_params['name']!r}")
        model: LoadedModel = state["model"]
        shape = [-1, *(model.input_shape or [])]
        return JSONResponse({
            "name": config.model_name, "versions": ["1"], "platform": "pytorch_torchscript",
            "inputs": [{"name": "input__0", "datatype": V2_NAMES.get(model.dtype, "FP32"), "shape": shape}],
            "outputs": [{"name": "output__0", "datatype": "FP32", "shape": [-1, -1]}],
            "parameters": {"quantization": config.quantization, "served_bytes": model.served_bytes},
        })  # fmt: skip

    async def model_ready(request: Request) -> Response:
        if not known(request):
            return error(404, f"unknown model {request.path_params['name']!r}")
        return await ready(request)

    def reject(reason: str, status: int, message: str, headers: dict[str, str] | None = None) -> Response:
        metrics.rejected.labels(config.model_name, reason).inc()
        return error(status, message, headers)

    async def infer(request: Request) -> Response:
        started = time.perf_counter()
        gauge = metrics.inflight.labels(config.model_name)
        gauge.inc()
        try:
            response = await asyncio.wait_for(_infer(request), config.request_timeout)
        except TimeoutError:
            response = reject("timeout", 504, f"no answer within {config.request_timeout:g}s")
        finally:
            gauge.dec()
        metrics.requests.labels(config.model_name, str(response.status_code)).inc()
        metrics.latency.labels(config.model_name).observe(time.perf_counter() - started)
        return response

    async def _infer(request: Request) -> Response:
        if not known(request):
            return error(404, f"unknown model {request.path_params['name']!r}")
        if state["batcher"] is None or state["draining"]:
            return error(503, "model not ready")
        body = await read_limited(request.headers.get("content-length"), request.stream(), config.max_body_bytes)
        if body is None:
            return reject("body_too_large", 413, f"request body over {config.max_body_bytes} bytes")
        try:
            tensor = parse_request(json.loads(body), state["model"])
        except (ValueError, KeyError, TypeError) as exc:
            return error(400, str(exc))
        try:
            output = await state["batcher"].infer(tensor)
        except asyncio.QueueFull:
            retry = {"Retry-After": str(config.retry_after_seconds)}
            return reject("queue_full", 503, f"{config.max_queue} requests already queued", retry)
        except Exception as exc:
            return error(400, f"inference failed: {exc}")
        return JSONResponse({
            "model_name": config.model_name, "model_version": "1",
            "outputs": [{"name": "output__0", "datatype": "FP32", "shape": list(output.shape), "data": output.flatten().tolist()}],
        })  # fmt: skip

    async def metrics_endpoint(_: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    routes = [
        Route("/v2/health/live", live),
        Route("/v2/health/ready", ready),
        Route("/v2/models/{name}", model_metadata),
        Route("/v2/models/{name}/ready", model_ready),
        Route("/v2/models/{name}/infer", infer, methods=["POST"]),
        Route("/metrics", metrics_endpoint),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def parse_request(payload: Any, model: LoadedModel) -> torch.Tensor:
    """The V2 request's single input as a tensor, checked against the model's input shape and dtype."""
    if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), list) or len(payload["inputs"]) != 1:
        raise ValueError("expected {'inputs': [one tensor]}")
    item = payload["inputs"][0]
    datatype = item.get("datatype", "FP32")
    if datatype not in V2_DTYPES:
        raise ValueError(f"unsupported datatype {datatype!r}; use one of {', '.join(V2_DTYPES)}")
    shape = item["shape"]
    if not isinstance(shape, list) or not shape or not all(isinstance(d, int) and d > 0 for d in shape):
        raise ValueError(f"shape must be a list of positive integers, got {shape!r}")
    data = item["data"]
    expected = 1
    for d in shape:
        expected *= d
    flat = torch.tensor(data, dtype=V2_DTYPES[datatype]).flatten()
    if flat.numel() != expected:
        raise ValueError(f"data has {flat.numel()} values, shape {shape} needs {expected}")
    if model.input_shape is not None and tuple(shape[1:]) != tuple(model.input_shape):
        raise ValueError(
            f"shape {shape} does not match the model input [batch, {', '.join(map(str, model.input_shape))}]"
        )
    return flat.reshape(shape).float()


def main(argv: list[str] | None = None) -> None:
    config = ServerConfig.from_env_and_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(
        build_app(config), host=config.host, port=config.port, log_level="warning",
        timeout_graceful_shutdown=30, access_log=False,
    )  # fmt: skip


if __name__ == "__main__":
    main()

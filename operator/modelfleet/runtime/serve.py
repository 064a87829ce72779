"""The model server: the V2 open inference protocol over HTTP (starlette + uvicorn, binary tensor extension
included) and gRPC (`inference.GRPCInferenceService`, on its own port), dynamic batching, Prometheus metrics,
graceful shutdown; one or several server processes sharing the ports (SO_REUSEPORT). Configured by the env the
InferenceService builder sets (MODELFLEET_*), or by flags.

Limits: a request body over --max-body-bytes is refused with 413 while it streams in (never buffered whole); with
--max-queue requests already waiting for the batcher, another gets 503 with Retry-After; a request not answered
within --request-timeout seconds (body upload included) gets 504. gRPC answers RESOURCE_EXHAUSTED for the first two
(and for calls past --max-queue plus a batch in flight at once: none waits unseen) and DEADLINE_EXCEEDED.

    python -m modelfleet.runtime.serve --model-path /models/mlp --quantization int8 --port 8080 --grpc-port 8081
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass

import orjson
import torch
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelfleet.contract import (
    DEVICE_ENV,
    GRPC_PORT_ENV,
    HOST_ENV,
    MAX_BATCH_SIZE_ENV,
    MAX_BODY_BYTES_ENV,
    MAX_DELAY_MS_ENV,
    MAX_QUEUE_ENV,
    MODEL_FORMAT_ENV,
    MODEL_NAME_ENV,
    MODEL_PATH_ENV,
    PORT_ENV,
    QUANTIZATION_ENV,
    REQUEST_TIMEOUT_SECONDS_ENV,
    SERVER_WORKERS_ENV,
)
from modelfleet.runtime import v2
from modelfleet.runtime.engine import MODEL_VERSION, Engine, EngineConfig
from modelfleet.runtime.grpc_service import start_grpc
from modelfleet.runtime.modelio import LoadedModel
from modelfleet.runtime.processes import run_workers, worker_plan

log = logging.getLogger("modelfleet.serve")
PLATFORM = "pytorch_torchscript"


@dataclass
class ServerConfig(EngineConfig):
    host: str = "0.0.0.0"
    port: int = 8080
    grpc_port: int = 8081  # 0: no gRPC
    max_body_bytes: int = 8 * 1024 * 1024
    retry_after_seconds: int = 1
    workers: int = 0  # server processes; 0: one per GPU, or per two CPU cores

    @classmethod
    def from_env_and_args(cls, argv: list[str] | None = None) -> ServerConfig:
        env = os.environ
        parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        parser.add_argument("--model-path", default=env.get(MODEL_PATH_ENV))
        parser.add_argument("--model-name", default=env.get(MODEL_NAME_ENV, "model"))
        parser.add_argument("--model-format", default=env.get(MODEL_FORMAT_ENV, "torchscript"))
        parser.add_argument("--quantization", default=env.get(QUANTIZATION_ENV, "none"))
        parser.add_argument("--max-batch-size", type=int, default=int(env.get(MAX_BATCH_SIZE_ENV, "1")))
        parser.add_argument("--max-delay-ms", type=float, default=float(env.get(MAX_DELAY_MS_ENV, "5")))
        parser.add_argument("--host", default=env.get(HOST_ENV, "0.0.0.0"))
        parser.add_argument("--port", type=int, default=int(env.get(PORT_ENV, "8080")))
        parser.add_argument(
            "--grpc-port", type=int, default=int(env.get(GRPC_PORT_ENV, str(cls.grpc_port))),
            help="port of the gRPC V2 service (0: none)",
        )  # fmt: skip
        parser.add_argument("--device", default=env.get(DEVICE_ENV, "cpu"))
        parser.add_argument(
            "--max-body-bytes", type=int, default=int(env.get(MAX_BODY_BYTES_ENV, str(cls.max_body_bytes)))
        )
        parser.add_argument(
            "--max-queue", type=int, default=int(env.get(MAX_QUEUE_ENV, str(cls.max_queue))),
            help="requests that may wait for the batcher (0: no bound)",
        )  # fmt: skip
        parser.add_argument(
            "--request-timeout", type=float,
            default=float(env.get(REQUEST_TIMEOUT_SECONDS_ENV, str(cls.request_timeout))),
            help="seconds a request may take, body upload included",
        )  # fmt: skip
        parser.add_argument(
            "--workers", type=int, default=int(env.get(SERVER_WORKERS_ENV, "0")),
            help="server processes sharing the ports (0: one per GPU, else one per two CPU cores the pod may use)",
        )  # fmt: skip
        args = parser.parse_args(argv)
        if not args.model_path:
            parser.error("--model-path (or MODELFLEET_MODEL_PATH) is required")
        return cls(**vars(args))


def json_response(document: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(document), status, headers, media_type="application/json")


def error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return json_response({"error": message}, status, headers)


async def read_limited(declared_length: str | None, chunks: AsyncIterable[bytes], limit: int) -> bytearray | None:
    """The body, or None as soon as it is known to be over `limit` bytes: from its Content-Length before a byte is
    read, else from the chunks read so far (nothing past the limit is kept)."""
    if declared_length is not None and declared_length.isdigit() and int(declared_length) > limit:
        return None
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > limit:
            return None
    return body


def build_app(config: ServerConfig, loaded: LoadedModel | None = None) -> Starlette:
    engine = Engine(config, loaded)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        engine.start()
        grpc_server = start_grpc(engine, config.host, config.grpc_port, config.max_body_bytes)
        yield
        engine.draining = True
        if grpc_server is not None:  # its calls in flight need this loop to finish: wait off it
            await asyncio.to_thread(grpc_server.stop(grace=config.request_timeout).wait)
        await engine.stop()

    def model_of(request: Request) -> Response | None:
        """A 404 unless the path names the served model (and, if any, its version)."""
        name, version = request.path_params["name"], request.path_params.get("version")
        if engine.knows(name, version):
            return None
        return error(404, f"unknown model {name!r}" + (f" version {version!r}" if version else ""))

    async def server_metadata(_: Request) -> Response:
        return json_response(v2.server_metadata())

    async def live(_: Request) -> Response:
        return json_response({"live": True})

    async def ready(_: Request) -> Response:
        return json_response({"ready": engine.ready}, 200 if engine.ready else 503)

    async def model_metadata(request: Request) -> Response:
        if (missing := model_of(request)) is not None:
            return missing
        assert engine.model is not None
        document = v2.model_metadata(config.model_name, MODEL_VERSION, engine.signature, PLATFORM)
        decision = engine.model.quantization
        document["parameters"] = {
            "quantization": config.quantization,
            "quantization_applied": decision.applied,
            "quantization_reason": decision.reason,
            "served_bytes": engine.model.served_bytes,
            "freezing": engine.model.freezing,
        }
        return json_response(document)

    async def model_ready(request: Request) -> Response:
        return missing if (missing := model_of(request)) is not None else await ready(request)

    async def infer(request: Request) -> Response:
        if (missing := model_of(request)) is not None:
            return missing

        async def decode(signature: v2.Signature) -> v2.Inference:
            body = await read_limited(request.headers.get("content-length"), request.stream(), config.max_body_bytes)
            if body is None:
                raise v2.V2Error(413, f"request body over {config.max_body_bytes} bytes", "body_too_large")
            return v2.decode_json(body, request.headers.get(v2.HEADER_LENGTH), signature)

        try:
            inference, outputs = await engine.infer(decode, "http")
        except v2.V2Error as exc:
            retry = {"Retry-After": str(config.retry_after_seconds)} if exc.reason == "queue_full" else None
            return error(exc.status, exc.message, retry)
        body, header_length = v2.encode_json(config.model_name, MODEL_VERSION, inference, engine.signature, outputs)
        if header_length is None:
            return Response(body, media_type="application/json")
        headers = {"Inference-Header-Content-Length": str(header_length)}
        return Response(body, headers=headers, media_type="application/octet-stream")

    async def metrics_endpoint(_: Request) -> Response:
        return Response(engine.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    per_model = [("", model_metadata, ["GET"]), ("/ready", model_ready, ["GET"]), ("/infer", infer, ["POST"])]
    prefixes = ["/v2/models/{name}", "/v2/models/{name}/versions/{version}"]
    routes = [
        Route("/v2", server_metadata),
        Route("/v2/health/live", live),
        Route("/v2/health/ready", ready),
        *(
            Route(prefix + path, endpoint, methods=methods)
            for prefix in prefixes
            for path, endpoint, methods in per_model
        ),
        Route("/metrics", metrics_endpoint),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def shared_socket(host: str, port: int) -> socket.socket:
    """A listening socket other server processes of this pod bind too (SO_REUSEPORT: the kernel spreads connections)."""
    # IPPROTO_TCP named, not 0: asyncio sets TCP_NODELAY on accepted connections only then (else Nagle and the
    # client's delayed ACK hold every answer about 40 ms)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def serve(config: ServerConfig) -> None:
    """One server process: HTTP and gRPC on the shared ports."""
    uvicorn_config = uvicorn.Config(
        build_app(config), loop="uvloop", http="httptools", log_level="warning", timeout_graceful_shutdown=30,
        access_log=False, server_header=False, date_header=False, backlog=4096,
    )  # fmt: skip
    uvicorn.Server(uvicorn_config).run(sockets=[shared_socket(config.host, config.port)])


def main(argv: list[str] | None = None) -> None:
    config = ServerConfig.from_env_and_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    plan = worker_plan(config.workers, config.device)
    if plan.workers == 1:
        torch.set_num_threads(plan.threads)
        serve(dataclasses.replace(config, device=plan.devices[0]))
    else:
        run_workers(plan)


if __name__ == "__main__":
    main()

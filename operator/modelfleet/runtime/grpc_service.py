"""The V2 gRPC service (`inference.GRPCInferenceService`, the stubs tritonclient ships) over the engine: health,
metadata and inference; the protocol itself is in v2.py. Methods not served here answer UNIMPLEMENTED.

It runs on grpcio's threaded server, not grpc.aio: each call's handler thread hands the inference to the engine's
event loop (the batcher HTTP requests share) and waits for it. Measured with 16 clients on one core, grpc.aio in the
server's event loop answered 1,200-1,590 req/s (MLP) and the threaded server 1,870-2,170: grpc.aio's per-call hops
between its poller thread and the loop cost more than a thread waiting on a future.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import CancelledError, ThreadPoolExecutor

import grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from modelfleet.runtime import v2
from modelfleet.runtime.engine import MODEL_VERSION, Engine

STATUS_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
PLATFORM = "pytorch_torchscript"
HANDLER_THREADS = 64  # calls handled at once (the rest wait in grpcio's queue): enough to fill a batch


class InferenceService(service_pb2_grpc.GRPCInferenceServiceServicer):
    """Handlers run in the gRPC server's threads; `loop` is the engine's event loop."""

    def __init__(self, engine: Engine, loop: asyncio.AbstractEventLoop) -> None:
        self.engine = engine
        self.loop = loop

    def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.ServicerContext):  # noqa: ANN201
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.ServicerContext):  # noqa: ANN201
        return pb.ServerReadyResponse(ready=self.engine.ready)

    def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.ServicerContext):  # noqa: ANN201
        return pb.ModelReadyResponse(ready=self.engine.ready and self.engine.knows(request.name, request.version))

    def ServerMetadata(self, request: pb.ServerMetadataRequest, context: grpc.ServicerContext):  # noqa: ANN201
        return pb.ServerMetadataResponse(**v2.server_metadata())

    def ModelMetadata(self, request: pb.ModelMetadataRequest, context: grpc.ServicerContext):  # noqa: ANN201
        self._known(request.name, request.version, context)
        document = v2.model_metadata(self.engine.config.model_name, MODEL_VERSION, self.engine.signature, PLATFORM)
        tensors = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=document["name"],
            versions=document["versions"],
            platform=document["platform"],
            inputs=[tensors(**t) for t in document["inputs"]],
            outputs=[tensors(**t) for t in document["outputs"]],
        )

    def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.ServicerContext):  # noqa: ANN201
        self._known(request.model_name, request.model_version, context)

        async def decode(signature: v2.Signature) -> v2.Inference:
            return v2.decode_grpc(request, signature)

        call = asyncio.run_coroutine_threadsafe(self.engine.infer(decode, "grpc"), self.loop)
        context.add_callback(call.cancel)  # runs when the call ends: if the client gave up first, so does the engine
        try:
            inference, outputs = call.result()
        except v2.V2Error as exc:
            context.abort(STATUS_CODES.get(exc.status, grpc.StatusCode.INTERNAL), exc.message)
        except CancelledError:
            context.abort(grpc.StatusCode.CANCELLED, "the client cancelled the call")
        name = self.engine.config.model_name
        return v2.encode_grpc(name, MODEL_VERSION, inference, self.engine.signature, outputs)

    def _known(self, name: str, version: str, context: grpc.ServicerContext) -> None:
        if not self.engine.knows(name, version):
            context.abort(
                grpc.StatusCode.NOT_FOUND, f"unknown model {name!r}" + (f" version {version!r}" if version else "")
            )


def start_grpc(engine: Engine, host: str, port: int, max_message_bytes: int) -> grpc.Server | None:
    """The gRPC server on `port` (shared with this pod's other server processes), or None when `port` is 0; called
    in the engine's event loop."""
    if not port:
        return None
    server = grpc.server(
        ThreadPoolExecutor(HANDLER_THREADS, thread_name_prefix="grpc"),
        options=[
            ("grpc.so_reuseport", 1),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", -1),
        ],
    )
    service = InferenceService(engine, asyncio.get_running_loop())
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(service, server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if server.add_insecure_port(address) == 0:
        raise OSError(f"cannot bind the gRPC port {address}")
    server.start()
    return server

"""The V2 gRPC service (`inference.GRPCInferenceService`, the stubs tritonclient ships) over the engine: health,
metadata and inference; the protocol itself is in v2.py. Methods not served here answer UNIMPLEMENTED."""

from __future__ import annotations

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


class InferenceService(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext):  # noqa: ANN201
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext):  # noqa: ANN201
        return pb.ServerReadyResponse(ready=self.engine.ready)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext):  # noqa: ANN201
        return pb.ModelReadyResponse(ready=self.engine.ready and self.engine.knows(request.name, request.version))

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext):  # noqa: ANN201
        return pb.ServerMetadataResponse(**v2.server_metadata())

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext):  # noqa: ANN201
        await self._known(request.name, request.version, context)
        document = v2.model_metadata(self.engine.config.model_name, MODEL_VERSION, self.engine.signature, PLATFORM)
        tensors = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=document["name"],
            versions=document["versions"],
            platform=document["platform"],
            inputs=[tensors(**t) for t in document["inputs"]],
            outputs=[tensors(**t) for t in document["outputs"]],
        )

    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext):  # noqa: ANN201
        await self._known(request.model_name, request.model_version, context)

        async def decode(signature: v2.Signature) -> v2.Inference:
            return v2.decode_grpc(request, signature)

        try:
            inference, outputs = await self.engine.infer(decode, "grpc")
        except v2.V2Error as exc:
            await context.abort(STATUS_CODES.get(exc.status, grpc.StatusCode.INTERNAL), exc.message)
        name = self.engine.config.model_name
        return v2.encode_grpc(name, MODEL_VERSION, inference, self.engine.signature, outputs)

    async def _known(self, name: str, version: str, context: grpc.aio.ServicerContext) -> None:
        if not self.engine.knows(name, version):
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"unknown model {name!r}" + (f" version {version!r}" if version else "")
            )


async def start_grpc(engine: Engine, host: str, port: int, max_message_bytes: int) -> grpc.aio.Server | None:
    """The gRPC server on `port` (shared with this pod's other server processes), or None when `port` is 0."""
    if not port:
        return None
    server = grpc.aio.server(
        options=[
            ("grpc.so_reuseport", 1),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", -1),
        ]
    )
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceService(engine), server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if server.add_insecure_port(address) == 0:
        raise OSError(f"cannot bind the gRPC port {address}")
    await server.start()
    return server

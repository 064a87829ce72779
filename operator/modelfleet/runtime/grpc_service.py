"""The V2 gRPC service (`inference.GRPCInferenceService`, the stubs tritonclient ships) over the engine: health,
metadata and inference; the protocol itself is in v2.py. Methods not served here answer UNIMPLEMENTED.

It runs on grpcio's threaded server, not grpc.aio: each call's handler thread decodes the request, hands its rows
straight to the batcher's thread (the one HTTP requests share) and waits on their future; the event loop takes no
part. Measured with 16 clients on one core, grpc.aio in the server's event loop answered 1,200-1,590 req/s (MLP) and
the threaded server, then going through the loop, 1,870-2,170: grpc.aio's per-call hops between its poller thread
and the loop cost more than a thread waiting on a future. Handing the rows straight to the batcher's thread instead
of through the loop measured on par, not faster (A/B on two shared cores: MLP 1,920 vs 2,010 req/s at 16 clients,
within the noise): what a call costs is its Python work under the one GIL, more than the hand-offs.

Limits: no call waits unseen in grpcio's own queue. The engine holds at most `max_queue` waiting requests and a
batch in flight (`max_batch_size` at most); the server runs that many handler threads and `SPARE_HANDLERS` more, and
takes no more calls at once than it has threads. A call the engine cannot queue is refused by it (counted, as
HTTP's 503) and one past the threads by grpcio, both with RESOURCE_EXHAUSTED at once; an admitted call has the
request timeout (DEADLINE_EXCEEDED). With `max_queue` 0 (no bound) there is no cap: calls past
`UNCAPPED_HANDLER_THREADS` wait in grpcio's queue.
"""

from __future__ import annotations

from concurrent.futures import CancelledError, Future, ThreadPoolExecutor

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
SPARE_HANDLERS = 16  # threads past what the engine can hold: they refuse the calls it cannot, or serve metadata
UNCAPPED_HANDLER_THREADS = 64  # with no queue bound: calls handled at once (the rest wait in grpcio's queue)


class InferenceService(service_pb2_grpc.GRPCInferenceServiceServicer):
    """Handlers run in the gRPC server's threads."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

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

        def decode(signature: v2.Signature) -> v2.Inference:
            return v2.decode_grpc(request, signature)

        def on_submit(future: Future) -> None:
            # runs when the call ends: if the client gave up first, so does the engine
            context.add_callback(future.cancel)

        try:
            inference, outputs = self.engine.infer_blocking(decode, "grpc", on_submit)
        except v2.V2Error as exc:
            code = grpc.StatusCode.RESOURCE_EXHAUSTED if exc.reason == "queue_full" else None
            context.abort(code or STATUS_CODES.get(exc.status, grpc.StatusCode.INTERNAL), exc.message)
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
    """The gRPC server on `port` (shared with this pod's other server processes), or None when `port` is 0."""
    if not port:
        return None
    config = engine.config
    cap = config.max_queue + config.max_batch_size + SPARE_HANDLERS if config.max_queue > 0 else None
    server = grpc.server(
        ThreadPoolExecutor(cap or UNCAPPED_HANDLER_THREADS, thread_name_prefix="grpc"),
        maximum_concurrent_rpcs=cap,
        options=[
            ("grpc.so_reuseport", 1),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", -1),
        ],
    )
    service = InferenceService(engine)
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(service, server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if server.add_insecure_port(address) == 0:
        raise OSError(f"cannot bind the gRPC port {address}")
    server.start()
    return server

"""KServe's Python model server (the `kserve` package) serving a TorchScript model over the same V2 REST and gRPC
APIs (JSON or binary tensors, as the request asks), as a KServe user would write it. Run by benchmarks/serving.py
in its own environment."""

from __future__ import annotations

import argparse
import uuid

import kserve
import torch
from kserve import InferOutput, InferRequest, InferResponse


class TorchScriptModel(kserve.Model):
    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        self.path = path
        self.model = None
        self.load()

    def load(self) -> bool:
        self.model = torch.jit.load(self.path).eval()
        self.ready = True
        return self.ready

    def predict(self, payload: InferRequest, headers: dict[str, str] | None = None) -> InferResponse:
        tensor = torch.as_tensor(payload.inputs[0].as_numpy(), dtype=torch.float32)
        with torch.inference_mode():
            out = self.model(tensor)
        output = InferOutput(name="output__0", shape=list(out.shape), datatype="FP32")
        output.set_data_from_numpy(out.numpy(), binary_data=True)  # KServe re-encodes it as JSON where asked
        return InferResponse(
            model_name=self.name, infer_outputs=[output], response_id=payload.id or str(uuid.uuid4()),
            use_binary_outputs=payload.use_binary_outputs,
        )  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(parents=[kserve.model_server.parser])
    parser.add_argument("--model_path", required=True)
    args, _ = parser.parse_known_args()
    kserve.ModelServer(http_port=args.http_port, grpc_port=args.grpc_port, workers=1, enable_grpc=True).start(
        [TorchScriptModel(args.model_name, args.model_path)]
    )

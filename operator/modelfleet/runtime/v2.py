"""The V2 open inference protocol without a transport: requests decoded and checked into numpy tensors, answers
encoded, metadata documents. The HTTP server (serve.py) and the gRPC service (grpc_service.py) only move bytes.

Tensors are built without Python loops: JSON data through numpy, binary data (the HTTP binary tensor extension,
gRPC raw contents) with `np.frombuffer`, which copies nothing. A datatype other than the model's is refused, never
cast; so is a shape the model cannot take.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from tritonclient.grpc import service_pb2 as pb

SERVER_NAME = "modelfleet"
SERVER_VERSION = "0.1.0"
EXTENSIONS = ["binary_tensor_data", "parameters"]
HEADER_LENGTH = "inference-header-content-length"

DATATYPES: dict[str, np.dtype] = {
    name: np.dtype(kind)
    for name, kind in {
        "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
        "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
        "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
    }.items()
}  # fmt: skip
DATATYPE_OF = {dtype: name for name, dtype in DATATYPES.items()}
# InferTensorContents field per datatype (gRPC requests that send typed contents instead of raw bytes)
GRPC_CONTENTS = {
    "BOOL": "bool_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents",
}  # fmt: skip


class V2Error(Exception):
    """A refusal: `status` is the HTTP status (the gRPC service maps it to a status code); `reason` names a server
    limit that refused it (counted in modelfleet_rejected_requests_total)."""

    def __init__(self, status: int, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason


@dataclass(frozen=True)
class TensorSpec:
    """A named tensor of the model: its datatype and shape (-1 for any size; None for any shape)."""

    name: str
    datatype: str = "FP32"
    shape: tuple[int, ...] | None = None

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape or [-1])}

    def accepts(self, shape: Sequence[int]) -> bool:
        if self.shape is None:
            return True
        return len(shape) == len(self.shape) and all(w in (-1, d) for w, d in zip(self.shape, shape, strict=True))


@dataclass(frozen=True)
class Signature:
    """The model's inputs (passed to forward in this order) and outputs (returned in this order)."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> Signature:
        """From an artifact's metadata.json: explicit `inputs`/`outputs` lists ({name, datatype, shape}), else one
        FP32 input `input__0` of shape [-1, *inputShape] and one FP32 output `output__0` of [-1, classes]."""

        def specs(key: str, default: TensorSpec) -> tuple[TensorSpec, ...]:
            if key not in metadata:
                return (default,)
            made = tuple(TensorSpec(t["name"], t.get("datatype", "FP32"), tuple(t["shape"])) for t in metadata[key])
            unknown = [t.datatype for t in made if t.datatype not in DATATYPES]
            if unknown or not made or len({t.name for t in made}) != len(made):
                raise ValueError(f"metadata.json {key}: need distinct names and datatypes in {', '.join(DATATYPES)}")
            return made

        shape = metadata.get("inputShape")
        classes = metadata.get("classes")
        return cls(
            specs("inputs", TensorSpec("input__0", "FP32", (-1, *shape) if shape is not None else None)),
            specs("outputs", TensorSpec("output__0", "FP32", (-1, classes) if classes is not None else None)),
        )


@dataclass
class Inference:
    """A decoded request: one array per model input (in signature order), and which outputs to answer with."""

    id: str | None
    inputs: list[np.ndarray]
    outputs: list[int]  # indices into the signature's outputs
    binary: list[bool]  # per answered output: binary data (HTTP extension) or JSON
    parameters: dict[str, Any] = field(default_factory=dict)


def server_metadata() -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": EXTENSIONS}


def model_metadata(name: str, version: str, signature: Signature, platform: str) -> dict[str, Any]:
    return {
        "name": name,
        "versions": [version],
        "platform": platform,
        "inputs": [t.metadata() for t in signature.inputs],
        "outputs": [t.metadata() for t in signature.outputs],
    }


def check_tensor(spec: TensorSpec, datatype: str, shape: Sequence[int], values: np.ndarray) -> np.ndarray:
    """`values` (flat) as an array of `shape`, refused unless datatype and shape are what the model takes."""
    if datatype != spec.datatype:
        raise V2Error(400, f"input {spec.name!r} has datatype {datatype}, the model expects {spec.datatype}")
    if not all(isinstance(d, int) and d >= 0 for d in shape) or not shape:
        raise V2Error(400, f"input {spec.name!r}: shape must be a list of non-negative integers, got {list(shape)}")
    if not spec.accepts(shape):
        raise V2Error(400, f"input {spec.name!r} has shape {list(shape)}, the model takes {list(spec.shape or [])}")
    if values.size != math.prod(shape):
        raise V2Error(400, f"input {spec.name!r}: {values.size} values for shape {list(shape)}")
    return values.reshape(shape)


def _spec_for(signature: Signature, name: Any, seen: set[str]) -> tuple[int, TensorSpec]:
    for index, spec in enumerate(signature.inputs):
        if spec.name == name:
            if name in seen:
                raise V2Error(400, f"input {name!r} given twice")
            seen.add(name)
            return index, spec
    raise V2Error(400, f"unknown input {name!r}; the model takes {', '.join(t.name for t in signature.inputs)}")


def _ordered(signature: Signature, found: dict[int, np.ndarray]) -> list[np.ndarray]:
    missing = [t.name for i, t in enumerate(signature.inputs) if i not in found]
    if missing:
        raise V2Error(400, f"missing input {', '.join(map(repr, missing))}")
    batch = {a.shape[0] for a in found.values()}
    if len(batch) > 1:
        raise V2Error(400, f"inputs disagree on the batch size (first dimension): {sorted(batch)}")
    return [found[i] for i in range(len(signature.inputs))]


def _requested(signature: Signature, names: Sequence[str]) -> list[int]:
    if not names:
        return list(range(len(signature.outputs)))
    index = {t.name: i for i, t in enumerate(signature.outputs)}
    unknown = [n for n in names if n not in index]
    if unknown:
        raise V2Error(400, f"unknown output {unknown[0]!r}; the model answers {', '.join(index)}")
    return [index[n] for n in names]


def _datatype(item: Mapping[str, Any], name: Any) -> str:
    datatype = item.get("datatype")
    if datatype not in DATATYPES:
        raise V2Error(400, f"input {name!r}: unsupported datatype {datatype!r}; use one of {', '.join(DATATYPES)}")
    return datatype


def decode_json(body: bytes | bytearray, header_length: str | None, signature: Signature) -> Inference:
    """An HTTP request body: JSON, or (binary tensor extension) a JSON header of `header_length` bytes followed by
    each binary input's bytes in input order, as its `parameters.binary_data_size` says."""
    view = memoryview(body)
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise V2Error(400, f"Inference-Header-Content-Length {header_length!r} is not within the body")
        split = int(header_length)
    else:
        split = len(body)
    try:
        payload = orjson.loads(view[:split])
    except orjson.JSONDecodeError as exc:
        hint = " (binary data? send Inference-Header-Content-Length)" if header_length is None else ""
        raise V2Error(400, f"request is not valid JSON{hint}: {exc}") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), list) or not payload["inputs"]:
        raise V2Error(400, "expected a JSON object with a non-empty 'inputs' list")
    parameters = payload.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise V2Error(400, "'parameters' must be an object")
    found: dict[int, np.ndarray] = {}
    seen: set[str] = set()
    offset = split
    for item in payload["inputs"]:
        if not isinstance(item, dict):
            raise V2Error(400, "each input must be an object with name, shape, datatype and data")
        index, spec = _spec_for(signature, item.get("name"), seen)
        datatype = _datatype(item, spec.name)
        shape = item.get("shape")
        if not isinstance(shape, list):
            raise V2Error(400, f"input {spec.name!r}: shape must be a list of non-negative integers")
        size = (item.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(body):
                raise V2Error(400, f"input {spec.name!r}: binary_data_size {size!r} runs past the body")
            width = DATATYPES[datatype].itemsize
            if size % width:
                raise V2Error(400, f"input {spec.name!r}: {size} bytes is not a whole number of {datatype} values")
            values = np.frombuffer(view[offset : offset + size], dtype=DATATYPES[datatype])
            offset += size
        elif "data" in item:
            values = _json_values(item["data"], datatype, spec.name)
        else:
            raise V2Error(400, f"input {spec.name!r} has neither data nor parameters.binary_data_size")
        found[index] = check_tensor(spec, datatype, shape, values)
    if offset != len(body):
        raise V2Error(400, f"{len(body) - offset} bytes after the last binary input")
    outputs = payload.get("outputs") or []
    if not isinstance(outputs, list) or not all(isinstance(o, dict) and "name" in o for o in outputs):
        raise V2Error(400, "'outputs' must be a list of objects with a name")
    chosen = _requested(signature, [o["name"] for o in outputs])
    default_binary = bool(parameters.get("binary_data_output", False))
    binary = [bool((o.get("parameters") or {}).get("binary_data", default_binary)) for o in outputs] or [
        default_binary
    ] * len(chosen)
    return Inference(payload.get("id"), _ordered(signature, found), chosen, binary, parameters)


def _json_values(data: Any, datatype: str, name: str) -> np.ndarray:
    """JSON data (flat or nested lists) as a flat array; values that are not of `datatype` are refused."""
    try:
        values = np.asarray(data)
    except ValueError:
        raise V2Error(400, f"input {name!r}: data is not a rectangular list of numbers") from None
    kind = values.dtype.kind
    wanted = DATATYPES[datatype].kind
    fits = kind == wanted or (kind in "iu" and wanted in "iuf") or (kind == "b" and wanted == "b")
    if not fits or values.dtype == object:
        raise V2Error(400, f"input {name!r}: data holds {values.dtype} values, not {datatype}")
    return values.astype(DATATYPES[datatype], copy=False).reshape(-1)


def encode_json(
    model: str, version: str, inference: Inference, signature: Signature, outputs: Sequence[np.ndarray]
) -> tuple[bytes, int | None]:
    """The HTTP answer: (body, header length or None). Outputs asked for as binary follow the JSON header."""
    tensors = []
    blobs: list[bytes] = []
    for index, binary in zip(inference.outputs, inference.binary, strict=True):
        array = outputs[index]
        tensor: dict[str, Any] = {
            "name": signature.outputs[index].name,
            "datatype": DATATYPE_OF[array.dtype],
            "shape": list(array.shape),
        }
        if binary:
            blob = np.ascontiguousarray(array).tobytes()
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = np.ascontiguousarray(array).reshape(-1)
        tensors.append(tensor)
    answer: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": tensors}
    if inference.id is not None:
        answer["id"] = inference.id
    header = orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)


def decode_grpc(request: pb.ModelInferRequest, signature: Signature) -> Inference:
    """A gRPC ModelInferRequest: each input from `raw_input_contents` (in input order) or its typed `contents`."""
    if request.raw_input_contents and len(request.raw_input_contents) != len(request.inputs):
        raise V2Error(400, "raw_input_contents must hold one entry per input")
    found: dict[int, np.ndarray] = {}
    seen: set[str] = set()
    for position, item in enumerate(request.inputs):
        index, spec = _spec_for(signature, item.name, seen)
        datatype = _datatype({"datatype": item.datatype}, spec.name)
        dtype = DATATYPES[datatype]
        if request.raw_input_contents:
            raw = request.raw_input_contents[position]
            if len(raw) % dtype.itemsize:
                raise V2Error(400, f"input {spec.name!r}: {len(raw)} bytes is not a whole number of {datatype} values")
            values = np.frombuffer(raw, dtype=dtype)
        elif datatype in GRPC_CONTENTS:
            values = np.asarray(getattr(item.contents, GRPC_CONTENTS[datatype]), dtype=dtype)
        else:
            raise V2Error(400, f"input {spec.name!r}: {datatype} goes in raw_input_contents")
        found[index] = check_tensor(spec, datatype, list(item.shape), values)
    chosen = _requested(signature, [o.name for o in request.outputs])
    return Inference(request.id or None, _ordered(signature, found), chosen, [True] * len(chosen))


def encode_grpc(
    model: str, version: str, inference: Inference, signature: Signature, outputs: Sequence[np.ndarray]
) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(model_name=model, model_version=version, id=inference.id or "")
    for index in inference.outputs:
        array = outputs[index]
        response.outputs.add(name=signature.outputs[index].name, datatype=DATATYPE_OF[array.dtype], shape=array.shape)
        response.raw_output_contents.append(np.ascontiguousarray(array).tobytes())
    return response

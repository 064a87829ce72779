"""The transport-neutral V2 protocol, batch sizing, worker planning and int8 decisions, as pure functions."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
import torch
from tritonclient.grpc import service_pb2 as pb

from modelfleet.api.inference import InferenceServiceSpec
from modelfleet.inference.builders import pod_template, server_env, service
from modelfleet.runtime.batching import sized_batch
from modelfleet.runtime.modelio import LoadedModel
from modelfleet.runtime.models import build_model
from modelfleet.runtime.processes import worker_plan
from modelfleet.runtime.quantize import calibration_inputs, choose_int8
from modelfleet.runtime.serve import ServerConfig, build_app
from modelfleet.runtime.v2 import Signature, V2Error, decode_grpc, decode_json, encode_grpc, encode_json

SIGNATURE = Signature.from_metadata(
    {
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": [-1, 2]},
            {"name": "ids", "datatype": "INT64", "shape": [-1]},
        ],
        "outputs": [
            {"name": "y", "datatype": "FP32", "shape": [-1]},
            {"name": "z", "datatype": "INT64", "shape": [-1]},
        ],
    }
)


def binary_body(header: dict, *blobs: bytes) -> tuple[bytes, str]:
    head = orjson.dumps(header)
    return b"".join([head, *blobs]), str(len(head))


def test_binary_inputs_are_views_of_the_body_and_json_inputs_go_through_numpy() -> None:
    x = np.array([[1, 2], [3, 4]], np.float32)
    body, length = binary_body(
        {
            "id": "r1",
            "inputs": [
                {"name": "ids", "shape": [2], "datatype": "INT64", "data": [7, 8]},
                {"name": "x", "shape": [2, 2], "datatype": "FP32", "parameters": {"binary_data_size": 16}},
            ],
            "outputs": [{"name": "z", "parameters": {"binary_data": True}}, {"name": "y"}],
        },
        x.tobytes(),
    )
    buffer = bytearray(body)
    inference = decode_json(buffer, length, SIGNATURE)
    assert inference.id == "r1" and inference.outputs == [1, 0] and inference.binary == [True, False]
    np.testing.assert_array_equal(inference.inputs[0], x)
    assert np.shares_memory(inference.inputs[0], np.frombuffer(buffer, np.uint8)), "no copy of binary data"
    np.testing.assert_array_equal(inference.inputs[1], [7, 8])
    body, header_length = encode_json(
        "m", "1", inference, SIGNATURE, [np.array([0.5, 1.5], np.float32), np.array([1, 2], np.int64)]
    )
    header = orjson.loads(body[:header_length])
    assert header["id"] == "r1" and header["outputs"][0]["parameters"] == {"binary_data_size": 16}
    assert header["outputs"][1]["data"] == [0.5, 1.5]
    assert np.frombuffer(body[header_length:], np.int64).tolist() == [1, 2]


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ([{"name": "x", "shape": [1, 2], "datatype": "FP64", "data": [1, 2]}], "'x' has datatype FP64, the model expects FP32"),
        ([{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}], "'x' has shape [1, 3], the model takes [-1, 2]"),
        ([{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}], "missing input 'ids'"),
        ([{"name": "ids", "shape": [1], "datatype": "INT64", "data": [1.5]}], "'ids': data holds float64 values, not INT64"),
        ([{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]},
          {"name": "ids", "shape": [2], "datatype": "INT64", "data": [1, 2]}], "disagree on the batch size"),
    ],
)  # fmt: skip
def test_json_refusals_name_the_tensor(inputs: list[dict], message: str) -> None:
    with pytest.raises(V2Error, match=message.replace("[", r"\[").replace("]", r"\]")) as refused:
        decode_json(orjson.dumps({"inputs": inputs}), None, SIGNATURE)
    assert refused.value.status == 400


def test_grpc_raw_and_typed_contents_decode_alike_and_answers_are_raw() -> None:
    raw = pb.ModelInferRequest(
        id="g", raw_input_contents=[np.ones((1, 2), np.float32).tobytes(), np.int64(3).tobytes()]
    )
    raw.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    raw.inputs.add(name="ids", datatype="INT64", shape=[1])
    typed = pb.ModelInferRequest()
    typed.inputs.add(name="ids", datatype="INT64", shape=[1]).contents.int64_contents.extend([3])
    typed.inputs.add(name="x", datatype="FP32", shape=[1, 2]).contents.fp32_contents.extend([1, 1])
    a, b = decode_grpc(raw, SIGNATURE), decode_grpc(typed, SIGNATURE)
    for left, right in zip(a.inputs, b.inputs, strict=True):
        np.testing.assert_array_equal(left, right)
    answer = encode_grpc("m", "1", a, SIGNATURE, [np.zeros(1, np.float32), np.array([5], np.int64)])
    assert answer.id == "g" and [o.name for o in answer.outputs] == ["y", "z"]
    assert np.frombuffer(answer.raw_output_contents[1], np.int64).tolist() == [5]
    typed.inputs[0].datatype = "INT32"
    with pytest.raises(V2Error, match="'ids' has datatype INT32, the model expects INT64"):
        decode_grpc(typed, SIGNATURE)


def test_the_batch_is_sized_by_the_measured_pass_time() -> None:
    assert sized_batch(64, 0.002, lambda rows: 0.0005 + rows * 0.0001) == 8
    assert sized_batch(64, 1.0, lambda rows: 0.001) == 64
    assert sized_batch(48, 1.0, lambda rows: 0.001) == 48
    assert sized_batch(64, 0.0001, lambda rows: 0.001) == 1


def test_worker_plan_uses_the_cores_and_gpus_there_are(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert worker_plan(0, "cpu", cores=2) == worker_plan(1, "cpu", cores=2)
    assert (worker_plan(0, "cpu", cores=8).workers, worker_plan(0, "cpu", cores=8).threads) == (4, 2)
    assert worker_plan(0, "cuda", cores=8, gpus=2).devices == ("cuda:0", "cuda:1")
    assert worker_plan(3, "cpu", cores=2).threads == 1


def test_int8_is_kept_only_where_smaller_and_faster() -> None:
    torch.manual_seed(0)
    tiny, shape, _ = build_model("paper-mlp")
    kept, decision = choose_int8(tiny, [torch.randn(64, *shape)], 32)
    assert kept is tiny and decision.applied == "none" and "larger" in decision.reason


def test_calibration_rows_default_to_standard_normal_samples(tmp_path: Path) -> None:
    (rows,) = calibration_inputs(tmp_path, [(3,)])
    assert rows.shape == (256, 3) and abs(float(rows.mean())) < 0.2
    torch.save(torch.ones(5, 3), tmp_path / "calibration.pt")
    assert calibration_inputs(tmp_path, [(3,)])[0].shape == (5, 3)


def test_the_grpc_port_is_in_the_env_the_pod_and_the_service() -> None:
    spec = InferenceServiceSpec.model_validate({"model": {"uri": "/m"}, "regions": [{"name": "r1"}]})
    env = {e["name"]: e["value"] for e in server_env("svc", spec, "/m")}
    assert (env["MODELFLEET_PORT"], env["MODELFLEET_GRPC_PORT"]) == ("8080", "8081")
    ports = pod_template("svc", spec, "r1")["spec"]["containers"][0]["ports"]
    assert {"name": "grpc", "containerPort": 8081} in ports
    meta = {"name": "svc", "namespace": "ns", "uid": "u"}
    assert any(p["name"] == "grpc" and p["targetPort"] == "grpc" for p in service(meta, spec, "r1")["spec"]["ports"])


def test_an_fp16_model_takes_and_answers_the_fp32_its_signature_declares() -> None:
    torch.manual_seed(0)
    model, shape, classes = build_model("paper-mlp")
    signature = Signature.from_metadata({"inputShape": list(shape), "classes": classes})
    config = ServerConfig(model_path="unused", model_name="m", grpc_port=0)
    app = build_app(config, LoadedModel(model.half(), signature, torch.float16, "cpu"))
    body = {"inputs": [{"name": "input__0", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}

    async def post() -> httpx.Response:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://server") as client:
                return await client.post("/v2/models/m/infer", json=body)

    answer = asyncio.run(post()).json()["outputs"][0]
    assert answer["datatype"] == "FP32" and answer["shape"] == [1, 2]

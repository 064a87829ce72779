"""The model server as a real process under real concurrent HTTP requests."""

from __future__ import annotations

import asyncio
import signal
import socket
from pathlib import Path

import httpx
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from modelfleet.api.inference import InferenceServiceSpec
from modelfleet.inference.builders import server_env
from modelfleet.runtime.modelio import save_artifact
from modelfleet.runtime.models import build_model
from tests.runtime.factories import wide_mlp
from tests.support.processes import ServerProcess

pytestmark = pytest.mark.runtime


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_for(artifact: Path, **spec: object) -> dict[str, str]:
    """The server env exactly as the InferenceService builder writes it."""
    parsed = InferenceServiceSpec.model_validate(
        {"model": {"uri": f"file://{artifact}", "name": "m"}, "regions": [{"name": "r1"}], **spec}
    )
    return {e["name"]: e["value"] for e in server_env("svc", parsed, str(artifact))}


@pytest.fixture(scope="module")
def mlp_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(1)
    model, shape, classes = build_model("paper-mlp")
    return save_artifact(model, "paper-mlp", shape, classes, tmp_path_factory.mktemp("mlp"), {})


@pytest.fixture(scope="module")
def wide_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, shape, classes = wide_mlp()
    return save_artifact(model, "tests.runtime.factories:wide_mlp", shape, classes, tmp_path_factory.mktemp("wide"), {})


@pytest.fixture
def server(tmp_path: Path):
    started: list[ServerProcess] = []

    def start(env: dict[str, str]) -> ServerProcess:
        proc = ServerProcess(env, "127.0.0.1", free_port(), tmp_path / f"server-{len(started)}.log")
        started.append(proc)
        proc.wait_ready()
        return proc

    yield start
    for proc in started:
        proc.stop()


def request(rows: list[list[float]], datatype: str = "FP32") -> dict:
    return {"inputs": [{"name": "input__0", "shape": [len(rows), len(rows[0])], "datatype": datatype, "data": rows}]}


def metric(url: str, name: str, **labels: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


async def fire(url: str, bodies: list[dict]) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=30) as client:
        return await asyncio.gather(*(client.post(f"{url}/v2/models/m/infer", json=b) for b in bodies))


def test_concurrent_requests_are_batched_and_answered_correctly(server, mlp_artifact: Path) -> None:
    srv = server(env_for(mlp_artifact, batching={"maxBatchSize": 32, "maxDelayMs": 20}))
    reference = torch.jit.load(str(mlp_artifact / "model.pt"))
    inputs = [[[i * 0.1, -i * 0.05, 1.0]] for i in range(64)]
    bad = {"inputs": [{"name": "input__0", "shape": [1, 5], "datatype": "FP32", "data": [1, 2, 3, 4, 5]}]}
    responses = asyncio.run(fire(srv.url, [request(rows) for rows in inputs] + [bad]))
    assert [r.status_code for r in responses[:-1]] == [200] * 64
    assert responses[-1].status_code == 400 and "does not match the model input" in responses[-1].json()["error"]
    for rows, response in zip(inputs, responses, strict=False):
        got = torch.tensor(response.json()["outputs"][0]["data"]).reshape(1, 2)
        assert torch.allclose(got, reference(torch.tensor(rows)), atol=1e-5)
    batches = metric(srv.url, "modelfleet_batch_size_count", model="m")
    assert batches < 65, f"{batches} forward passes for 65 requests: batches formed"
    assert metric(srv.url, "modelfleet_batch_size_bucket", model="m", le="1.0") < batches
    assert metric(srv.url, "modelfleet_requests_total", model="m", code="200") == 64
    assert metric(srv.url, "modelfleet_requests_total", model="m", code="400") == 1


def test_protocol_endpoints_and_refusals(server, mlp_artifact: Path) -> None:
    srv = server(env_for(mlp_artifact))
    assert httpx.get(f"{srv.url}/v2/health/live").json() == {"live": True}
    meta = httpx.get(f"{srv.url}/v2/models/m").json()
    assert meta["inputs"][0]["shape"] == [-1, 3]
    assert httpx.get(f"{srv.url}/v2/models/m/ready").status_code == 200
    assert httpx.get(f"{srv.url}/v2/models/other").status_code == 404
    assert httpx.post(f"{srv.url}/v2/models/other/infer", json=request([[1, 2, 3]])).status_code == 404
    assert httpx.post(f"{srv.url}/v2/models/m/infer", content=b"{not json").status_code == 400
    assert httpx.post(f"{srv.url}/v2/models/m/infer", json=request([[1, 2, 3]], "STRING")).status_code == 400
    wrong_count = {"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
    assert httpx.post(f"{srv.url}/v2/models/m/infer", json=wrong_count).status_code == 400


def status_after_sending(url: str, head: bytes, body: bytes) -> int:
    """Sends the request head and only `body`, then reads the status line: the server answers without the rest."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(head + body)
        return int(conn.recv(64).split(b" ")[1])


def test_oversized_bodies_are_refused_before_they_are_read_whole(server, mlp_artifact: Path) -> None:
    srv = server({**env_for(mlp_artifact), "MODELFLEET_MAX_BODY_BYTES": "100000"})
    post = b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    declared = post + f"Content-Length: {1 << 30}\r\n\r\n".encode()
    assert status_after_sending(srv.url, declared, b'{"inputs": [') == 413, "1 GiB declared, 12 bytes sent"
    chunk = b"%x\r\n%s\r\n" % (50_000, b" " * 50_000)
    chunked = post + b"Transfer-Encoding: chunked\r\n\r\n"
    assert status_after_sending(srv.url, chunked, chunk * 3) == 413, "150 kB streamed of an endless body"
    assert httpx.post(f"{srv.url}/v2/models/m/infer", json=request([[1, 2, 3]])).status_code == 200
    assert metric(srv.url, "modelfleet_rejected_requests_total", model="m", reason="body_too_large") == 2


def test_int8_answers_stay_close_and_the_model_shrinks(server, wide_artifact: Path) -> None:
    fp32 = server(env_for(wide_artifact))
    int8_env = env_for(wide_artifact, model={"uri": f"file://{wide_artifact}", "name": "m", "quantization": "int8"})
    int8 = server({**int8_env, "MODELFLEET_MODEL_FACTORIES": "tests.runtime"})  # its metadata names a factory there
    torch.manual_seed(5)
    rows = torch.randn(16, 64).tolist()
    a = torch.tensor(httpx.post(f"{fp32.url}/v2/models/m/infer", json=request(rows)).json()["outputs"][0]["data"])
    b = torch.tensor(httpx.post(f"{int8.url}/v2/models/m/infer", json=request(rows)).json()["outputs"][0]["data"])
    assert torch.allclose(a, b, atol=0.05), f"max difference {float((a - b).abs().max())}"
    original = metric(int8.url, "modelfleet_model_size_bytes", model="m", stage="original")
    served = metric(int8.url, "modelfleet_model_size_bytes", model="m", stage="served")
    assert served < original / 2.5, (original, served)


def test_sigterm_drains_in_flight_requests(server, mlp_artifact: Path) -> None:
    srv = server(env_for(mlp_artifact, batching={"maxBatchSize": 1000, "maxDelayMs": 1500}))

    async def scenario() -> list[httpx.Response]:
        pending = asyncio.ensure_future(fire(srv.url, [request([[1.0, 2.0, 3.0]])] * 8))
        await asyncio.sleep(0.5)  # requests are waiting in the batcher
        srv.proc.send_signal(signal.SIGTERM)
        return await pending

    responses = asyncio.run(scenario())
    assert [r.status_code for r in responses] == [200] * 8
    assert srv.proc.wait(timeout=30) in (0, -signal.SIGTERM), "exits on its own once drained"

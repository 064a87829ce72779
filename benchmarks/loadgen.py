"""The serving benchmark's load generator, run as its own process (pinned to its own cores by benchmarks/serving.py):
`concurrency` clients in a closed loop against a V2 server for `seconds`; prints one JSON line of figures.

Modes: `json` (HTTP, JSON tensors), `binary` (HTTP, binary tensor extension both ways), `grpc` (raw contents).
Requests are built once; answers are checked for status only (both servers get the same client). Given the
server's pid, it also reports the server's CPU per request over the timed part (its worker processes included).

    python -m benchmarks.loadgen --target 127.0.0.1:8080 --mode json --shape 1,64 --concurrency 16 --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable

import aiohttp
import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from benchmarks.figures import tree_cpu_seconds


def http_request(shape: list[int], binary: bool) -> tuple[bytes, dict[str, str]]:
    values = np.full(shape, 0.1, np.float32)
    tensor = {"name": "input__0", "shape": shape, "datatype": "FP32"}
    if not binary:
        return json.dumps({"inputs": [{**tensor, "data": values.ravel().tolist()}]}).encode(), {
            "content-type": "application/json"
        }
    raw = values.tobytes()
    header = json.dumps(
        {
            "inputs": [{**tensor, "parameters": {"binary_data_size": len(raw)}}],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    return header + raw, {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(header)),
    }


def grpc_request(shape: list[int]) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m", raw_input_contents=[np.full(shape, 0.1, np.float32).tobytes()])
    request.inputs.add(name="input__0", datatype="FP32", shape=shape)
    return request


async def run(
    target: str, mode: str, shape: list[int], concurrency: int, seconds: float, server_pid: int | None = None
) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    stop = 0.0

    async def closed_loop(call: Callable[[], Awaitable[bool]]) -> None:
        nonlocal errors
        while time.monotonic() < stop:
            started = time.perf_counter()
            try:
                ok = await call()
            except (TimeoutError, aiohttp.ClientError, grpc.RpcError):
                ok = False
            if ok:
                latencies.append(time.perf_counter() - started)
            else:
                errors += 1

    async def measured(call: Callable[[], Awaitable[bool]]) -> tuple[float, float, float]:
        """Runs the clients for `seconds` after one untimed round (every client's connection opened first: a
        request's latency is never its TCP connect); (elapsed, own CPU seconds, server CPU seconds) of the timed
        part."""
        nonlocal stop
        await asyncio.gather(*(call() for _ in range(concurrency)))
        server_begun = tree_cpu_seconds(server_pid) if server_pid else 0.0
        begun, cpu_begun = time.monotonic(), time.process_time()
        stop = begun + seconds
        await asyncio.gather(*(closed_loop(call) for _ in range(concurrency)))
        elapsed, cpu = time.monotonic() - begun, time.process_time() - cpu_begun
        return elapsed, cpu, (tree_cpu_seconds(server_pid) - server_begun) if server_pid else 0.0

    if mode == "grpc":
        async with grpc.aio.insecure_channel(target, options=[("grpc.max_receive_message_length", -1)]) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            request = grpc_request(shape)

            async def call() -> bool:
                await stub.ModelInfer(request, timeout=30)
                return True

            elapsed, cpu, server_cpu = await measured(call)
    else:
        body, headers = http_request(shape, mode == "binary")
        url = f"http://{target}/v2/models/m/infer"
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:

            async def call() -> bool:
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    return response.status == 200

            elapsed, cpu, server_cpu = await measured(call)
    # the load generator's own CPU use: near 100 % of its core, it (not the server) may be what limits req/s
    client_cpu = round(100 * cpu / elapsed)
    latencies.sort()
    if not latencies:
        return {"rps": 0.0, "p50_ms": float("nan"), "p99_ms": float("nan"), "errors": errors, "client_cpu": client_cpu}
    calls = len(latencies) + errors
    return {
        "client_cpu": client_cpu,
        **({"server_cpu_ms": round(1000 * server_cpu / calls, 3)} if server_pid else {}),
        "rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 2),
        "p99_ms": round(latencies[max(0, int(len(latencies) * 0.99) - 1)] * 1000, 2),
        "errors": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", required=True, help="host:port (the gRPC port for --mode grpc)")
    parser.add_argument("--mode", choices=["json", "binary", "grpc"], required=True)
    parser.add_argument("--shape", required=True, help="request tensor shape, batch first: 1,64")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--server-pid", type=int, help="report the server's CPU per request")
    args = parser.parse_args()
    shape = [int(d) for d in args.shape.split(",")]
    print(json.dumps(asyncio.run(run(args.target, args.mode, shape, args.concurrency, args.seconds, args.server_pid))))


if __name__ == "__main__":
    main()

"""The gateway side by side with nginx (Debian's package) as a reverse proxy to the same model servers:

1. overhead: p50/p99 latency and requests/s at 1 and 16 clients, direct to one server, through nginx, through the
   gateway (added latency = proxy - direct);
2. failover: two servers, one killed (SIGKILL) mid-load: requests lost;
3. cold start: the first requests for a service whose only replica is just starting: how many succeed;
4. a simulated multi-region autoscaling trace: unserved request-seconds with spillover vs per-region scaling alone
   (Knative's KPA per region), each region scaled on its own demand, so replica-seconds are equal by construction.

    python -m benchmarks.gateway [--quick] [--repeats 3] [--seconds 3]

nginx runs one worker (the gateway is one process) with upstream keep-alive, and retries on error and timeout
including POSTs (`proxy_next_upstream error timeout non_idempotent`; its default does not retry a POST). The
benchmark installs nginx with apt-get when it is absent and it runs as root. Servers and proxies are pinned to one
half of the cores, the load generator (benchmarks/loadgen.py) to the other; on a shared 2-core machine the figures
are noisy: compare within one run. `python -m benchmarks.gateway static ...` is the gateway with a static replica
list (a JSON file it re-reads), which stands in for the cluster watch here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import torch
from rich.console import Console
from rich.table import Table

from benchmarks.peers import KnativeKPA
from benchmarks.serving import ROOT, core_split, free_port, pinned, start_modelfleet, wait_ready
from benchmarks.traces import diurnal, heavy_tail
from modelfleet.runtime.modelio import save_artifact
from modelfleet.runtime.models import build_model

BODY = {"inputs": [{"name": "input__0", "shape": [1, 3], "datatype": "FP32", "data": [[0.1, 0.2, 0.3]]}]}
console = Console(width=max(160, Console().width))


# --- the gateway with a static replica list -------------------------------------------------------------------


def service_object(regions: list[str]) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "bench", "name": "m", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"model": {"uri": "/m", "name": "m"}, "regions": [{"name": r} for r in regions]},
    }


def pod_object(name: str, region: str, address: str) -> dict[str, Any]:
    host, port = address.rsplit(":", 1)
    return {
        "metadata": {"namespace": "bench", "name": name,
                     "labels": {"modelfleet.dev/service-name": "m", "modelfleet.dev/region": region}},
        "spec": {"containers": [{"ports": [{"name": "http", "containerPort": int(port)}]}]},
        "status": {"phase": "Running", "podIP": host, "conditions": [{"type": "Ready", "status": "True"}]},
    }  # fmt: skip


def serve_static(replicas: Path, port: int, region: str) -> None:
    from modelfleet.gateway.app import Gateway, build_app, server
    from modelfleet.gateway.config import GatewayConfig

    config = GatewayConfig(region=region, latency_ms={"a": {"b": 30}})
    gateway = Gateway(config)
    app = build_app(config, gateway, watch_cluster=False)

    async def follow() -> None:
        seen = None
        while True:
            stamp = replicas.stat().st_mtime_ns
            if stamp != seen:
                seen, data = stamp, json.loads(replicas.read_text())
                gateway.store.reset_services(data["services"])
                gateway.store.reset_pods(data["pods"])
            await asyncio.sleep(0.1)

    gateway_server = server(app, "127.0.0.1", port)

    async def main() -> None:
        task = asyncio.create_task(follow())
        await gateway_server.serve()
        task.cancel()

    with asyncio.Runner(loop_factory=gateway_server.config.get_loop_factory()) as runner:  # uvloop, as the CLI's
        runner.run(main())


class Proxy:
    def __init__(self, proc: subprocess.Popen, address: str, replicas: Path | None = None) -> None:
        self.proc, self.address, self.replicas = proc, address, replicas

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def write_replicas(path: Path, upstreams: dict[str, str]) -> None:
    """upstreams: region -> address (one replica each)."""
    regions = sorted({"a", "b", *upstreams})
    pods = [pod_object(f"m-{region}", region, address) for region, address in upstreams.items()]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"services": [service_object(regions)], "pods": pods}))
    tmp.replace(path)


def start_gateway(upstreams: dict[str, str], work: Path, cores: str | None, ready_path: str) -> Proxy:
    port, replicas = free_port(), work / f"replicas-{time.monotonic_ns()}.json"
    write_replicas(replicas, upstreams)
    command = [sys.executable, "-m", "benchmarks.gateway", "static", str(replicas), str(port), "a"]
    proc = subprocess.Popen(pinned(command, cores), env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=(work / "gateway.log").open("ab"), stderr=subprocess.STDOUT)  # fmt: skip
    wait_ready(f"http://127.0.0.1:{port}", proc, ready_path)
    return Proxy(proc, f"127.0.0.1:{port}", replicas)


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if found:
        return found
    if os.geteuid() != 0:
        raise SystemExit("nginx is not installed (apt-get install nginx, as root)")
    console.print("installing nginx (apt-get install -y nginx)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(["apt-get", "install", "-y", "-q", "nginx"], capture_output=True, env=env).returncode:
        subprocess.run(["apt-get", "update", "-q"], check=True, capture_output=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-q", "nginx"], check=True, capture_output=True, env=env)
    return shutil.which("nginx") or "/usr/sbin/nginx"


def start_nginx(upstreams: list[str], work: Path, cores: str | None, ready_path: str | None) -> Proxy:
    port = free_port()
    prefix = Path(tempfile.mkdtemp(prefix="nginx-", dir=work))
    servers = "\n".join(f"    server {u} max_fails=1 fail_timeout=5s;" for u in upstreams)
    temp = " ".join(
        f"{kind}_temp_path {prefix}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (prefix / "nginx.conf").write_text(f"""
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  {temp}
  upstream models {{
{servers}
    keepalive 128;
  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://models;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_next_upstream error timeout non_idempotent;
    }}
  }}
}}
""")
    command = [nginx_binary(), "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-g", "daemon off;"]
    proc = subprocess.Popen(pinned(command, cores), stdout=(work / "nginx.log").open("ab"), stderr=subprocess.STDOUT)
    if ready_path:
        wait_ready(f"http://127.0.0.1:{port}", proc, ready_path)
    else:
        time.sleep(0.5)
    return Proxy(proc, f"127.0.0.1:{port}")


def loadgen(target: str, clients: int, seconds: float, cores: str | None) -> subprocess.Popen:
    command = [sys.executable, "-m", "benchmarks.loadgen", "--target", target, "--mode", "json", "--shape", "1,3",
               "--concurrency", str(clients), "--seconds", str(seconds)]  # fmt: skip
    return subprocess.Popen(pinned(command, cores), stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip


def figures(proc: subprocess.Popen) -> dict[str, float]:
    out, _ = proc.communicate()
    return json.loads(out.strip().splitlines()[-1])


# --- 1. overhead ---------------------------------------------------------------------------------------------


def overhead(artifact: Path, work: Path, repeats: int, seconds: float) -> list[dict]:
    servers_cores, client_cores = core_split()
    rows = []
    for repeat in range(repeats):
        server = start_modelfleet(artifact, "none", servers_cores, work / "server.log")
        proxies = {
            "nginx": start_nginx([server[1]], work, servers_cores, "/v2/health/ready"),
            "gateway": start_gateway({"a": server[1]}, work, servers_cores, "/v2/models/m/ready"),
        }
        try:
            for clients in (1, 16):
                targets = {"direct": server[1], **{name: p.address for name, p in proxies.items()}}
                for name, target in targets.items():
                    figures(loadgen(target, clients, 1.0, client_cores))  # warm-up
                    result = figures(loadgen(target, clients, seconds, client_cores))
                    rows.append({"target": name, "clients": clients, "repeat": repeat, **result})
        finally:
            for proxy in proxies.values():
                proxy.stop()
            server[0].terminate()
            server[0].wait()
    return rows


# --- 2. failover ---------------------------------------------------------------------------------------------


def failover(artifact: Path, work: Path, repeats: int, seconds: float) -> list[dict]:
    servers_cores, client_cores = core_split()
    rows = []
    for repeat in range(repeats):
        for name in ("nginx", "gateway"):
            a = start_modelfleet(artifact, "none", servers_cores, work / "server.log")
            b = start_modelfleet(artifact, "none", servers_cores, work / "server.log")
            proxy = (
                start_nginx([a[1], b[1]], work, servers_cores, "/v2/health/ready")
                if name == "nginx"
                else start_gateway({"a": a[1], "b": b[1]}, work, servers_cores, "/v2/models/m/ready")
            )
            try:
                load = loadgen(proxy.address, 8, seconds, client_cores)
                time.sleep(seconds / 3)
                a[0].kill()  # the nearest region's only server, mid-load
                result = figures(load)
                rows.append(
                    {"proxy": name, "repeat": repeat, "lost": result["errors"], "served": result["rps"] * seconds}
                )
            finally:
                proxy.stop()
                for server in (a, b):
                    server[0].kill()
                    server[0].wait()
    return rows


# --- 3. cold start -------------------------------------------------------------------------------------------


async def first_requests(target: str, count: int) -> list[tuple[bool, float]]:
    async with httpx.AsyncClient(timeout=120) as client:

        async def one() -> tuple[bool, float]:
            started = time.monotonic()
            try:
                answer = await client.post(f"http://{target}/v2/models/m/infer", json=BODY)
                return answer.status_code == 200, time.monotonic() - started
            except httpx.HTTPError:
                return False, time.monotonic() - started

        return await asyncio.gather(*(one() for _ in range(count)))


def cold_start(artifact: Path, work: Path, repeats: int, count: int = 8) -> list[dict]:
    servers_cores, _ = core_split()
    rows = []
    for repeat in range(repeats):
        for name in ("nginx", "gateway"):
            port = free_port()
            address = f"127.0.0.1:{port}"
            proxy = (
                start_nginx([address], work, servers_cores, None)
                if name == "nginx"
                else start_gateway({}, work, servers_cores, "/v2/health/ready")
            )
            try:
                env = {**os.environ, "PYTHONPATH": str(ROOT), "MODELFLEET_MODEL_PATH": str(artifact),
                       "MODELFLEET_MODEL_NAME": "m", "MODELFLEET_HOST": "127.0.0.1", "MODELFLEET_PORT": str(port)}  # fmt: skip
                server = subprocess.Popen(pinned([sys.executable, "-m", "modelfleet.runtime.serve"], servers_cores),
                                          env=env, stdout=(work / "server.log").open("ab"), stderr=subprocess.STDOUT)  # fmt: skip
                if proxy.replicas:  # the pod is reported Ready at once; the gateway probes it before use
                    write_replicas(proxy.replicas, {"a": address})
                results = asyncio.run(first_requests(proxy.address, count))
                ok = [t for good, t in results if good]
                rows.append({"proxy": name, "repeat": repeat, "succeeded": len(ok), "sent": count,
                             "first_answer_s": round(min(ok), 2) if ok else None})  # fmt: skip
            finally:
                proxy.stop()
                server.kill()
                server.wait()
    return rows


# --- 4. multi-region autoscaling trace -----------------------------------------------------------------------

CAPACITY = 10.0
NEAREST = {"a": ["b", "c"], "b": ["a", "c"], "c": ["b", "a"]}


def regional_traces(seconds: int) -> dict[str, list[float]]:
    """Three regions: a day's cycle shifted by a third in each (time zones), plus each region's own bursts."""
    shifted = {r: diurnal(seconds + 1200, seed=i)[i * 600 : i * 600 + seconds] for i, r in enumerate(NEAREST)}
    bursts = {r: heavy_tail(seconds, seed=10 + i) for i, r in enumerate(NEAREST)}
    return {r: [0.5 * s + 0.5 * b for s, b in zip(shifted[r], bursts[r], strict=True)] for r in NEAREST}


def simulate_regions(traces: dict[str, list[float]], startup: float, spill: bool, tick: float = 2.0) -> dict:
    """Each region scaled by its own KPA on its own demand; with `spill`, demand beyond a region's ready capacity
    is served by the nearest regions' spare ready capacity."""
    scalers = {r: KnativeKPA(CAPACITY) for r in traces}
    starts: dict[str, list[float]] = {r: [-startup] for r in traces}
    unserved = replica_seconds = cross = 0.0
    next_tick = 0.0
    for second in range(len(next(iter(traces.values())))):
        now = float(second)
        ready = {r: sum(1 for s in starts[r] if now - s >= startup) for r in traces}
        if now >= next_tick:
            for r, scale in scalers.items():
                wanted = scale(now, traces[r][second] if ready[r] else None, len(starts[r]), ready[r])
                if wanted > len(starts[r]):
                    starts[r] += [now] * (wanted - len(starts[r]))
                elif wanted < len(starts[r]):
                    starts[r] = sorted(starts[r])[:wanted]
            next_tick = now + tick
            ready = {r: sum(1 for s in starts[r] if now - s >= startup) for r in traces}
        spare = {r: ready[r] * CAPACITY - min(traces[r][second], ready[r] * CAPACITY) for r in traces}
        for r in traces:
            excess = max(0.0, traces[r][second] - ready[r] * CAPACITY)
            if spill:
                for other in NEAREST[r]:
                    moved = min(excess, spare[other])
                    spare[other] -= moved
                    excess -= moved
                    cross += moved
            unserved += excess
            replica_seconds += len(starts[r])
    total = sum(sum(t) for t in traces.values())
    return {"unserved_request_seconds": round(unserved, 1), "replica_seconds": round(replica_seconds, 1),
            "cross_region_share": round(cross / total, 4)}  # fmt: skip


def trace_rows(quick: bool) -> list[dict]:
    seconds = 1800 if quick else 3600
    traces = regional_traces(seconds)
    rows = []
    for startup in (30, 120):
        for spill in (False, True):
            rows.append({"startup": startup, "policy": "spillover + KPA" if spill else "per-region KPA",
                         **simulate_regions(traces, startup, spill)})  # fmt: skip
    return rows


# --- report --------------------------------------------------------------------------------------------------


def med(values: list[float]) -> str:
    values = [round(v, 2) for v in values if v is not None]
    if not values:
        return "-"
    return f"{statistics.median(values):g} [{min(values):g}-{max(values):g}]"


def paired(runs: dict[int, dict], base: dict[int, dict], field: str) -> list[float]:
    """`field` of each repeat less the same repeat's figure in `base` (the machine's noise moves both alike)."""
    return [run[field] - base[k][field] for k, run in runs.items() if k in base]


def report(results: dict[str, list[dict]]) -> None:
    rows = results["overhead"]
    table = Table(title="Proxy overhead, one model server: median \\[min-max] over repeats; added latency and the "
                        "req/s ratio paired within each repeat")  # fmt: skip
    for col in ("clients", "target", "p50 ms", "p99 ms", "req/s", "added p50 ms", "added p99 ms", "req/s vs nginx"):
        table.add_column(col, justify="right")
    for clients in (1, 16):
        at = {
            t: {r["repeat"]: r for r in rows if r["clients"] == clients and r["target"] == t}
            for t in ("direct", "nginx", "gateway")
        }
        for target, runs in at.items():
            ratios = [run["rps"] / at["nginx"][k]["rps"] for k, run in runs.items() if k in at["nginx"]]
            added = [med(paired(runs, at["direct"], f)) if target != "direct" else "" for f in ("p50_ms", "p99_ms")]
            table.add_row(
                str(clients), target, med([r["p50_ms"] for r in runs.values()]),
                med([r["p99_ms"] for r in runs.values()]), med([r["rps"] for r in runs.values()]), *added,
                med([round(r, 2) for r in ratios]),
            )  # fmt: skip
        table.add_section()
    console.print(table)

    table = Table(title="Failover: one of two servers killed mid-load (8 clients)")
    for col in ("proxy", "requests lost", "requests served"):
        table.add_column(col, justify="right")
    for proxy in ("nginx", "gateway"):
        runs = [r for r in results["failover"] if r["proxy"] == proxy]
        table.add_row(proxy, med([r["lost"] for r in runs]), med([round(r["served"]) for r in runs]))
    console.print(table)

    table = Table(title="Cold start: 8 first requests while the only replica starts")
    for col in ("proxy", "succeeded", "first answer s"):
        table.add_column(col, justify="right")
    for proxy in ("nginx", "gateway"):
        runs = [r for r in results["cold_start"] if r["proxy"] == proxy]
        share = [100 * r["succeeded"] / r["sent"] for r in runs]
        table.add_row(proxy, f"{med(share)} %", med([r["first_answer_s"] for r in runs]))
    console.print(table)

    table = Table(title="Three regions, shifted day cycles + regional bursts, replica capacity 10 (simulated)")
    for col in ("start-up s", "policy", "unserved req-s", "replica-s", "served cross-region", "unserved ratio"):
        table.add_column(col, justify="right")
    for startup in (30, 120):
        base, spill = (next(r for r in results["trace"] if r["startup"] == startup and r["policy"] == p)
                       for p in ("per-region KPA", "spillover + KPA"))  # fmt: skip
        for row in (base, spill):
            ratio = (
                row["unserved_request_seconds"] / base["unserved_request_seconds"]
                if base["unserved_request_seconds"]
                else 0
            )
            table.add_row(str(startup), row["policy"], f"{row['unserved_request_seconds']:g}",
                          f"{row['replica_seconds']:g}", f"{100 * row['cross_region_share']:.1f} %", f"{ratio:.2f}")  # fmt: skip
    console.print(table)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "static":
        serve_static(Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gateway.json"))
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats
    nginx_binary()
    with tempfile.TemporaryDirectory(prefix="mf-gateway-bench-") as tmp:
        work = Path(tmp)
        torch.manual_seed(0)
        net, shape, classes = build_model("paper-mlp")
        artifact = save_artifact(net, "paper-mlp", shape, classes, work / "model", {})
        results = {
            "overhead": overhead(artifact, work, repeats, args.seconds),
            "failover": failover(artifact, work, repeats, 6.0),
            "cold_start": cold_start(artifact, work, repeats),
            "trace": trace_rows(args.quick),
        }
    report(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    console.print(f"raw figures: {args.out}")


if __name__ == "__main__":
    main()

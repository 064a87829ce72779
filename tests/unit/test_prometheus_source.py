"""The Prometheus load source against a small Prometheus-shaped HTTP server on loopback."""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import parse_qs, urlparse

import pytest

from modelfleet.api.inference import Autoscaling
from modelfleet.inference.load_sources import prometheus_load


@pytest.fixture
def prometheus():
    queries: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.startswith("/elsewhere"):
                self.send_response(302)
                self.send_header("Location", "/api/v1/query?" + urlparse(self.path).query)
                self.end_headers()
                return
            query = parse_qs(urlparse(self.path).query)["query"][0]
            queries.append(query)
            body = {
                "status": "success",
                "data": {"resultType": "vector", "result": [{"metric": {}, "value": [0, "12"]}]},
            }
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *_: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", queries
    server.shutdown()


def test_concurrency_from_prometheus(prometheus) -> None:
    url, queries = prometheus
    policy = Autoscaling(target=4, source="Prometheus", prometheusUrl=url)
    load, per_replica = asyncio.run(prometheus_load(policy, "ns", "svc-r1", ready=3))
    assert load == 3.0 and per_replica == 4.0
    assert queries == ['sum(modelfleet_inflight_requests{namespace="ns",pod=~"svc-r1-.*"})']


def test_unreachable_prometheus_gives_no_sample() -> None:
    policy = Autoscaling(target=4, source="Prometheus", prometheusUrl="http://127.0.0.1:9")
    assert asyncio.run(prometheus_load(policy, "ns", "svc-r1", ready=3)) == (None, None)


def test_a_redirect_is_not_followed(prometheus) -> None:
    """The policy allows the URL a user gave, not wherever its server would send the operator."""
    url, queries = prometheus
    policy = Autoscaling(target=4, source="Prometheus", prometheusUrl=f"{url}/elsewhere")
    assert asyncio.run(prometheus_load(policy, "ns", "svc-r1", ready=3)) == (None, None)
    assert queries == []

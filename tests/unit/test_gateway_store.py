"""The gateway's view of the cluster: which pods are replicas, listings that replace, the model-name lookup."""

from __future__ import annotations

from typing import Any

from modelfleet.gateway.config import GatewayConfig
from modelfleet.gateway.router import Router
from modelfleet.gateway.store import Store, replica_of


def pod(name: str, region: str = "a", ip: str = "127.100.0.1", ready: bool = True, ns: str = "ns") -> dict[str, Any]:
    labels = {"modelfleet.dev/service-name": "svc", "modelfleet.dev/region": region}
    return {
        "metadata": {"namespace": ns, "name": name, "labels": labels},
        "spec": {"containers": [{"ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": str(ready)}]},
    }


def service(name: str, model: str | None = None, created: str = "2026-01-01T00:00:00Z", ns: str = "ns") -> dict:
    spec = {"model": {"uri": "/m", **({"name": model} if model else {})}, "regions": [{"name": "a"}, {"name": "b"}]}
    return {"metadata": {"namespace": ns, "name": name, "creationTimestamp": created}, "spec": spec}


def test_only_ready_pods_with_an_address_and_http_port_are_replicas() -> None:
    assert replica_of(pod("p")).address == "127.100.0.1:8080"
    assert replica_of(pod("p", ip="fd00::1")).address == "[fd00::1]:8080"
    assert replica_of(pod("p", ready=False)) is None
    no_ip = pod("p")
    del no_ip["status"]["podIP"]
    assert replica_of(no_ip) is None


def test_a_listing_replaces_what_its_namespace_had_and_listeners_hear_of_changes() -> None:
    store = Store()
    changed: list[tuple[str, str]] = []
    store.listeners.append(changed.append)
    store.reset_pods([pod("p1"), pod("q1", ns="other")])
    store.pod_event("MODIFIED", pod("p2", ip="127.100.0.2"))
    store.reset_pods([pod("p3", ip="127.100.0.3")], namespace="ns")  # p1 and p2 went while the watch was down
    assert sorted(k[1] for k in store.replicas) == ["p3", "q1"]
    store.pod_event("MODIFIED", pod("p3", ip="127.100.0.3", ready=False))
    assert sorted(k[1] for k in store.replicas) == ["q1"]
    assert ("ns", "svc") in changed and ("other", "svc") in changed


def test_the_oldest_service_keeps_a_model_name() -> None:
    store = Store()
    store.reset_services([service("new", "m", "2026-02-01T00:00:00Z"), service("old", "m", ns="x"), service("solo")])
    assert store.service_for_model("m").name == "old"
    assert store.service_for_model("solo").model == "solo"
    store.service_event("DELETED", service("old", "m", ns="x"))
    assert store.service_for_model("m").name == "new"
    assert Store(namespaces=["x"]).service_for_model("m") is None


def test_the_router_picks_the_least_loaded_probed_replica() -> None:
    store = Store()
    router = Router(GatewayConfig(region="a"), store)
    store.listeners.append(router.sync)
    store.reset_services([service("svc")])
    store.reset_pods([pod("p1", ip="127.100.0.1"), pod("p2", ip="127.100.0.2")])
    info = store.service_for_model("svc")
    assert router.pick(info, "a") is None  # not probed yet
    replicas = sorted(store.replicas_of(info.key), key=lambda r: r.pod)
    for r in replicas:
        router.outliers.probed(r, True, 0.0)
    router.inflight[replicas[0]] = 2
    assert router.pick(info, "a") == replicas[1]
    assert router.pick(info, "a", avoid=replicas[1]) == replicas[0]
    assert router.route(info, "b").primary == "a" and router.route(info, "b").cold == "b"
    store.reset_pods([])
    assert router.outliers.health == {}


def test_the_router_caches_a_services_replicas_until_the_store_or_an_outlier_changes() -> None:
    store = Store()
    router = Router(GatewayConfig(region="a"), store)
    store.listeners.append(router.sync)
    store.reset_services([service("svc")])
    store.reset_pods([pod("p1", ip="127.100.0.1")])
    info = store.service_for_model("svc")
    (p1,) = store.replicas_of(info.key)
    router.outliers.probed(p1, True, 0.0)
    assert router.pick(info, "a") == p1
    router.outliers.failed(p1, 1.0, refused=True)  # ejected: the cached pool is dropped
    assert router.pick(info, "a") is None and router.route(info, "a").primary is None
    store.pod_event("ADDED", pod("p2", ip="127.100.0.2"))
    p2 = next(r for r in store.replicas_of(info.key) if r.pod == "p2")
    router.outliers.probed(p2, True, 2.0)
    assert router.pick(info, "a") == p2 and router.loads(info)["a"].pods == 2

"""The API paths the operator writes to (pure)."""

from __future__ import annotations

import pytest

from modelfleet import kube


@pytest.mark.parametrize(
    ("api_version", "kind", "name", "path"),
    [
        ("v1", "Pod", "", "/api/v1/namespaces/ns/pods"),
        ("v1", "Service", "job", "/api/v1/namespaces/ns/services/job"),
        ("apps/v1", "Deployment", "svc-us-west-1", "/apis/apps/v1/namespaces/ns/deployments/svc-us-west-1"),
        (
            "gateway.networking.k8s.io/v1",
            "HTTPRoute",
            "svc",
            "/apis/gateway.networking.k8s.io/v1/namespaces/ns/httproutes/svc",
        ),
    ],
)
def test_object_path_names_the_collection_or_the_object(api_version: str, kind: str, name: str, path: str) -> None:
    assert kube.object_path({"apiVersion": api_version, "kind": kind}, "ns", name) == path


def test_a_kind_the_operator_does_not_write_has_no_path() -> None:
    with pytest.raises(KeyError):
        kube.object_path({"apiVersion": "v1", "kind": "Secret"}, "ns")

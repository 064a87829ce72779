"""Thin, idempotent writes through the official Kubernetes client, run off the event loop."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any, TypeVar

import kopf
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from prometheus_client import Counter
from pydantic import ValidationError

from modelfleet.api.common import GROUP, VERSION, invalid_spec_status, validation_message

T = TypeVar("T")


@functools.cache
def api() -> client.ApiClient:
    """One shared client: in-cluster config inside a pod, else KUBECONFIG."""
    try:
        config.load_incluster_config()
        configuration = client.Configuration.get_default_copy()
    except config.ConfigException:
        configuration = client.Configuration()
        config.load_kube_config(client_configuration=configuration)
    configuration.connection_pool_maxsize = 64
    return client.ApiClient(configuration)


def core() -> client.CoreV1Api:
    return client.CoreV1Api(api())


def apps() -> client.AppsV1Api:
    return client.AppsV1Api(api())


def custom() -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api())


API_REQUESTS = Counter("modelfleet_api_requests", "Kubernetes API requests the reconcilers made.", ["call"])


async def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    API_REQUESTS.labels(fn.__name__).inc()
    return await asyncio.to_thread(fn, *args, **kwargs)


async def create(fn: Callable[..., Any], namespace: str, body: dict[str, Any]) -> bool:
    """Creates the object; False when it already exists (a retried reconcile finds what it made)."""
    try:
        await call(fn, namespace, body)
        return True
    except ApiException as exc:
        if exc.status == 409:
            return False
        raise


async def delete_pod(namespace: str, name: str, force: bool = False) -> None:
    """Deletes a pod (force: grace period 0, for pods on lost nodes); gone already is fine."""
    body = client.V1DeleteOptions(grace_period_seconds=0) if force else None
    try:
        await call(core().delete_namespaced_pod, name, namespace, body=body)
    except ApiException as exc:
        if exc.status != 404:
            raise


async def patch_pod(namespace: str, name: str, patch: dict[str, Any]) -> None:
    try:
        await call(core().patch_namespaced_pod, name, namespace, patch)
    except ApiException as exc:
        if exc.status != 404:
            raise


async def list_pods(namespace: str, selector: str) -> list[dict[str, Any]]:
    """A fresh (quorum) read of the pods that match, as plain dicts."""
    result = await call(core().list_namespaced_pod, namespace, label_selector=selector)
    return [api().sanitize_for_serialization(p) for p in result.items]


async def patch_status(plural: str, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any] | None:
    """Merge-patches the status subresource; returns the updated object (None when the object is gone)."""
    try:
        return await call(
            custom().patch_namespaced_custom_object_status,
            GROUP,
            VERSION,
            namespace,
            plural,
            name,
            {"status": status},
        )
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


async def delete_custom(plural: str, namespace: str, name: str) -> None:
    try:
        await call(
            custom().delete_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            plural,
            name,
            body=client.V1DeleteOptions(propagation_policy="Background"),
        )
    except ApiException as exc:
        if exc.status != 404:
            raise


async def report_invalid_spec(
    body: dict[str, Any], plural: str, exc: ValidationError, condition_type: str, phase: str
) -> dict[str, Any] | None:
    """A spec the schema let through but the operator cannot use: a condition with reason InvalidSpec and a
    Warning Event, once per generation. Returns the updated object (None when nothing was written)."""
    meta, prev = body["metadata"], body.get("status") or {}
    generation = meta.get("generation", 1)
    if prev.get("observedGeneration") == generation:
        return None
    message = validation_message(exc)
    kopf.warn(body, reason="InvalidSpec", message=message)
    status = invalid_spec_status(prev, generation, message, condition_type, phase)
    return await patch_status(plural, meta["namespace"], meta["name"], status)

"""Thin, idempotent writes through the official Kubernetes client, run off the event loop."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable
from typing import Any, TypeVar

import kopf
import orjson
import urllib3
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


@functools.cache  # each API object once: making one imports and builds (2 % of the operator's CPU at scale)
def core() -> client.CoreV1Api:
    return client.CoreV1Api(api())


@functools.cache
def apps() -> client.AppsV1Api:
    return client.AppsV1Api(api())


@functools.cache
def custom() -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api())


@functools.cache
def scheduling() -> client.SchedulingV1Api:
    return client.SchedulingV1Api(api())


API_REQUESTS = Counter("modelfleet_api_requests", "Kubernetes API requests the reconcilers made.", ["call"])
REQUEST_TIMEOUT = (5.0, 30.0)
"""(connect, read) seconds for every request: a hung apiserver connection never stalls a reconcile for ever."""


class Refused(Exception):
    """The API server refused an object the operator built from the spec (a 4xx other than 404/409), or the
    operator's policy refused the spec (PolicyDenied)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def refusal(exc: ApiException) -> Refused | None:
    """A refusal that retrying will not fix: InvalidSpec (400, 422) or CreateFailed (403 and other 4xx);
    None for 404, 408, 409, 429 and server errors, which are transient or handled by the caller."""
    if exc.status is None or not 400 <= exc.status < 500 or exc.status in (404, 408, 409, 429):
        return None
    try:
        message = json.loads(exc.body or "{}").get("message") or exc.reason
    except ValueError:
        message = exc.body or exc.reason
    return Refused("InvalidSpec" if exc.status in (400, 422) else "CreateFailed", str(message))


class NamespaceGone(Exception):
    """The object's namespace is being deleted, or is gone: nothing can be made in it, and the object that asked
    goes with it. A reconcile loop that meets it stops (`loops.ReconcileLoops`) instead of retrying."""


def raise_if_namespace_gone(exc: ApiException) -> None:
    """NamespaceGone for a 403 whose cause is NamespaceTerminating, or a 404 for the namespace itself."""
    if exc.status not in (403, 404):
        return
    try:
        status = json.loads(exc.body or "{}")
        details = status.get("details") or {}
    except (ValueError, AttributeError):
        return
    terminating = any(c.get("reason") == "NamespaceTerminating" for c in details.get("causes") or [])
    if terminating or (exc.status == 404 and details.get("kind") == "namespaces"):
        raise NamespaceGone(status.get("message") or exc.reason) from exc


def transient(exc: BaseException) -> bool:
    """An error of the connection or of an apiserver that is restarting or overloaded: retrying will do."""
    if isinstance(exc, ApiException):
        return exc.status is None or exc.status >= 500 or exc.status in (408, 429)
    return isinstance(exc, urllib3.exceptions.HTTPError | ConnectionError | TimeoutError)


async def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    API_REQUESTS.labels(_name_of(fn)).inc()
    kwargs.setdefault("_request_timeout", REQUEST_TIMEOUT)
    return await asyncio.to_thread(fn, *args, **kwargs)


def _name_of(fn: Callable[..., Any]) -> str:
    """The client method's name, also through a functools.partial of it."""
    return getattr(fn, "__name__", None) or getattr(getattr(fn, "func", None), "__name__", "call")


FIELD_MANAGER = "modelfleet"
APPLY_PATCH = "application/apply-patch+yaml"
APPLY_QUERY = (("fieldManager", FIELD_MANAGER), ("force", "true"))
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
PLURALS = {"Pod": "pods", "Service": "services", "Deployment": "deployments", "HTTPRoute": "httproutes"}
"""The kinds the operator creates or applies through `request`, by the name of their collection."""


def object_path(body: dict[str, Any], namespace: str, name: str = "") -> str:
    """The API path of the collection of `body`'s kind in `namespace`, or of the object `name` in it."""
    version, kind = body["apiVersion"], body["kind"]
    root = "/api/v1" if version == "v1" else f"/apis/{version}"
    return f"{root}/namespaces/{namespace}/{PLURALS[kind]}" + (f"/{name}" if name else "")


async def request(
    method: str,
    path: str,
    body: dict[str, Any] | list[dict[str, Any]],
    call: str,
    content_type: str = "application/json",
    query: tuple[tuple[str, str], ...] = (("fieldManager", FIELD_MANAGER),),
) -> dict[str, Any]:
    """One write through the client's connection pool and credentials, the body sent as it is and the answer
    decoded with orjson. The client's generated methods first validate every body into the client's models (about
    half of the CPU the operator spent on API calls at 1,000 jobs); the API server validates it anyway, and its
    refusal names the field. `call` labels the request in `modelfleet_api_requests`; `query` holds its parameters,
    by default the field manager `modelfleet` (what `kubectl get --show-managed-fields` names for each field)."""
    API_REQUESTS.labels(call).inc()
    return orjson.loads(await asyncio.to_thread(_send, method, path, body, content_type, query))


def _send(
    method: str,
    path: str,
    body: dict[str, Any] | list[dict[str, Any]],
    content_type: str,
    query: tuple[tuple[str, str], ...],
) -> bytes:
    client = api()
    headers = {"Content-Type": content_type, "Accept": "application/json"}
    _, url, headers, data, _ = client.param_serialize(
        method, path, query_params=list(query), header_params=headers, body=body, auth_settings=["BearerToken"]
    )
    response = client.call_api(method, url, headers, data, _request_timeout=REQUEST_TIMEOUT)
    response.read()
    if not 200 <= response.status <= 299:
        raise ApiException.from_response(http_resp=response, body=None, data=None)
    return response.data


async def create(body: dict[str, Any]) -> dict[str, Any] | None:
    """Creates the object (apiVersion and kind included) and returns it; None when one of that name exists
    already (a retried reconcile finds what it made). Raises Refused when the API refuses the object itself,
    NamespaceGone when its namespace goes."""
    meta = body["metadata"]
    try:
        return await request("POST", object_path(body, meta["namespace"]), body, call=f"create {body['kind']}")
    except ApiException as exc:
        if exc.status == 409:
            return None
        raise_if_namespace_gone(exc)
        if refused := refusal(exc):
            raise refused from exc
        raise


async def delete_pod(namespace: str, name: str, force: bool = False) -> None:
    """Deletes a pod (force: grace period 0, for pods on lost nodes); gone already is fine."""
    body = client.V1DeleteOptions(grace_period_seconds=0) if force else None
    try:
        await call(core().delete_namespaced_pod, name, namespace, body=body)
    except ApiException as exc:
        if exc.status != 404:
            raise


async def patch_pod(
    namespace: str, name: str, patch: list[dict[str, Any]], ignore: tuple[int, ...] = (404,)
) -> dict[str, Any] | None:
    """Applies a JSON patch to a pod and returns it as it now is; None for the statuses in `ignore` (404: gone
    already)."""
    path = object_path({"apiVersion": "v1", "kind": "Pod"}, namespace, name)
    try:
        return await request("PATCH", path, patch, call="patch Pod", content_type=JSON_PATCH)
    except ApiException as exc:
        if exc.status not in ignore:
            raise
        return None


class Conflict(Exception):
    """The object changed since the version a decision was based on."""


async def patch_status(plural: str, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any] | None:
    """Merge-patches the status subresource of whatever version of the object is current; returns the updated
    object (None when the object is gone)."""
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{plural}/{name}/status"
    try:
        return await request("PATCH", path, {"status": status}, call=f"patch {plural}/status", content_type=MERGE_PATCH)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


async def replace_status(plural: str, body: dict[str, Any], status: dict[str, Any]) -> dict[str, Any] | None:
    """Replaces the status subresource of exactly the version of the object in `body` with `status` (a key whose
    value is None is left out); returns the updated object, None when the object is gone. Conflict when it changed
    since, or was deleted and created again under its name: a decision made on a stale body is never written.

    A PUT carries the status alone (the API server keeps spec and metadata from the stored object) and costs the
    API server ~1 ms less than a merge patch of the same status (5.0 against 6.0 ms of its CPU a write,
    docs/performance.md, Session 14)."""
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    replacement = {
        "apiVersion": body["apiVersion"],
        "kind": body["kind"],
        "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion")},
        "status": {k: v for k, v in status.items() if v is not None},
    }
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{plural}/{name}/status"
    try:
        return await request("PUT", path, replacement, call=f"replace {plural}/status")
    except ApiException as exc:
        if exc.status == 404:
            return None
        if exc.status == 409:
            raise Conflict(
                f"{plural} {namespace}/{name} changed since resourceVersion {meta['resourceVersion']}"
            ) from exc
        raise


async def get_custom(plural: str, namespace: str, name: str) -> dict[str, Any] | None:
    """A fresh read of one custom object; None when it is gone."""
    try:
        return await call(custom().get_namespaced_custom_object, GROUP, VERSION, namespace, plural, name)
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
    status = invalid_spec_status(prev, generation, message, condition_type, phase)
    updated = await patch_status(plural, meta["namespace"], meta["name"], status)
    kopf.warn(body, reason="InvalidSpec", message=message)
    return updated


async def apply(body: dict[str, Any]) -> dict[str, Any]:
    """Server-side apply of `body` (apiVersion and kind included) as the one field manager `modelfleet`, taking
    over conflicts: a field modelfleet set before and `body` leaves out is removed, fields other managers set are
    kept. Returns the object as stored; raises Refused when the API refuses it, NamespaceGone when its namespace
    goes."""
    meta = body["metadata"]
    path = object_path(body, meta["namespace"], meta["name"])
    try:
        return await request(
            "PATCH", path, body, call=f"apply {body['kind']}", content_type=APPLY_PATCH, query=APPLY_QUERY
        )
    except ApiException as exc:
        raise_if_namespace_gone(exc)
        if refused := refusal(exc):
            raise refused from exc
        raise


async def report_refused(
    body: dict[str, Any], plural: str, refused: Refused, condition_type: str, phase: str
) -> dict[str, Any] | None:
    """An object the API or the operator's policy refused: the condition (reason InvalidSpec, CreateFailed or
    PolicyDenied) with the refusal's message, and a Warning Event, written only when they change. Returns the
    updated object (None when nothing was written)."""
    meta, prev = body["metadata"], body.get("status") or {}
    status = invalid_spec_status(prev, meta.get("generation", 1), refused.message, condition_type, phase)
    status["conditions"] = [
        {**c, "reason": refused.reason} if c["type"] == condition_type else c for c in status["conditions"]
    ]
    if all(prev.get(k) == v for k, v in status.items()):
        return None
    updated = await patch_status(plural, meta["namespace"], meta["name"], status)
    kopf.warn(body, reason=refused.reason, message=refused.message)
    return updated

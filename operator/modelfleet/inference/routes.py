"""An HTTPRoute per InferenceService for clusters that route with the Gateway API (Envoy Gateway, Istio, ...)
instead of `modelfleet gateway`: one rule per region, matching the client-region header to that region's Service,
and a default rule to the first region, all under the model's V2 path, attached to the Gateway the operator is told.

Written only when the operator names a Gateway (`--httproute-parent`) and the cluster serves
httproutes.gateway.networking.k8s.io; owned by the InferenceService, so it goes with it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from modelfleet import kube
from modelfleet.api.common import owner_reference
from modelfleet.api.inference import InferenceServiceSpec
from modelfleet.inference.builders import region_object_name, service_labels

PARENT_ENV = "MODELFLEET_HTTPROUTE_PARENT"
"""`[namespace/]name` of the Gateway (Gateway API) the routes attach to; unset: no routes."""
HEADER_ENV = "MODELFLEET_HTTPROUTE_HEADER"
GROUP, VERSION, PLURAL = "gateway.networking.k8s.io", "v1", "httproutes"
DEFAULT_HEADER = "X-Client-Region"
MAX_RULES = 16
"""The Gateway API's limit per HTTPRoute: room for 15 regions besides the default rule."""
SERVICE_PORT = 80
"""The port of a region's Service that serves HTTP (inference.builders.service)."""
RECHECK_SECONDS = 300.0
"""How long the API's "not served" and an applied route are trusted (a route deleted by hand comes back)."""
RETRY_SECONDS = 30.0

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RouteSettings:
    parent_namespace: str | None
    parent_name: str
    header: str = DEFAULT_HEADER

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RouteSettings | None:
        """`MODELFLEET_HTTPROUTE_PARENT` = `[namespace/]name` of the Gateway; None (no routes) when unset."""
        parent = (env.get(PARENT_ENV) or "").strip()
        if not parent:
            return None
        namespace, _, name = parent.rpartition("/")
        return cls(namespace or None, name, (env.get(HEADER_ENV) or "").strip() or DEFAULT_HEADER)


def httproute(meta: Mapping[str, Any], spec: InferenceServiceSpec, settings: RouteSettings) -> dict[str, Any]:
    """The service's HTTPRoute: a rule per region (the first 15) for clients whose header names it, then the
    first region for everyone else; each rule sends `/v2/models/<model>` to the region's Service."""
    name = meta["name"]
    path = {"type": "PathPrefix", "value": f"/v2/models/{spec.model.name or name}"}

    def to(region: str) -> list[dict[str, Any]]:
        return [{"name": region_object_name(name, region), "port": SERVICE_PORT}]

    regions = [r.name for r in spec.regions][: MAX_RULES - 1]
    rules = [
        {
            "matches": [{"path": path, "headers": [{"type": "Exact", "name": settings.header, "value": region}]}],
            "backendRefs": to(region),
        }
        for region in regions
    ]
    rules.append({"matches": [{"path": path}], "backendRefs": to(regions[0])})
    parent = {"group": GROUP, "kind": "Gateway", "name": settings.parent_name}
    if settings.parent_namespace:
        parent["namespace"] = settings.parent_namespace
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "HTTPRoute",
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "labels": service_labels(name),
            "ownerReferences": [owner_reference("InferenceService", meta)],
        },
        "spec": {"parentRefs": [parent], "rules": rules},
    }


class Routes:
    """Applies each service's HTTPRoute when it changed (again after `RECHECK_SECONDS`, or `RETRY_SECONDS` after a
    failure) while the API serves HTTPRoutes; asks the API again after a failure, and after `RECHECK_SECONDS`
    while it did not serve them."""

    def __init__(self) -> None:
        self.served: bool | None = None
        self.checked_at = 0.0
        self.tried: dict[tuple[str, str], tuple[dict[str, Any], float, bool]] = {}
        """(namespace, name) -> the route last applied, when, and whether the API took it."""

    async def sync(self, body: dict[str, Any], spec: InferenceServiceSpec) -> None:
        settings = RouteSettings.from_env(os.environ)
        if settings is None or not await self._served():
            return
        meta, now = body["metadata"], time.monotonic()
        wanted = httproute(meta, spec, settings)
        key = (meta["namespace"], meta["name"])
        if (
            (last := self.tried.get(key))
            and last[0] == wanted
            and now - last[1] < (RECHECK_SECONDS if last[2] else RETRY_SECONDS)
        ):
            return
        try:
            await kube.apply(wanted)
        except (kube.Refused, ApiException) as exc:
            self.served = None  # the CRD may have gone: ask again next time
            self.tried[key] = (wanted, now, False)
            message = f"HTTPRoute {meta['name']} not written: {getattr(exc, 'message', None) or exc}"
            kopf.event(body, type="Warning", reason="HTTPRouteFailed", message=message)
            return
        self.tried[key] = (wanted, now, True)
        if len(spec.regions) >= MAX_RULES:
            message = f"the HTTPRoute routes by header only the first {MAX_RULES - 1} of {len(spec.regions)} regions"
            kopf.event(body, type="Warning", reason="HTTPRouteTruncated", message=message)

    async def _served(self) -> bool:
        if self.served is None or (not self.served and time.monotonic() - self.checked_at > RECHECK_SECONDS):
            was = self.served
            try:
                found = await kube.call(kube.custom().get_api_resources, GROUP, VERSION)
                self.served = any(r.name == PLURAL for r in found.resources)
            except ApiException as exc:
                self.served = False if exc.status == 404 else None
            self.checked_at = time.monotonic()
            if self.served is not None and self.served != was:
                log.info("HTTPRoutes %s", "are served: writing one per InferenceService" if self.served else
                         f"are not served ({PLURAL}.{GROUP}/{VERSION} missing): none written")  # fmt: skip
        return bool(self.served)


ROUTES = Routes()

"""kopf's watch streams decode with orjson: the same values, and nothing patched if kopf changes."""

from __future__ import annotations

import json
from collections.abc import Iterator

import kopf._cogs.clients.api as kopf_api
import orjson
import pytest

from modelfleet import watch_json

EVENT = {
    "type": "MODIFIED",
    "object": {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "job-worker-0", "resourceVersion": "18446744073", "labels": {"a": "é ✓"}},
        "spec": {"containers": [{"name": "worker", "ports": [{"containerPort": 29500}]}], "priority": -2147483648},
        "status": {"phase": "Running", "podIP": "10.0.0.7", "ratio": 0.1, "big": 9007199254740993, "none": None},
    },
}


@pytest.fixture
def kopf_json() -> Iterator[None]:
    """kopf's api module's json as it was, after the test."""
    before = kopf_api.json
    yield
    kopf_api.json = before


def test_kopfs_watch_decodes_with_orjson_to_the_same_values(kopf_json: None) -> None:
    assert watch_json.use_orjson() and watch_json.use_orjson(), "twice is fine"
    assert kopf_api.json.loads is orjson.loads and kopf_api.json.dumps is json.dumps
    line = json.dumps(EVENT).encode()
    assert kopf_api.json.loads(line.decode("utf-8")) == json.loads(line) == EVENT
    assert json.loads is not orjson.loads, "the json module itself is left as it is"


def test_nothing_is_patched_when_kopf_no_longer_decodes_through_its_json(kopf_json: None) -> None:
    kopf_api.json = object()
    assert not watch_json.use_orjson()
    del kopf_api.json
    assert not watch_json.use_orjson() and not hasattr(kopf_api, "json")

"""orjson for kopf's watch streams: the one place where modelfleet patches kopf.

kopf decodes every watch event with the standard library's `json.loads` (`kopf._cogs.clients.api.stream`), and at
1,000 jobs those ~17,600 events were a tenth of the operator's CPU (py-spy). kopf has no setting for its decoder,
and the watches are kopf's, so `use_orjson` gives that module a copy of the json module whose `loads` is orjson's:
the same values for what the API server sends (objects, arrays, strings, 64-bit integers, floats, booleans, null),
decoded about twice as fast. Should kopf stop decoding through a module-level `json`, nothing is patched and the
watches decode as before (`use_orjson` returns False).
"""

from __future__ import annotations

import json
import types

import kopf._cogs.clients.api as kopf_api
import orjson


def use_orjson() -> bool:
    """Makes kopf's watch streams decode with orjson; whether they now do."""
    current = getattr(kopf_api, "json", None)
    if current is not json and not (isinstance(current, types.ModuleType) and current.loads is orjson.loads):
        return False
    shim = types.ModuleType("json", "The json module, with orjson's loads (modelfleet.watch_json).")
    shim.__dict__.update({k: v for k, v in vars(json).items() if not k.startswith("__")})
    shim.loads = orjson.loads
    kopf_api.json = shim
    return True

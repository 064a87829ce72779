"""modelfleet: a Kubernetes operator for distributed PyTorch training and multi-region model serving."""

from __future__ import annotations

from typing import Any

__all__ = ["deploy", "train"]


def __getattr__(name: str) -> Any:
    """`modelfleet.deploy` / `modelfleet.train` import the Kubernetes client on first use, so the runtime (training
    workers, model servers) can import `modelfleet.runtime` without it."""
    if name in __all__:
        from modelfleet import client

        return getattr(client, name)
    raise AttributeError(f"module 'modelfleet' has no attribute {name!r}")

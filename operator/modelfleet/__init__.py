"""modelfleet: a Kubernetes operator for distributed PyTorch training and multi-region model serving."""

from modelfleet.client import deploy, train

__all__ = ["deploy", "train"]

"""modelfleet: a Kubernetes operator for distributed PyTorch training and multi-region model serving."""

"""Cluster view of GPU nodes and the gang placement planner (pure functions)."""

"""The local test cluster: a real control plane from Go-built binaries with KWOK-simulated GPU nodes."""

from modelfleet.devcluster.control_plane import ClusterError, DevCluster, binaries_dir

__all__ = ["ClusterError", "DevCluster", "binaries_dir"]

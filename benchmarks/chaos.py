"""Chaos run, full size: TrainingJobs with injected failures while the operator is killed and the apiserver restarts.

    python -m benchmarks.chaos [--jobs 100] [--kills 20] [--apiserver-restarts 2] [--seed 1] [--keep]

A fresh local control plane (default GPU inventory of modelfleet.devcluster.nodes) and the operator as a process;
the run itself is tests/support/chaos.py, the same as the short `pytest -m chaos` test. Prints the figures and
exits non-zero unless every job converged with 0 duplicates, 0 orphans and 0 GPU over-commits.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from tests.support.chaos import ChaosConfig, run_chaos
from tests.support.kube import Kube
from tests.support.operator import OperatorProcess

from modelfleet.devcluster import DevCluster, binaries_dir

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = ChaosConfig()
    parser.add_argument("--jobs", type=int, default=defaults.jobs)
    parser.add_argument("--kills", type=int, default=defaults.kills, help="operator kill -9 and restart")
    parser.add_argument("--apiserver-restarts", type=int, default=defaults.apiserver_restarts)
    parser.add_argument("--deletions", type=int, default=None, help="jobs deleted mid-run (default: one in ten)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--window", type=float, default=None, help="seconds the faults are spread over")
    parser.add_argument("--keep", action="store_true", help="leave the cluster running and print its KUBECONFIG")
    args = parser.parse_args()
    config = ChaosConfig(
        jobs=args.jobs,
        kills=args.kills,
        apiserver_restarts=args.apiserver_restarts,
        deletions=args.deletions,
        seed=args.seed,
        window=args.window,
    )
    work = Path(tempfile.mkdtemp(prefix="modelfleet-chaos-"))
    cluster = DevCluster(work, bin_dir=binaries_dir()).up(timeout=300)
    operator = OperatorProcess(cluster.kubeconfig_path, work / "operator.log", identity="chaos-operator")
    try:
        assert cluster.bin_dir is not None
        kube = Kube(cluster.kubeconfig_path, cluster.bin_dir)
        kube.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
        kube.kubectl("wait", "--for", "condition=Established", "crd", "--all", "--timeout=60s")
        namespace = kube.new_namespace("chaos")
        operator.start()
        report = run_chaos(cluster, kube, operator, namespace, config)
    finally:
        operator.stop()
        if args.keep:
            print(f"keeping the cluster: KUBECONFIG={cluster.kubeconfig_path}; operator log {operator.log_path}")
        else:
            cluster.down()
    print(f"\nchaos run (seed {config.seed}, window {config.span:.0f} s)\n{report.summary()}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())

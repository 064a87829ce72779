"""The `modelfleet` command."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from rich.console import Console

console = Console()
DEFAULT_CLUSTER_DIR = Path(os.environ.get("MODELFLEET_CACHE", Path.home() / ".cache" / "modelfleet")) / "dev-cluster"


def dev_cluster(args: argparse.Namespace) -> int:
    from modelfleet.devcluster import DevCluster

    cluster = DevCluster(Path(args.dir), apiserver_port=args.port)
    if args.action == "up":
        with console.status("starting etcd, kube-apiserver, controller-manager, scheduler and kwok"):
            cluster.up()
        console.print(f"[green]cluster up[/]: export KUBECONFIG={cluster.kubeconfig_path}")
    elif args.action == "down":
        cluster.down()
        console.print("cluster stopped")
    else:
        state = "[green]running[/]" if cluster.running() else "[red]stopped[/]"
        console.print(f"{state}  KUBECONFIG={cluster.kubeconfig_path}")
    return 0


def operator(args: argparse.Namespace) -> int:
    import kopf

    import modelfleet.main  # noqa: F401 - registers the handlers

    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.log_level != "debug":
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)  # one line per handled watch event otherwise
    kopf.run(
        clusterwide=not args.namespace,
        namespaces=args.namespace or (),
        standalone=not args.peering,
        peering_name=args.peering or None,
        liveness_endpoint=args.liveness or None,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelfleet", description="Distributed training and model serving on Kubernetes."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    dev = commands.add_parser("dev-cluster", help="a local control plane with simulated GPU nodes")
    dev.add_argument("action", choices=["up", "down", "status"])
    dev.add_argument("--dir", default=str(DEFAULT_CLUSTER_DIR), help="state directory (default: %(default)s)")
    dev.add_argument("--port", type=int, default=16443, help="kube-apiserver port on 127.0.0.1 (default: %(default)s)")
    dev.set_defaults(func=dev_cluster)

    run = commands.add_parser("operator", help="run the operator (kopf) against the current kubeconfig")
    run.add_argument("--namespace", action="append", help="watch only this namespace (repeatable); default: all")
    run.add_argument("--peering", default="", help="kopf peering name for several replicas (default: standalone)")
    run.add_argument("--liveness", default="", help="liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    run.set_defaults(func=operator)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())

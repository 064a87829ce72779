"""The `modelfleet` command."""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
from pathlib import Path

import yaml
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
    from modelfleet.resync import RESYNC

    RESYNC.namespaces = tuple(args.namespace or ())
    from modelfleet.inference.gateway_load import GATEWAY_METRICS_ENV, GATEWAY_URL_ENV

    if args.gateway_url:
        os.environ[GATEWAY_URL_ENV] = args.gateway_url
    if args.gateway_metrics:
        os.environ[GATEWAY_METRICS_ENV] = " ".join(args.gateway_metrics)
    from modelfleet.inference import routes

    if args.httproute_parent:
        os.environ[routes.PARENT_ENV] = args.httproute_parent
    if args.httproute_header:
        os.environ[routes.HEADER_ENV] = args.httproute_header

    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.log_level != "debug":
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)  # one line per handled watch event otherwise
        logging.getLogger("leaderelection").setLevel(logging.WARNING)  # one line per retry otherwise

    def run_kopf() -> None:
        kopf.run(
            clusterwide=not args.namespace,
            namespaces=args.namespace or (),
            standalone=True,
            liveness_endpoint=args.liveness or None,
        )

    if not args.leader_elect:
        run_kopf()
        return 0
    from modelfleet import kube, leader

    lease = leader.Lease(
        name=args.lease_name,
        namespace=args.lease_namespace or leader.default_namespace(os.environ, leader.kubeconfig_namespace()),
        identity=args.identity or leader.default_identity(os.environ, socket.gethostname(), os.getpid()),
        duration=args.lease_duration,
        renew_deadline=args.renew_deadline,
        retry_period=args.retry_period,
    )
    leader.lead(run_kopf, lease, kube.api(), liveness=args.liveness or None)
    return 0


def gateway(args: argparse.Namespace) -> int:
    from modelfleet.gateway.app import build_app, server
    from modelfleet.gateway.config import GatewayConfig

    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    config = GatewayConfig.load(
        Path(args.config) if args.config else None, region=args.region, namespaces=args.namespace
    )
    server(build_app(config), args.host, args.port, args.log_level).run()
    return 0


def print_or_apply(manifest: dict, namespace: str, dry_run: bool) -> int:
    from modelfleet.client import apply

    if dry_run:
        print(yaml.safe_dump(manifest, sort_keys=False), end="")
    else:
        apply(manifest, namespace)
        console.print(f"[green]{manifest['kind'].lower()}/{manifest['metadata']['name']} applied[/] in {namespace}")
    return 0


def csv(value: str) -> list[str]:
    return [v for v in value.split(",") if v]


def deploy(args: argparse.Namespace) -> int:
    from modelfleet.client import inference_service_manifest

    manifest = inference_service_manifest(
        args.model, args.name, csv(args.regions), from_job=args.from_job, gpus=args.gpus, gpu_type=args.gpu_type, quantize=args.quantize,
        min_replicas=args.min_replicas, max_replicas=args.max_replicas, metric=args.metric, target=args.target,
        max_batch_size=args.max_batch_size,
    )  # fmt: skip
    return print_or_apply(manifest, args.namespace, args.dry_run)


def train(args: argparse.Namespace) -> int:
    from modelfleet.client import training_job_manifest

    manifest = training_job_manifest(
        args.name, args.workers, gpus=args.gpus, gpu_type=args.gpu_type, regions=csv(args.regions),
        image=args.image, args=args.train_args, policy=args.policy, backoff_limit=args.backoff_limit,
    )  # fmt: skip
    return print_or_apply(manifest, args.namespace, args.dry_run)


def models(args: argparse.Namespace) -> int:
    from rich.table import Table

    from modelfleet.client import model_catalog

    table = Table(title="Models (artifacts of succeeded TrainingJobs)")
    for column in ("namespace", "job", "created", "loss", "accuracy", "uri", "digest", "served by"):
        table.add_column(column)
    for entry in model_catalog(None if args.all_namespaces else args.namespace):
        metrics = entry.get("metrics") or {}
        table.add_row(
            entry["namespace"], entry["job"], entry.get("createdAt", ""), _metric(metrics, "loss"),
            _metric(metrics, "accuracy"), entry["uri"], (entry.get("digest") or "")[:19], ", ".join(entry["servedBy"]),
        )  # fmt: skip
    console.print(table)
    return 0


def _metric(metrics: dict, name: str) -> str:
    return f"{metrics[name]:.4f}" if name in metrics else ""


def status(args: argparse.Namespace) -> int:
    from rich.table import Table

    from modelfleet.client import list_objects

    namespace = None if args.all_namespaces else args.namespace
    jobs = Table(title="TrainingJobs")
    for column in ("namespace", "name", "phase", "workers", "GPUs", "region", "restarts", "step", "loss"):
        jobs.add_column(column)
    for obj in list_objects("TrainingJob", namespace):
        st, progress = obj.get("status") or {}, (obj.get("status") or {}).get("progress") or {}
        jobs.add_row(
            obj["metadata"]["namespace"], obj["metadata"]["name"], st.get("phase", ""), st.get("ready", ""),
            str(st.get("gpus", "")), st.get("region", ""), str(st.get("restarts", 0)),
            str(progress.get("step", "")), str(progress.get("loss", "")),
        )  # fmt: skip
    services = Table(title="InferenceServices")
    for column in ("namespace", "name", "phase", "region", "ready/replicas", "desired", "load", "reason"):
        services.add_column(column)
    for obj in list_objects("InferenceService", namespace):
        st = obj.get("status") or {}
        for region in st.get("regions") or [{}]:
            services.add_row(
                obj["metadata"]["namespace"], obj["metadata"]["name"], st.get("phase", ""), region.get("name", ""),
                f"{region.get('readyReplicas', 0)}/{region.get('replicas', 0)}", str(region.get("desiredReplicas", "")),
                str(region.get("observedLoad", "")), region.get("reason", ""),
            )  # fmt: skip
    console.print(jobs)
    console.print(services)
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
    run.add_argument(
        "--leader-elect",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="act only while holding a Lease, so that one of several replicas is active (default: on)",
    )
    run.add_argument("--lease-name", default="modelfleet-operator", help="the Lease's name (default: %(default)s)")
    run.add_argument(
        "--lease-namespace", help="the Lease's namespace (default: $POD_NAMESPACE, else the kubeconfig's, else default)"
    )
    run.add_argument("--identity", help="this replica's name in the Lease (default: $POD_NAME, else <hostname>-<pid>)")
    run.add_argument("--lease-duration", type=int, default=15, help="seconds (default: %(default)s)")
    run.add_argument("--renew-deadline", type=float, default=10, help="seconds (default: %(default)s)")
    run.add_argument("--retry-period", type=float, default=2, help="seconds (default: %(default)s)")
    run.add_argument("--liveness", default="", help="liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    run.add_argument(
        "--gateway-url",
        help="the gateway's URL for users: status.url, and autoscaling reads its load (source Gateway) by default",
    )
    run.add_argument(
        "--gateway-metrics", action="append", help="a gateway /metrics URL (repeatable; default <gateway-url>/metrics)"
    )
    run.add_argument(
        "--httproute-parent",
        help="[namespace/]name of a Gateway API Gateway: write an HTTPRoute per InferenceService attached to it "
        "(where the cluster serves HTTPRoutes)",
    )
    run.add_argument("--httproute-header", help="the HTTPRoutes' client-region header (default: X-Client-Region)")
    run.set_defaults(func=operator)

    gw = commands.add_parser("gateway", help="the serving data plane: one URL for every InferenceService")
    gw.add_argument("--config", help="routing tables and limits, YAML (the chart's gateway ConfigMap)")
    gw.add_argument("--region", help="the gateway's own region (overrides the file's)")
    gw.add_argument("--namespace", action="append", help="serve only this namespace (repeatable); default: all")
    gw.add_argument("--host", default="0.0.0.0", help="address to listen on (default: %(default)s)")
    gw.add_argument("--port", type=int, default=8080, help="(default: %(default)s)")
    gw.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    gw.set_defaults(func=gateway)

    dep = commands.add_parser("deploy", help="serve a model: create an InferenceService in one line")
    dep.add_argument("model", nargs="?", help="model URI (pvc://<claim>/<path>, or file:// of a path in the pods)")
    dep.add_argument("--from-job", help="serve this TrainingJob's artifact (and each newer run's) instead")
    dep.add_argument("--name", required=True)
    dep.add_argument("--regions", required=True, help="comma separated, e.g. cn-hangzhou,us-west-1")
    dep.add_argument("--gpus", type=int, default=0)
    dep.add_argument("--gpu-type")
    dep.add_argument("--quantize", default="none", choices=["none", "int8", "fp16", "bf16"])
    dep.add_argument("--min-replicas", type=int, default=1)
    dep.add_argument("--max-replicas", type=int, default=3)
    dep.add_argument("--metric", default="concurrency", choices=["concurrency", "rps", "latency"])
    dep.add_argument("--target", type=float)
    dep.add_argument("--max-batch-size", type=int, default=1)
    dep.add_argument("-n", "--namespace", default="default")
    dep.add_argument("--dry-run", action="store_true", help="print the manifest as YAML instead of applying it")
    dep.set_defaults(func=deploy)

    tr = commands.add_parser("train", help="run a distributed training job: create a TrainingJob in one line")
    tr.add_argument("--name", required=True)
    tr.add_argument("--workers", type=int, required=True)
    tr.add_argument("--gpus", type=int, default=0)
    tr.add_argument("--gpu-type")
    tr.add_argument("--regions", default="")
    tr.add_argument("--image")
    tr.add_argument("--policy", default="Pack", choices=["Pack", "Spread"])
    tr.add_argument("--backoff-limit", type=int, default=3)
    tr.add_argument("-n", "--namespace", default="default")
    tr.add_argument("--dry-run", action="store_true")
    tr.add_argument("train_args", nargs=argparse.REMAINDER, help="after --: arguments for the training program")
    tr.set_defaults(func=train)

    cat = commands.add_parser("models", help="the model catalog: artifacts of succeeded TrainingJobs, with metrics")
    cat.add_argument("-n", "--namespace", default="default")
    cat.add_argument("-A", "--all-namespaces", action="store_true")
    cat.set_defaults(func=models)

    st = commands.add_parser("status", help="TrainingJobs and InferenceServices at a glance")
    st.add_argument("-n", "--namespace", default="default")
    st.add_argument("-A", "--all-namespaces", action="store_true")
    st.set_defaults(func=status)
    return parser


def main(argv: list[str] | None = None) -> int:
    from kubernetes.client.exceptions import ApiException
    from pydantic import ValidationError
    from rich.markup import escape

    from modelfleet.api.common import validation_message

    args = build_parser().parse_args(argv)
    if getattr(args, "train_args", None) and args.train_args[0] == "--":
        args.train_args = args.train_args[1:]
    try:
        return args.func(args)
    except ValidationError as exc:
        console.print(f"[red]invalid:[/] {escape(validation_message(exc))}")
        return 2
    except ValueError as exc:  # e.g. a model given as a path on this machine (client.LocalModelPath)
        console.print(f"[red]refused:[/] {escape(str(exc))}")
        return 2
    except ApiException as exc:
        message = json.loads(exc.body).get("message", exc.reason) if exc.body else exc.reason
        console.print(f"[red]refused by the API server:[/] {escape(str(message))}")
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

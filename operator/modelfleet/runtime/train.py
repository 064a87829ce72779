"""The distributed training worker, configured by the env a TrainingJob gives its pods.

    python -m modelfleet.runtime.train --model paper-mlp --epochs 5

Rendezvous: plain env (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE) or torchrun (elastic c10d); a pod with
LOCAL_WORLD_SIZE > 1 started without torchrun re-executes itself under torchrun (one process per GPU).
nccl on GPUs, gloo on CPUs. Each rank takes its share of every global batch (its pod's entry of
MODELFLEET_SHARD_WEIGHTS, by MODELFLEET_REPLICA_INDEX; with --sharding Adaptive, moved toward the measured
throughput every --rebalance-steps) and the loss is scaled so the update equals single-process training on the whole
batch. --teacher distils from an artifact, --prune-amount prunes (see modelfleet.runtime.compression). Checkpoints every
MODELFLEET_CHECKPOINT_INTERVAL steps (atomic), resumed on restart; the final model goes to MODELFLEET_OUTPUT_DIR.
Rank 0 serves its progress on http://0.0.0.0:$MODELFLEET_METRICS_PORT/metrics (see modelfleet.runtime.progress).
Every file it reads (checkpoint, data) is loaded with `weights_only=True`: tensors and plain containers, no pickled code.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel
from torch.nn.utils import prune

from modelfleet.contract import (
    CHECKPOINT_DIR_ENV,
    CHECKPOINT_INTERVAL_ENV,
    COLLECTIVE_TIMEOUT_ENV,
    DEBUG_DELAY_PER_SAMPLE_ENV,
    DISTILL_ALPHA_ENV,
    DISTILL_TEACHER_ENV,
    DISTILL_TEMPERATURE_ENV,
    OUTPUT_DIR_ENV,
    PRUNE_AMOUNT_ENV,
    PRUNE_AT_ENV,
    PRUNE_STRUCTURED_ENV,
    REBALANCE_STEPS_ENV,
    REPLICA_INDEX_ENV,
    SHARD_WEIGHTS_ENV,
    SHARDING_ENV,
)
from modelfleet.runtime.artifact import report_artifact
from modelfleet.runtime.compression import Distillation, Pruning, make_permanent, model_figures, restore_masks
from modelfleet.runtime.data import from_path, synthetic
from modelfleet.runtime.modelio import atomic_save, load_model, save_artifact
from modelfleet.runtime.models import build_model
from modelfleet.runtime.progress import ProgressReporter
from modelfleet.runtime.sharding import AdaptiveShares, normalized, pod_weight, slice_bounds

log = logging.getLogger("modelfleet.train")


@dataclass
class TrainConfig:
    model: str = "paper-mlp"
    epochs: int = 5
    batch_size: int = 64
    lr: float = 0.1
    samples: int = 2048
    eval_samples: int = 0
    seed: int = 0
    data: str | None = None
    checkpoint_dir: str | None = None
    checkpoint_interval: int = 100
    output_dir: str | None = None
    report_seconds: float = 5.0
    sharding: str = "Weighted"
    rebalance_steps: int = 20
    debug_delay_per_sample: float = 0.0
    teacher: str | None = None
    temperature: float = 2.0
    alpha: float = 0.5
    prune_amount: float = 0.0
    prune_structured: bool = False
    prune_at: float = 0.5


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    env = os.environ
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="paper-mlp", help="paper-mlp, cnn, cnn-wide, cnn-tiny, or module:factory")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64, help="global batch size")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--samples", type=int, default=2048, help="size of the synthetic data set")
    p.add_argument(
        "--eval-samples", type=int, default=0, help="rows held out of training to measure accuracy on (default: none)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default=None, help=".pt ({x, y}) or .csv (label last); default: synthetic")
    p.add_argument("--checkpoint-dir", default=env.get(CHECKPOINT_DIR_ENV))
    p.add_argument("--checkpoint-interval", type=int, default=int(env.get(CHECKPOINT_INTERVAL_ENV, "100")))
    p.add_argument("--output-dir", default=env.get(OUTPUT_DIR_ENV))
    p.add_argument("--report-seconds", type=float, default=5.0)
    p.add_argument(
        "--sharding",
        choices=["Weighted", "Equal", "Adaptive"],
        default=env.get(SHARDING_ENV, "Weighted"),
        help="Adaptive: shares follow each rank's measured throughput, starting from MODELFLEET_SHARD_WEIGHTS",
    )
    p.add_argument(
        "--rebalance-steps",
        type=int,
        default=int(env.get(REBALANCE_STEPS_ENV, "20")),
        help="measure (and, Adaptive, rebalance) every this many steps",
    )
    p.add_argument(
        "--debug-delay-per-sample",
        type=float,
        default=float(env.get(DEBUG_DELAY_PER_SAMPLE_ENV, "0")),
        help="debugging: seconds this rank sleeps per row of its shard each step, to act as a slower GPU",
    )
    p.add_argument("--teacher", default=env.get(DISTILL_TEACHER_ENV), help="distil from this artifact")
    p.add_argument("--temperature", type=float, default=float(env.get(DISTILL_TEMPERATURE_ENV, "2")))
    p.add_argument("--alpha", type=float, default=float(env.get(DISTILL_ALPHA_ENV, "0.5")))
    p.add_argument("--prune-amount", type=float, default=float(env.get(PRUNE_AMOUNT_ENV, "0")))
    p.add_argument(
        "--prune-structured",
        action="store_true",
        default=env.get(PRUNE_STRUCTURED_ENV, "").lower() in ("1", "true"),
    )
    p.add_argument(
        "--prune-at",
        type=float,
        default=float(env.get(PRUNE_AT_ENV, "0.5")),
        help="fraction of the training steps done before pruning",
    )
    return TrainConfig(**{k.replace("-", "_"): v for k, v in vars(p.parse_args(argv)).items()})


def reexec_under_torchrun() -> None:
    """More than one process per pod: let torchrun start them (it reads the PET_* env the operator set)."""
    if int(os.environ.get("LOCAL_WORLD_SIZE", "1")) > 1 and "TORCHELASTIC_RUN_ID" not in os.environ:
        os.execvp(
            sys.executable,
            [sys.executable, "-m", "torch.distributed.run", "-m", "modelfleet.runtime.train", *sys.argv[1:]],
        )


def init_distributed() -> tuple[int, int, int]:
    """(rank, world size, processes per node); a world of one trains without a process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    nproc = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if world > 1:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        timeout = timedelta(seconds=float(os.environ.get(COLLECTIVE_TIMEOUT_ENV, "300")))
        dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world, timeout=timeout)
    return rank, world, nproc


class ComputeClock:
    """When this rank's backward pass last handed a gradient bucket to DDP's all-reduce: the end of its own
    compute, before any wait for slower ranks (a DDP communication hook; the all-reduce itself is DDP's default).
    On GPUs this is host time, which runs ahead of queued kernels: a coarse measure there."""

    def __init__(self) -> None:
        self.ready = 0.0

    def hook(self, _state, bucket):  # noqa: ANN001, ANN201 - DDP checks the annotations, which must be real or none
        self.ready = time.perf_counter()
        return default_hooks.allreduce_hook(None, bucket)  # type: ignore[arg-type]


def gather(values: list[float], world: int, device: torch.device) -> torch.Tensor:
    """Every rank's `values`, as a (world, len(values)) tensor on the CPU."""
    mine = torch.tensor(values, dtype=torch.float64, device=device)
    everyone = [torch.zeros_like(mine) for _ in range(world)]
    dist.all_gather(everyone, mine)
    return torch.stack(everyone).cpu()


def by_pod(pods: list[int], values: list[float]) -> dict[int, float]:
    """Per-rank values summed per worker pod (a pod runs nproc ranks)."""
    totals: dict[int, float] = {}
    for pod, value in zip(pods, values, strict=True):
        totals[pod] = totals.get(pod, 0.0) + value
    return totals


def load_data(cfg: TrainConfig, shape: tuple[int, ...], classes: int) -> tuple[torch.Tensor, ...]:
    """(x, y, x_eval, y_eval): the last `eval_samples` rows are held out; without any, evaluation uses the
    training rows."""
    x, y = from_path(cfg.data) if cfg.data else synthetic(shape, classes, cfg.samples + cfg.eval_samples, cfg.seed)
    if cfg.eval_samples <= 0:
        return x, y, x, y
    return x[: -cfg.eval_samples], y[: -cfg.eval_samples], x[-cfg.eval_samples :], y[-cfg.eval_samples :]


def distillation_of(cfg: TrainConfig, device: torch.device) -> Distillation | None:
    if not cfg.teacher:
        return None
    teacher = load_model(cfg.teacher.removeprefix("file://"), freeze=False).module.to(device).eval()
    log.info("distilling from %s (temperature %s, alpha %s)", cfg.teacher, cfg.temperature, cfg.alpha)
    return Distillation(teacher, cfg.temperature, cfg.alpha)


def gang_shares(
    cfg: TrainConfig, replica_index: int, world: int, nproc: int, device: torch.device
) -> tuple[list[int], AdaptiveShares]:
    """Every rank's pod (replica index) and the starting shares, in rank order: each rank brings its own pod's
    static weight, found by the pod's index and not by the rank (torchrun's c10d hands out ranks in any order)."""
    if world == 1:
        return [replica_index], AdaptiveShares([1.0], adaptive=False)
    own = 1.0 if cfg.sharding == "Equal" else pod_weight(os.environ.get(SHARD_WEIGHTS_ENV), replica_index, nproc)
    gathered = gather([float(replica_index), own], world, device)
    pods, static = [int(p) for p in gathered[:, 0]], gathered[:, 1].tolist()
    return pods, AdaptiveShares(normalized(static), adaptive=cfg.sharding == "Adaptive")


def train(cfg: TrainConfig) -> dict[str, Any]:
    rank, world, nproc = init_distributed()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(cfg.seed)
    model, shape, classes = build_model(cfg.model)
    x, y, x_eval, y_eval = load_data(cfg, shape, classes)
    model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    distillation = distillation_of(cfg, device)
    pruning = Pruning(cfg.prune_amount, cfg.prune_structured, cfg.prune_at) if cfg.prune_amount > 0 else None
    compression: dict[str, Any] = {"before": model_figures(model, shape)} if pruning or distillation else {}
    step = resume(cfg, model, optimizer)
    clock = ComputeClock()
    net: nn.Module = model
    if world > 1:
        net = DistributedDataParallel(model)
        net.register_comm_hook(None, clock.hook)
    replica_index = int(os.environ.get(REPLICA_INDEX_ENV, os.environ.get("GROUP_RANK", str(rank))))
    pods, shares = gang_shares(cfg, replica_index, world, nproc, device)
    start, end = slice_bounds(cfg.batch_size, shares.shares, rank)
    steps_per_epoch = max(len(x) // cfg.batch_size, 1)
    total_steps = cfg.epochs * steps_per_epoch
    reporter = ProgressReporter(cfg.report_seconds) if rank == 0 else None
    if reporter:
        reporter.report_workers(by_pod(pods, shares.shares), {})
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    clock_start, seen, loss_value = time.monotonic(), 0, 0.0
    epoch_began, epoch_seconds = clock_start, []
    window_rows, window_seconds = 0, 0.0
    log.info(
        "rank %d/%d (pod %d, %s) takes rows [%d, %d) of every batch of %d; from step %d of %d",
        rank,
        world,
        replica_index,
        cfg.sharding,
        start,
        end,
        cfg.batch_size,
        step,
        total_steps,
    )

    def prune_if_due() -> None:
        if pruning and step >= pruning.step(total_steps) and not prune.is_pruned(model):
            compression["accuracyBeforePruning"] = accuracy(model, x_eval, y_eval, device)
            pruning.apply(model)
            log.info(
                "pruned %.0f%% of the weights (%s) at step %d",
                100 * pruning.amount,
                "structured" if pruning.structured else "unstructured",
                step,
            )

    while step < total_steps:
        prune_if_due()
        epoch, index = divmod(step, steps_per_epoch)
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(cfg.seed + epoch))
        began = time.perf_counter()
        rows = order[index * cfg.batch_size : (index + 1) * cfg.batch_size][start:end]
        if cfg.debug_delay_per_sample:
            time.sleep(cfg.debug_delay_per_sample * len(rows))
        inputs, labels = x[rows].to(device), y[rows].to(device)
        logits = net(inputs)
        loss_sum = distillation.loss_sum(logits, inputs, labels) if distillation else loss_fn(logits, labels)
        (loss_sum * world / cfg.batch_size).backward()  # DDP averages over ranks: the result is the batch mean
        window_seconds += (clock.ready if world > 1 else time.perf_counter()) - began
        window_rows += len(rows)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        loss_total = loss_sum.detach()
        if world > 1:
            dist.all_reduce(loss_total)
            if step % cfg.rebalance_steps == 0:
                window = gather([float(window_rows), window_seconds], world, device)
                shares.update(window[:, 0].tolist(), window[:, 1].tolist())
                start, end = slice_bounds(cfg.batch_size, shares.shares, rank)
                window_rows, window_seconds = 0, 0.0
                if reporter:
                    reporter.report_workers(by_pod(pods, shares.shares), by_pod(pods, shares.throughput))
        loss_value = float(loss_total) / cfg.batch_size
        seen += cfg.batch_size
        if step % steps_per_epoch == 0:
            epoch_seconds.append(round(time.monotonic() - epoch_began, 3))
            epoch_began = time.monotonic()
        if cfg.checkpoint_dir and step % cfg.checkpoint_interval == 0:
            checkpoint(cfg, model, optimizer, step, rank, world)
        if reporter:
            reporter.report(step, epoch, loss_value, seen / max(time.monotonic() - clock_start, 1e-9))
    train_seconds = time.monotonic() - clock_start
    prune_if_due()
    make_permanent(model)
    metrics: dict[str, Any] = {
        "trainSeconds": round(train_seconds, 3),
        "loss": loss_value,
        "accuracy": accuracy(model, x_eval, y_eval, device),
        "steps": float(step),
    }
    if reporter:
        reporter.report(step, cfg.epochs, loss_value, seen / max(time.monotonic() - clock_start, 1e-9), force=True)
    if rank == 0 and cfg.output_dir:
        save_artifact(model, cfg.model, shape, classes, Path(cfg.output_dir), metrics)
        extra: dict[str, Any] = {"shares": by_pod(pods, shares.shares)}
        if compression:
            extra["compression"] = compression_record(
                cfg, compression, model, shape, distillation, x_eval, y_eval, device
            )
        add_to_metadata(Path(cfg.output_dir), extra)
        log.info("saved the model to %s", cfg.output_dir)
        report_artifact(Path(cfg.output_dir), metrics)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return {**metrics, "epochSeconds": epoch_seconds, "shares": shares.shares, "samplesPerSecond": shares.throughput}


def add_to_metadata(artifact: Path, extra: dict[str, Any]) -> None:
    """Adds the trainer's own keys (`shares`, `compression`) to the artifact's metadata.json."""
    path = artifact / "metadata.json"
    metadata = {**json.loads(path.read_text()), **extra}
    atomic_save(metadata, path, lambda m, p: Path(p).write_text(json.dumps(m, indent=2)))


def compression_record(
    cfg: TrainConfig,
    record: dict[str, Any],
    model: nn.Module,
    shape: tuple[int, ...],
    distillation: Distillation | None,
    x_eval: torch.Tensor,
    y_eval: torch.Tensor,
    device: torch.device,
) -> dict[str, Any]:
    """metadata.json's `compression`: the model's figures before (as built) and after (as saved), accuracy
    before and after pruning, and the teacher's accuracy."""
    record = {**record, "after": model_figures(model, shape), "accuracyAfter": accuracy(model, x_eval, y_eval, device)}
    if distillation:
        teacher_accuracy = accuracy(distillation.teacher, x_eval, y_eval, device)
        record["distillation"] = {
            "teacher": cfg.teacher,
            "temperature": cfg.temperature,
            "alpha": cfg.alpha,
            "teacherAccuracy": teacher_accuracy,
        }
    if cfg.prune_amount > 0:
        record["pruning"] = {"amount": cfg.prune_amount, "structured": cfg.prune_structured, "at": cfg.prune_at}
    return record


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> float:
    with torch.inference_mode():
        return float((model(x.to(device)).argmax(dim=1).cpu() == y).float().mean())


def checkpoint_path(cfg: TrainConfig) -> Path:
    return Path(cfg.checkpoint_dir or ".") / "checkpoint.pt"


def checkpoint(
    cfg: TrainConfig, model: nn.Module, optimizer: torch.optim.Optimizer, step: int, rank: int, world: int
) -> None:
    if rank == 0:
        atomic_save(
            {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step}, checkpoint_path(cfg)
        )
        log.info("checkpoint at step %d", step)
    if world > 1:
        dist.barrier()


def resume(cfg: TrainConfig, model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """The step to continue from: the last checkpoint's, or 0."""
    path = checkpoint_path(cfg)
    if not cfg.checkpoint_dir or not path.exists():
        return 0
    state = torch.load(path, map_location="cpu", weights_only=True)
    restore_masks(model, state["model"])
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    log.info("resumed from step %d (%s)", state["step"], path)
    return int(state["step"])


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s rank=" + os.environ.get("RANK", "0") + " %(message)s"
    )
    reexec_under_torchrun()
    metrics = train(parse_args(argv))
    print(json.dumps({"final": metrics}), flush=True)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Done and saved: leave now. Letting the interpreter tear down gloo's threads can abort the process
        # ("terminate called without an active exception") after a successful run.
        logging.shutdown()
        os._exit(0)


if __name__ == "__main__":
    main()

"""The distributed training worker, configured by the env a TrainingJob gives its pods.

    python -m modelfleet.runtime.train --model paper-mlp --epochs 5

Rendezvous: plain env (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE) or torchrun (elastic c10d); a pod with
LOCAL_WORLD_SIZE > 1 started without torchrun re-executes itself under torchrun (one process per GPU).
nccl on GPUs, gloo on CPUs. Each rank takes its MODELFLEET_SHARD_WEIGHTS share of every global batch and the
loss is scaled so the update equals single-process training on the whole batch. Checkpoints every
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

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from modelfleet.runtime.artifact import report_artifact
from modelfleet.runtime.data import from_path, synthetic
from modelfleet.runtime.modelio import atomic_save, save_artifact
from modelfleet.runtime.models import build_model
from modelfleet.runtime.progress import ProgressReporter
from modelfleet.runtime.sharding import parse_weights, slice_bounds

log = logging.getLogger("modelfleet.train")


@dataclass
class TrainConfig:
    model: str = "paper-mlp"
    epochs: int = 5
    batch_size: int = 64
    lr: float = 0.1
    samples: int = 2048
    seed: int = 0
    data: str | None = None
    checkpoint_dir: str | None = None
    checkpoint_interval: int = 100
    output_dir: str | None = None
    report_seconds: float = 5.0


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    env = os.environ
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="paper-mlp", help="paper-mlp, cnn, or module:factory")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64, help="global batch size")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--samples", type=int, default=2048, help="size of the synthetic data set")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default=None, help=".pt ({x, y}) or .csv (label last); default: synthetic")
    p.add_argument("--checkpoint-dir", default=env.get("MODELFLEET_CHECKPOINT_DIR"))
    p.add_argument("--checkpoint-interval", type=int, default=int(env.get("MODELFLEET_CHECKPOINT_INTERVAL", "100")))
    p.add_argument("--output-dir", default=env.get("MODELFLEET_OUTPUT_DIR"))
    p.add_argument("--report-seconds", type=float, default=5.0)
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
        timeout = timedelta(seconds=float(os.environ.get("MODELFLEET_COLLECTIVE_TIMEOUT", "300")))
        dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world, timeout=timeout)
    return rank, world, nproc


def train(cfg: TrainConfig) -> dict[str, float]:
    rank, world, nproc = init_distributed()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(cfg.seed)
    model, shape, classes = build_model(cfg.model)
    x, y = from_path(cfg.data) if cfg.data else synthetic(shape, classes, cfg.samples, cfg.seed)
    model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    step = resume(cfg, model, optimizer)
    net: nn.Module = DistributedDataParallel(model) if world > 1 else model
    weights = parse_weights(os.environ.get("MODELFLEET_SHARD_WEIGHTS"), world, nproc)
    start, end = slice_bounds(cfg.batch_size, weights, rank)
    steps_per_epoch = max(len(x) // cfg.batch_size, 1)
    total_steps = cfg.epochs * steps_per_epoch
    reporter = ProgressReporter(cfg.report_seconds) if rank == 0 else None
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    clock, seen, loss_value = time.monotonic(), 0, 0.0
    log.info(
        "rank %d/%d takes rows [%d, %d) of every batch of %d; from step %d of %d",
        rank,
        world,
        start,
        end,
        cfg.batch_size,
        step,
        total_steps,
    )
    while step < total_steps:
        epoch, index = divmod(step, steps_per_epoch)
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(cfg.seed + epoch))
        rows = order[index * cfg.batch_size : (index + 1) * cfg.batch_size][start:end]
        loss_sum = loss_fn(net(x[rows].to(device)), y[rows].to(device))
        (loss_sum * world / cfg.batch_size).backward()  # DDP averages over ranks: the result is the batch mean
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        loss_total = loss_sum.detach()
        if world > 1:
            dist.all_reduce(loss_total)
        loss_value = float(loss_total) / cfg.batch_size
        seen += cfg.batch_size
        if cfg.checkpoint_dir and step % cfg.checkpoint_interval == 0:
            checkpoint(cfg, model, optimizer, step, rank, world)
        if reporter:
            reporter.report(step, epoch, loss_value, seen / max(time.monotonic() - clock, 1e-9))
    metrics = {"loss": loss_value, "accuracy": accuracy(model, x, y, device), "steps": float(step)}
    if reporter:
        reporter.report(step, cfg.epochs, loss_value, seen / max(time.monotonic() - clock, 1e-9), force=True)
    if rank == 0 and cfg.output_dir:
        save_artifact(model, cfg.model, shape, classes, Path(cfg.output_dir), metrics)
        log.info("saved the model to %s", cfg.output_dir)
        report_artifact(Path(cfg.output_dir), metrics)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return metrics


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

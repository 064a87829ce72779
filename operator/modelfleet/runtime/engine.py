"""What both transports share: the loaded model, the batcher, the limits and the metrics. A transport hands the
engine a way to decode its request and encodes the arrays it gets back; refusals are `V2Error`s."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import queue
import time
import warnings
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass

import numpy as np
import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from modelfleet.contract import (
    SERVER_BATCH_LIMIT,
    SERVER_BATCH_SIZE,
    SERVER_FREEZING_INFO,
    SERVER_INFLIGHT,
    SERVER_LATENCY,
    SERVER_MODEL_SIZE,
    SERVER_QUANTIZATION_INFO,
    SERVER_REJECTED,
    SERVER_REQUESTS,
)
from modelfleet.runtime.batching import Batcher, Tensors, sized_batch
from modelfleet.runtime.modelio import LoadedModel, load_model, probe_inputs
from modelfleet.runtime.quantize import seconds_per_pass
from modelfleet.runtime.v2 import DATATYPES, Inference, Signature, V2Error

log = logging.getLogger("modelfleet.serve")
MODEL_VERSION = "1"
# Inputs decoded from an immutable request buffer are read-only arrays; models never write their inputs.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")


@dataclass
class EngineConfig:
    model_path: str
    model_name: str = "model"
    model_format: str = "torchscript"
    quantization: str = "none"
    max_batch_size: int = 1
    max_delay_ms: float = 5.0
    device: str = "cpu"
    max_queue: int = 256
    request_timeout: float = 30.0


class Metrics:
    """Exactly the series the operator's autoscaler reads (see modelfleet.inference.load_sources). With several server
    processes (PROMETHEUS_MULTIPROC_DIR set), /metrics adds up every process's series."""

    def __init__(self, model: str) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            SERVER_REQUESTS, "Inference requests by HTTP status code (gRPC: its HTTP equivalent).",
            ["model", "code", "protocol"], registry=r,
        )  # fmt: skip
        self.inflight = Gauge(
            SERVER_INFLIGHT, "Inference requests being served.", ["model"], registry=r,
            multiprocess_mode="livesum",
        )  # fmt: skip
        self.latency = Histogram(
            SERVER_LATENCY, "Inference request latency.", ["model"], registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )  # fmt: skip
        self.batch = Histogram(
            SERVER_BATCH_SIZE, "Rows per forward pass.", ["model"], registry=r,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
        )  # fmt: skip
        self.size = Gauge(
            SERVER_MODEL_SIZE, "Model state size.", ["model", "stage"], registry=r, multiprocess_mode="max"
        )
        self.quantization = Gauge(
            SERVER_QUANTIZATION_INFO, "Quantization asked for and applied (1), with the reason.",
            ["model", "requested", "applied", "reason"], registry=r, multiprocess_mode="max",
        )  # fmt: skip
        self.batch_limit = Gauge(
            SERVER_BATCH_LIMIT, "Rows per pass the batcher was sized to, from measured latency.",
            ["model"], registry=r, multiprocess_mode="max",
        )  # fmt: skip
        self.freezing = Gauge(
            SERVER_FREEZING_INFO, "Whether fp32 passes run a frozen TorchScript copy (from how many rows), and why.",
            ["model", "reason"], registry=r, multiprocess_mode="max",
        )  # fmt: skip
        self.rejected = Counter(SERVER_REJECTED, "Requests refused by a server limit.", ["model", "reason"], registry=r)
        self.model = model

    def exposition(self) -> bytes:
        if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        MultiProcessCollector(merged)
        return generate_latest(merged)


class Engine:
    def __init__(self, config: EngineConfig, loaded: LoadedModel | None = None) -> None:
        self.config = config
        self.metrics = Metrics(config.model_name)
        self.model = loaded
        self.batcher: Batcher | None = None
        self.draining = False

    @property
    def ready(self) -> bool:
        return self.batcher is not None and not self.draining

    @property
    def signature(self) -> Signature:
        assert self.model is not None
        return self.model.signature

    def knows(self, name: str, version: str | None = None) -> bool:
        return name == self.config.model_name and version in (None, "", MODEL_VERSION)

    def start(self) -> None:
        """Loads the model (unless given), sizes the batcher by measured latency and starts it; in the event loop."""
        config, name = self.config, self.config.model_name
        if self.model is None:
            self.model = load_model(
                config.model_path, config.model_format, config.quantization, config.device, config.max_batch_size
            )
        model = self.model
        self.metrics.size.labels(name, "original").set(model.original_bytes)
        self.metrics.size.labels(name, "served").set(model.served_bytes)
        decision = model.quantization
        self.metrics.quantization.labels(name, config.quantization, decision.applied, decision.reason).set(1)
        rows = self._batch_rows()
        self.metrics.batch_limit.labels(name).set(rows)
        self.metrics.freezing.labels(name, model.freezing).set(1)
        log.info(
            "serving %s (%s): %d -> %d bytes; %s; %s; batches of up to %d rows",
            name, config.model_path, model.original_bytes, model.served_bytes, decision.reason, model.freezing, rows,
        )  # fmt: skip
        self.batcher = Batcher(
            self._forward, rows, config.max_delay_ms, self.metrics.batch.labels(name).observe, config.max_queue
        )
        self.batcher.start()
        # What is loaded by now (torch, the model: ~200,000 objects) lives as long as the process: frozen, a full
        # collection no longer walks it. Each one took 100-400 ms with the server stalled, every second or so under
        # load (in-flight requests reach the oldest generation): that was the HTTP p99 at 64 clients.
        gc.collect()
        gc.freeze()

    def _batch_rows(self) -> int:
        """`max_batch_size`, less if a pass of that many rows takes longer than `max_delay_ms` (measured here)."""
        specs = self.signature.inputs
        if self.config.max_batch_size <= 1 or any(t.shape is None or -1 in t.shape[1:] for t in specs):
            return self.config.max_batch_size

        def seconds_for(rows: int) -> float:
            return seconds_per_pass([lambda *x: self._forward(x)], probe_inputs(self.signature, rows), budget=0.1)[0]

        return sized_batch(self.config.max_batch_size, self.config.max_delay_ms / 1000, seconds_for)

    async def stop(self) -> None:
        self.draining = True
        if self.batcher:
            await asyncio.to_thread(self.batcher.stop)

    def _forward(self, inputs: Tensors) -> Tensors:
        model = self.model
        assert model is not None
        # fp16/bf16 models take the FP32 their signature declares in their own dtype; other inputs pass as sent
        half = model.dtype != torch.float32
        cast = [
            t.to(model.device, model.dtype) if half and t.dtype == torch.float32 else t.to(model.device) for t in inputs
        ]
        with torch.inference_mode():
            answer = model.module(*cast)
        outputs = answer if isinstance(answer, (tuple, list)) else (answer,)
        return tuple(o.float().cpu() if o.dtype in (torch.float16, torch.bfloat16) else o.cpu() for o in outputs)

    def reject(self, reason: str, status: int, message: str) -> V2Error:
        self.metrics.rejected.labels(self.config.model_name, reason).inc()
        return V2Error(status, message, reason)

    @contextlib.contextmanager
    def _accounted(self, protocol: str) -> Iterator[None]:
        """Counts and times one request; a TimeoutError inside becomes the 504 refusal."""
        name = self.config.model_name
        started = time.perf_counter()
        gauge = self.metrics.inflight.labels(name)
        gauge.inc()
        status = 200
        try:
            yield
        except TimeoutError:
            status = 504
            raise self.reject("timeout", 504, f"no answer within {self.config.request_timeout:g}s") from None
        except V2Error as exc:
            status = exc.status
            if exc.reason:
                self.metrics.rejected.labels(name, exc.reason).inc()
            raise
        finally:
            gauge.dec()
            self.metrics.requests.labels(name, str(status), protocol).inc()
            self.metrics.latency.labels(name).observe(time.perf_counter() - started)

    async def infer(
        self, decode: Callable[[Signature], Awaitable[Inference]], protocol: str
    ) -> tuple[Inference, list[np.ndarray]]:
        """Decodes a request and answers it within the request timeout, counted and timed; raises V2Error."""
        with self._accounted(protocol):
            async with asyncio.timeout(self.config.request_timeout):  # no extra task per request, as wait_for makes
                self._check_ready()
                inference = await decode(self.signature)
                future = self._submit(inference)
                try:
                    outputs = await asyncio.wrap_future(future)
                except Exception as exc:  # the timeout and cancellation pass (asyncio raises them as BaseException)
                    raise V2Error(400, f"inference failed: {exc}") from None
                return inference, self._answer(outputs)

    def infer_blocking(
        self,
        decode: Callable[[Signature], Inference],
        protocol: str,
        on_submit: Callable[[Future[Tensors]], object] = lambda _: None,
    ) -> tuple[Inference, list[np.ndarray]]:
        """`infer` for a transport's own thread (gRPC), which waits for the batcher's answer without the event
        loop; `on_submit` gets the request's future (cancelling it drops the request)."""
        with self._accounted(protocol):
            deadline = time.monotonic() + self.config.request_timeout
            self._check_ready()
            inference = decode(self.signature)
            future = self._submit(inference)
            on_submit(future)
            try:
                outputs = future.result(timeout=max(0.0, deadline - time.monotonic()))
            except (TimeoutError, CancelledError):
                raise
            except Exception as exc:
                raise V2Error(400, f"inference failed: {exc}") from None
            finally:
                future.cancel()  # past the timeout: dropped if still queued (no-op once answered)
            return inference, self._answer(outputs)

    def _check_ready(self) -> None:
        if not self.ready or self.batcher is None:
            raise V2Error(503, "model not ready")

    def _submit(self, inference: Inference) -> Future[Tensors]:
        assert self.batcher is not None
        try:
            return self.batcher.submit(tuple(torch.from_numpy(a) for a in inference.inputs))
        except queue.Full:
            raise V2Error(503, f"{self.config.max_queue} requests already queued", "queue_full") from None

    def _answer(self, outputs: Tensors) -> list[np.ndarray]:
        specs = self.signature.outputs
        if len(outputs) != len(specs):
            raise V2Error(500, f"the model returned {len(outputs)} outputs, its signature names {len(specs)}")
        return [o.numpy().astype(DATATYPES[s.datatype], copy=False) for o, s in zip(outputs, specs, strict=True)]

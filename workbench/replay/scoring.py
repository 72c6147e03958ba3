"""Score one batch with both models: error isolation, timeouts, latency modes, shared GPU transfers.

- Throughput mode times each model's call on the whole batch and amortizes it per row.
- Online mode sends requests one at a time (or in micro-batches of ``online_batch``), each timed with
  device synchronization, so P50/P95/P99 reflect what a serving endpoint would see.
- An exception, a non-finite score or an output of the wrong shape marks only the rows concerned: a
  failing call is bisected down to the failing rows. ``model_timeout`` bounds each call; a call that
  runs past it marks its rows ``timeout``, and a model that times out on consecutive calls is disabled
  for the rest of the run (its remaining rows are errors with that reason, never silently dropped).
- A model in an isolated worker process (:mod:`workbench.replay.isolation`) plugs in as a predictor with
  ``predict_timed(batch, timeout)``: it enforces the timeout itself (by killing its worker) and reports
  the model's own call time; a dead worker is a failure like an exception, bisected to its rows.
- When both models are torch modules on the same CUDA device, a batch's features are laid out once
  (column-major, pinned host memory, filled off the main thread), copied once, transposed on the GPU
  and fed to both models; timing uses CUDA events.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from workbench import WorkbenchError
from workbench.replay.models import Predictor, TorchPredictor
from workbench.replay.resources import ModelMeter
from workbench.tasks import REGRESSION

log = logging.getLogger(__name__)
MAX_CONSECUTIVE_TIMEOUTS = 3


@dataclass(frozen=True)
class ScoringOptions:
    mode: str = "throughput"
    online_batch: int = 1
    model_timeout: float | None = None

    def __post_init__(self):
        if self.mode not in ("throughput", "online"):
            raise WorkbenchError(f"unknown latency mode {self.mode!r}: use throughput or online")
        if self.online_batch < 1:
            raise WorkbenchError("--online-batch must be at least 1")
        if self.model_timeout is not None and self.model_timeout <= 0:
            raise WorkbenchError("--model-timeout must be positive")


@dataclass(frozen=True)
class Scored:
    """One model's output for one batch: scores (NaN on error; for a multi-class classifier an n x C matrix of
    class probabilities, a row of NaN on error), per-row error reasons (None: no row failed), latency in ms."""

    scores: np.ndarray
    errors: list | None
    latency_ms: np.ndarray


class ModelTimeout(Exception):
    pass


class ModelDisabled(Exception):
    """The model is switched off for the rest of the run; the message is its rows' reason (not bisected)."""


class RowFailure(Exception):
    """A failure whose message is already the rows' reason (e.g. from an isolated worker); bisected."""


TORCHSCRIPT_HEADER = "The following operation failed in the TorchScript interpreter"


def error_text(e: BaseException) -> str:
    """The reason a failing call gives its rows: ``Type: first line`` of the exception (for a TorchScript
    module, the error its code raised, which TorchScript puts last, after its own traceback)."""
    if isinstance(e, (ModelTimeout, ModelDisabled, RowFailure)):
        return str(e)[:500]
    lines = [line for line in str(e).splitlines() if line.strip()]
    if lines and lines[0].startswith(TORCHSCRIPT_HEADER):  # the cause is the traceback's last line
        return f"TorchScript {lines[-1].removeprefix('builtins.')}"[:500]
    return f"{type(e).__name__}: {lines[0] if lines else ''}"[:500]


@dataclass
class ModelRunner:
    """Calls one predictor with an optional timeout and disables it after repeated timeouts."""

    model: Predictor
    timeout: float | None = None
    consecutive_timeouts: int = 0
    disabled: str | None = None
    meter: ModelMeter | None = None  # counts each successful call (None: resources are not measured)
    width: int | None = None  # the columns of the model's output (``ModelRef.width``), None: one score per row
    quantiles: tuple[float, ...] | None = None  # a quantile regression model's levels (its output's columns 1..)

    def __post_init__(self) -> None:
        ref = getattr(self.model, "ref", None)
        if ref is not None and self.width is None:
            self.width = getattr(ref, "width", None)
            self.quantiles = ref.quantiles if ref.task == REGRESSION and ref.quantiles else None

    def call(self, batch: pa.Table) -> tuple[np.ndarray, float]:
        """Scores and the call's own duration in seconds; raises what the model raises."""
        if self.disabled:
            raise ModelTimeout(self.disabled)
        timed = getattr(self.model, "predict_timed", None)  # an isolated model enforces the timeout itself
        if timed is not None:
            try:
                out, seconds, cpu = timed(batch, self.timeout)
            except ModelTimeout:
                self._timed_out()
                raise
            self.consecutive_timeouts = 0
            if self.meter is not None:
                self.meter.add(batch.num_rows, seconds, cpu, "process")
            return out, seconds
        if self.timeout is None:
            if self.meter is None:
                t0 = time.perf_counter()
                out = self.model.predict(batch)
                return out, time.perf_counter() - t0
            self.meter.gpu_start()
            c0, t0 = time.thread_time(), time.perf_counter()
            out = self.model.predict(batch)
            seconds, cpu = time.perf_counter() - t0, time.thread_time() - c0
            self.meter.gpu_stop(seconds)
            self.meter.add(batch.num_rows, seconds, cpu)
            return out, seconds
        box: dict[str, Any] = {}
        meter = self.meter

        def work():
            if meter is not None:
                meter.gpu_start()
            c0, t0 = time.thread_time(), time.perf_counter()
            try:
                box["out"] = self.model.predict(batch)
            except BaseException as e:  # handed to the caller's thread below
                box["exc"] = e
            box["seconds"], box["cpu"] = time.perf_counter() - t0, time.thread_time() - c0

        t = threading.Thread(target=work, daemon=True, name="model-call")
        t.start()
        t.join(self.timeout)
        if t.is_alive():  # the call is abandoned; the daemon thread ends with the process at the latest
            self._timed_out()
            raise ModelTimeout(f"timeout: no answer within {self.timeout:g} s")
        self.consecutive_timeouts = 0
        if "exc" in box:
            raise box["exc"]
        if meter is not None:
            meter.gpu_stop(box["seconds"])
            meter.add(batch.num_rows, box["seconds"], box["cpu"])
        return box["out"], box["seconds"]

    def _timed_out(self) -> None:
        self.consecutive_timeouts += 1
        if self.consecutive_timeouts >= MAX_CONSECUTIVE_TIMEOUTS:
            self.disabled = f"model disabled after {MAX_CONSECUTIVE_TIMEOUTS} consecutive timeouts"


def _check_shape(out, n: int, width: int | None = None, quantiles: tuple[float, ...] | None = None) -> np.ndarray:
    """One score per row, or (``width``: the model's output columns) a row of ``width`` values: a multi-class
    classifier's class probabilities, or a quantile regression model's prediction and ``quantiles``."""
    arr = np.asarray(out)
    if arr.shape != ((n,) if width is None else (n, width)):
        if quantiles:
            raise ValueError(
                f"model returned output of shape {arr.shape} for {n} rows, a prediction and {len(quantiles)} quantiles"
            )
        if width is not None:
            raise ValueError(f"model returned output of shape {arr.shape} for {n} rows and {width} classes")
        raise ValueError(f"model returned output of shape {arr.shape} for {n} rows")
    return arr.astype(np.float64, copy=False)


def quantile_errors(out: np.ndarray, levels: tuple[float, ...]) -> dict[int, str]:
    """The rows of a quantile regression model's output (prediction, then ``levels`` ascending) whose quantiles
    decrease as the level rises, each with its reason (quantiles must not cross)."""
    q = out[:, 1:]
    with np.errstate(invalid="ignore"):
        drop = np.diff(q, axis=1) < 0
    bad = np.flatnonzero(drop.any(axis=1))
    reasons = {}
    for i in bad:
        j = int(np.argmax(drop[i]))
        reasons[int(i)] = (
            f"quantiles cross: q{levels[j + 1]:g} = {q[i, j + 1]:.6g} is below q{levels[j]:g} = {q[i, j]:.6g}"
        )
    return reasons


def _stack(parts: list[np.ndarray]) -> np.ndarray:
    """Row blocks of one model's output: a failed block (NaN scores) takes the width of the others."""
    width = next((p.shape[1] for p in parts if p.ndim == 2), None)
    if width is None:
        return np.concatenate(parts)
    return np.concatenate([p if p.ndim == 2 else np.repeat(p[:, None], width, axis=1) for p in parts])


def _predict_isolated(runner: ModelRunner, batch: pa.Table) -> tuple[np.ndarray, list, float]:
    """(scores, errors, seconds of successful calls); failing calls are bisected to the failing rows."""
    n = batch.num_rows
    try:
        out, seconds = runner.call(batch)
        out = _check_shape(out, n, runner.width, runner.quantiles)
    except (ModelTimeout, ModelDisabled) as e:  # bisecting a hanging or disabled model would multiply the hang
        return np.full(n, np.nan), [str(e)] * n, 0.0
    except Exception as e:  # the model's failure is data: isolate it to the rows that cause it
        if n == 1:
            return np.array([np.nan]), [error_text(e)], 0.0
        half = n // 2
        s1, e1, t1 = _predict_isolated(runner, batch.slice(0, half))
        s2, e2, t2 = _predict_isolated(runner, batch.slice(half))
        return _stack([s1, s2]), e1 + e2, t1 + t2
    errors: list = [None] * n
    bad = ~np.isfinite(out) if out.ndim == 1 else ~np.isfinite(out).all(axis=1)
    if bad.any():
        out = out.copy()
        what = "score" if out.ndim == 1 else "quantile output" if runner.quantiles else "class probability"
        for i in np.flatnonzero(bad):
            errors[i] = f"non-finite {what}: {out[i] if out.ndim == 1 else out[i][~np.isfinite(out[i])][0]}"
        out[bad] = np.nan
    if runner.quantiles:  # crossing quantiles are not a distribution's: the row fails, with the reason
        crossed = quantile_errors(out, runner.quantiles)
        if crossed:
            out = out.copy()
            for row, reason in crossed.items():
                errors[row] = reason
                out[row] = np.nan
    return out, errors, seconds


def score_throughput(runner: ModelRunner, batch: pa.Table) -> Scored:
    """Whole-batch call; latency is the call time amortized per row."""
    scores, errors, seconds = _predict_isolated(runner, batch)
    return Scored(scores, errors, np.full(batch.num_rows, seconds * 1000.0 / max(1, batch.num_rows)))


def score_online(runner: ModelRunner, batch: pa.Table, micro: int) -> Scored:
    """Requests in micro-batches of ``micro``; each request's latency is its micro-batch's call time."""
    n = batch.num_rows
    parts: list[np.ndarray] = []
    latency = np.empty(n)
    errors: list = []
    for i in range(0, n, micro):
        part = batch.slice(i, micro)
        s, e, seconds = _predict_isolated(runner, part)
        parts.append(s)
        latency[i : i + part.num_rows] = seconds * 1000.0
        errors.extend(e)
    return Scored(_stack(parts) if parts else np.empty(0), errors, latency)


class PairScorer:
    """Scores batches with both models; ``prepare`` may run on a reader thread, ``score`` on the main one."""

    def __init__(
        self, models: Mapping[str, Predictor], options: ScoringOptions = ScoringOptions(), measure: bool = True
    ):
        self.models = models
        self.options = options
        self.meters = {r: ModelMeter(m.device) for r, m in models.items()} if measure else None
        self.runners = {
            r: ModelRunner(m, options.model_timeout, meter=self.meters[r] if self.meters else None)
            for r, m in models.items()
        }
        self.gpu = _SharedGpuInput.applicable(models, options)

    @property
    def features(self) -> list[str]:
        return sorted({f for m in self.models.values() for f in m.ref.features})

    def prepare(self, batch: pa.Table) -> Any:
        return self.gpu.prepare(batch) if self.gpu else batch

    def score(self, prepared: Any) -> dict[str, Scored]:
        if self.gpu:
            host, n = prepared
            try:
                return self.gpu.score(host, n, self.meters)
            except Exception as e:  # fall back to per-model isolation for this batch
                log.warning("shared GPU scoring failed (%s); scoring this batch model by model", error_text(e))
                prepared = self.gpu.table(host, n)
            finally:
                self.gpu.release(host)
        batch = prepared
        if self.options.mode == "online":
            return {r: score_online(run, batch, self.options.online_batch) for r, run in self.runners.items()}
        return {r: score_throughput(run, batch) for r, run in self.runners.items()}


class _SharedGpuInput:
    """One pinned, column-major host buffer and one host-to-device copy per batch for two torch models."""

    RING = 4

    def __init__(self, models: dict[str, TorchPredictor]):
        import torch

        self.torch = torch
        self.models = models
        self.device = next(iter(models.values())).device
        self.features = sorted({f for m in models.values() for f in m.ref.features})
        pos = {f: i for i, f in enumerate(self.features)}
        self.index = {}
        for role, m in models.items():
            idx = [pos[f] for f in m.ref.features]
            self.index[role] = None if idx == list(range(len(self.features))) else torch.tensor(idx, device=self.device)
        self._free: list = []
        self._cap = 0
        self._lock = threading.Lock()

    @staticmethod
    def applicable(models: Mapping[str, Predictor], options: ScoringOptions) -> _SharedGpuInput | None:
        devices = {getattr(m, "device", "cpu") for m in models.values()}
        torch_models = {r: m for r, m in models.items() if isinstance(m, TorchPredictor)}
        if (
            options.mode == "throughput"
            and all(getattr(m.ref, "width", None) is None for m in models.values())  # one score per row
            and options.model_timeout is None
            and len(torch_models) == len(models)
            and len(devices) == 1
            and devices.pop().startswith("cuda")
        ):
            return _SharedGpuInput(torch_models)
        return None

    def _buffer(self, n: int):
        with self._lock:
            if n > self._cap:
                self._free.clear()
                self._cap = n
            if self._free:
                return self._free.pop()
        return self.torch.empty((len(self.features), self._cap), dtype=self.torch.float32).pin_memory()

    def release(self, host) -> None:
        with self._lock:
            if host.shape[1] == self._cap and len(self._free) < self.RING:
                self._free.append(host)

    def prepare(self, batch: pa.Table):
        n = batch.num_rows
        host = self._buffer(n)
        view = host.numpy()
        for j, f in enumerate(self.features):
            col = batch.column(f)
            if col.null_count:
                view[j, :n] = np.asarray(col.to_pandas(), dtype=np.float32)
                continue
            at = 0
            for chunk in col.chunks:  # chunk by chunk into the pinned buffer: no intermediate copy
                view[j, at : at + len(chunk)] = chunk.to_numpy(zero_copy_only=False)
                at += len(chunk)
        return host, n  # not the batch: it would stay in memory until scored, while the buffer has it all

    def table(self, host, n: int) -> pa.Table:
        """The features of a prepared batch as a table (a copy: the buffer goes back to the ring)."""
        view = host.numpy()
        return pa.table({f: view[j, :n].copy() for j, f in enumerate(self.features)})

    def score(self, host, n: int, meters: Mapping[str, ModelMeter] | None = None) -> dict[str, Scored]:
        """Both models' scores of a prepared batch; ``meters`` count each model's call, GPU peak and busy time."""
        torch = self.torch
        with torch.inference_mode():
            x = host[:, :n].to(self.device, non_blocking=True).t()
            outs, events, cpu = {}, {}, {}
            for role, m in self.models.items():
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                idx = self.index[role]
                if meters:
                    meters[role].gpu_start()
                c0 = time.thread_time()  # the host's share: launching the model's kernels
                start.record()
                xm = x if idx is None else x.index_select(1, idx)
                outs[role] = m.module(xm).reshape(-1).float()
                end.record()
                cpu[role] = time.thread_time() - c0
                if meters:  # allocations are counted when launched: no synchronization needed
                    meters[role].gpu_stop(0.0)
                events[role] = (start, end)
            both = torch.stack([outs[r] for r in self.models]).cpu()  # one device-to-host copy, synchronizes
        result = {}
        for k, role in enumerate(self.models):
            scores = both[k].numpy()  # float32: DuckDB widens it to DOUBLE in the writer threads
            if scores.shape != (n,):
                raise ValueError("wrong output shape")
            errors: list[str | None] | None = None
            bad = ~np.isfinite(scores)
            if bad.any():
                errors = [None] * n
                for i in np.flatnonzero(bad):
                    errors[i] = f"non-finite score: {scores[i]}"
                scores[bad] = np.nan
            ms = events[role][0].elapsed_time(events[role][1])
            if meters:
                meters[role].gpu_busy_s += ms / 1000.0
                meters[role].add(n, ms / 1000.0, cpu[role])
            result[role] = Scored(scores, errors, np.full(n, ms / max(1, n)))
        return result

"""Isolated scoring: each model runs in a worker process, so a model that kills its process, hangs or
leaks memory costs its own rows and nothing else.

A *zygote* process, started once per replay as a fresh interpreter (``python -m workbench.replay.isolation``),
loads both models and never scores. Each worker is ``os.fork``-ed from it and serves one model, so replacing a dead
worker costs milliseconds, not a model load. The parent talks to a worker over a socket of its own (the zygote
hands it over) and watches the call:

- the worker dies (``os.abort``, a segfault, the OOM killer): the call raises :class:`WorkerDied` naming
  the signal; the scorer bisects the batch to the rows that kill it, as it does for exceptions, and the
  next call forks a fresh worker. After ``MAX_CONSECUTIVE_CRASHES`` single rows in a row kill it, the
  model is disabled for the run (its remaining rows get that reason; nothing is dropped);
- the call runs past the timeout: the worker is killed (``ModelTimeout``, counted as the in-process
  timeouts are), so a hung model holds no thread or CPU afterwards;
- the worker's resident memory passes ``memory_limit_mb``: after a call (a leak) it is replaced before
  the next one; during a call it is killed, and the call is tried once more on a fresh worker when the
  old one had served calls before (a leak again); a fresh worker passing the limit fails the call's rows.

The model's exceptions come back as their text, so errors read the same as in-process scoring. Linux
only (``/proc`` for memory, ``fork``, descriptor passing); torch models on CUDA move to the device in
the worker, after the fork.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing import reduction
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import pyarrow as pa

from workbench import WorkbenchError
from workbench.replay.models import Predictor, PyfuncPredictor, SklearnPredictor, TorchPredictor
from workbench.replay.scoring import ModelDisabled, ModelTimeout, RowFailure, error_text

log = logging.getLogger(__name__)
MAX_CONSECUTIVE_CRASHES = 3
POLL_S = 0.05


@dataclass(frozen=True)
class IsolationOptions:
    memory_limit_mb: float | None = 4096.0  # a worker above this resident size is replaced (None: no limit)
    start_timeout_s: float = 600.0  # loading both models in the zygote


class WorkerDied(RowFailure):
    """The model's worker process died during the call (its rows carry the signal)."""


class _OverMemory(Exception):
    """A worker killed for passing the memory limit during a call; ``fresh``: it had served no call before."""

    def __init__(self, message: str, fresh: bool):
        super().__init__(message)
        self.fresh = fresh


# -- the zygote and its workers (run in the child processes) ------------------------------------------
def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (no orphaned worker keeps a hung model)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _load(spec: tuple, tracking_uri: str | None) -> Predictor:
    kind, value, device = spec
    if kind == "object":
        return value
    import mlflow

    from workbench.replay.models import load_predictor

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    # CUDA must not be initialised before a fork: the zygote loads on the CPU, the worker moves the model
    return load_predictor(value, "cpu" if str(device).startswith("cuda") else device)


def _worker(conn: Connection, model: Predictor, device: str) -> None:
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    if isinstance(model, TorchPredictor) and device != model.device:
        model = TorchPredictor(model.ref, model.module, device)
    while True:
        try:
            batch = conn.recv()
        except (EOFError, OSError):
            return
        t0, c0 = time.perf_counter(), time.process_time()  # the worker serves one model: its CPU is the model's
        msg: tuple[Any, ...]
        try:
            out = np.asarray(model.predict(batch))
            msg = ("ok", out, time.perf_counter() - t0, time.process_time() - c0)
        except Exception as e:  # the model's failure is data: it goes back as the row's reason
            msg = ("error", error_text(e))
        try:
            conn.send(msg)
        except Exception as e:  # e.g. an output that cannot be pickled
            conn.send(("error", error_text(e)))


def _exit_text(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        return f"killed by {name}"
    return f"exited with code {os.WEXITSTATUS(status)}"


def _zygote(conn: Connection, specs: dict[str, tuple], tracking_uri: str | None) -> None:
    """Load the models, then fork a worker per request and report how workers ended."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        models = {role: _load(spec, tracking_uri) for role, spec in specs.items()}
    except BaseException as e:  # reported to the parent, which raises a WorkbenchError
        conn.send(("error", error_text(e)))
        return
    conn.send(("ready", None))
    workers: set[int] = set()
    try:
        while True:
            try:
                op, arg = conn.recv()
            except (EOFError, OSError):
                return  # the parent is gone
            if op == "fork":
                ours, theirs = socket.socketpair()
                pid = os.fork()
                if pid == 0:
                    conn.close()
                    ours.close()
                    try:
                        _worker(Connection(theirs.detach()), models[arg], specs[arg][2])
                    finally:
                        os._exit(0)
                theirs.close()
                workers.add(pid)
                reduction.send_handle(conn, ours.fileno(), 0)
                ours.close()
                conn.send(pid)
            elif op == "reap":
                _, status = os.waitpid(arg, 0)
                workers.discard(arg)
                conn.send(_exit_text(status))
            else:
                return
    finally:
        for pid in workers:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass


# -- the parent's side ---------------------------------------------------------------------------------
def _spec(model: Predictor) -> tuple:
    """How the zygote gets a model: loaded again from its URI (MLflow models) or as a pickled object."""
    if isinstance(model, (SklearnPredictor, PyfuncPredictor, TorchPredictor)):
        return ("uri", model.ref.uri, model.device)
    return ("object", model, model.device)


def _rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


class Zygote:
    """The process that holds the loaded models and forks workers from them."""

    def __init__(self, models: dict[str, Predictor], options: IsolationOptions):
        import mlflow

        ours, theirs = socket.socketpair()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "workbench.replay.isolation", str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
        )
        theirs.close()
        self._conn = Connection(ours.detach())
        self._conn.send(sys.path)  # first, so that pickled models import as they do here
        self._conn.send(({r: _spec(m) for r, m in models.items()}, mlflow.get_tracking_uri()))
        if not self._conn.poll(options.start_timeout_s):
            self.close()
            raise WorkbenchError(f"the isolated model workers did not load within {options.start_timeout_s:g} s")
        try:
            kind, detail = self._conn.recv()
        except EOFError:
            self.close()
            raise WorkbenchError(f"the isolated model loader died ({self._exitcode()})") from None
        if kind != "ready":
            self.close()
            raise WorkbenchError(f"the isolated model workers cannot load the models: {detail}")

    def _exitcode(self) -> str:
        try:
            code = self._proc.wait(5)
        except subprocess.TimeoutExpired:
            return "still running"
        return f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"

    def fork(self, role: str) -> tuple[Connection, int]:
        self._conn.send(("fork", role))
        fd = reduction.recv_handle(self._conn)
        return Connection(fd), self._conn.recv()

    def reap(self, pid: int) -> str:
        """How worker ``pid`` ended (waits for it: call after it died or was killed)."""
        self._conn.send(("reap", pid))
        return self._conn.recv()

    def close(self) -> None:
        try:
            self._conn.send(("stop", None))
        except (OSError, ValueError):
            pass
        self._conn.close()
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


class IsolatedPredictor:
    """A :class:`~workbench.replay.models.Predictor` whose model runs in a worker forked from a :class:`Zygote`."""

    def __init__(self, zygote: Zygote, role: str, model: Predictor, options: IsolationOptions):
        self.ref, self.device = model.ref, model.device
        self.zygote, self.role, self.options = zygote, role, options
        self.conn: Connection | None = None
        self.pid: int | None = None
        self.served = 0  # calls the current worker has answered
        self.consecutive_crashes = 0
        self.disabled: str | None = None
        self.stats = {"calls": 0, "crashes": 0, "timeouts": 0, "memory_kills": 0, "recycled": 0}

    def predict(self, batch: pa.Table) -> np.ndarray:
        return self.predict_timed(batch, None)[0]

    def predict_timed(self, batch: pa.Table, timeout: float | None) -> tuple[np.ndarray, float, float]:
        """The model's output, its own call time and the CPU seconds its worker process spent on the call;
        enforces ``timeout`` by killing.

        A worker that passes the memory limit during a call after serving earlier calls (a leak) is
        replaced and the call tried once more; a fresh worker passing it fails the call's rows."""
        if self.disabled:
            raise ModelDisabled(self.disabled)
        try:
            return self._call(batch, timeout)
        except _OverMemory as e:
            if e.fresh:
                self.stats["memory_kills"] += 1
                raise RowFailure(str(e)) from None
            self.stats["recycled"] += 1
        try:
            return self._call(batch, timeout)
        except _OverMemory as e:
            self.stats["memory_kills"] += 1
            raise RowFailure(str(e)) from None

    def _call(self, batch: pa.Table, timeout: float | None) -> tuple[np.ndarray, float, float]:
        if self.conn is None:
            self.conn, self.pid = self.zygote.fork(self.role)
            self.served = 0
        self.stats["calls"] += 1
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            self.conn.send(batch)
            while not self.conn.poll(POLL_S):
                if deadline is not None and time.monotonic() > deadline:
                    self._end(kill=True)
                    self.stats["timeouts"] += 1
                    raise ModelTimeout(f"timeout: no answer within {timeout:g} s")
                rss = self._over_limit()
                if rss is not None:
                    fresh = self.served == 0
                    self._end(kill=True)
                    raise _OverMemory(
                        f"worker exceeded the memory limit ({rss:.0f} MB > {self.options.memory_limit_mb:g} MB)", fresh
                    )
            kind, *rest = self.conn.recv()
        except (EOFError, OSError):  # the worker died: the exit status says how
            how = self._end(kill=False)
            self.stats["crashes"] += 1
            if batch.num_rows == 1:
                self.consecutive_crashes += 1
                if self.consecutive_crashes >= MAX_CONSECUTIVE_CRASHES:
                    self.disabled = f"model disabled after {MAX_CONSECUTIVE_CRASHES} consecutive worker crashes"
                    log.warning("%s model: %s", self.role, self.disabled)
            raise WorkerDied(f"model worker died: {how}") from None
        self.consecutive_crashes = 0
        self.served += 1
        if self._over_limit() is not None:  # grew past the limit (a leak): a fresh worker for the next call
            self._end(kill=True)
            self.stats["recycled"] += 1
        if kind == "error":
            raise RowFailure(rest[0])
        return rest[0], rest[1], rest[2]

    def _over_limit(self) -> float | None:
        limit = self.options.memory_limit_mb
        if limit is None or self.pid is None:
            return None
        rss = _rss_mb(self.pid)
        return rss if rss is not None and rss > limit else None

    def _end(self, kill: bool) -> str:
        """Stop the current worker (killing it, or after it died) and return how it ended."""
        pid, conn = self.pid, self.conn
        if pid is None:
            raise RuntimeError(f"{self.role} model: no worker is running")
        self.pid = self.conn = None
        if conn is not None:
            conn.close()
        if kill:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return self.zygote.reap(pid)

    def close(self) -> None:
        if self.pid is not None:
            self._end(kill=True)


@contextmanager
def isolated(
    models: dict[str, Predictor], options: IsolationOptions = IsolationOptions()
) -> Iterator[dict[str, IsolatedPredictor]]:
    """The models, each served by worker processes of one zygote; everything is stopped on exit."""
    zygote = Zygote(models, options)
    wrapped = {role: IsolatedPredictor(zygote, role, m, options) for role, m in models.items()}
    try:
        yield wrapped
    finally:
        for role, w in wrapped.items():
            w.close()
            if w.stats["crashes"] or w.stats["timeouts"] or w.stats["memory_kills"] or w.stats["recycled"]:
                log.info("isolated %s model: %s", role, _summary(w.stats))
        zygote.close()


def _summary(stats: dict[str, Any]) -> str:
    return ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in stats.items())


def _main(fd: int) -> None:
    conn = Connection(fd)
    sys.path[:] = conn.recv()
    specs, tracking_uri = conn.recv()
    _zygote(conn, specs, tracking_uri)


if __name__ == "__main__":
    _main(int(sys.argv[1]))

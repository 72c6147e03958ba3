"""Replay on Ray: the same run as Ray Data batch inference, one model-pair actor per GPU or CPU slot.

The run's remaining traffic is staged as one Parquet file, Ray Data maps it through :class:`PairActor`
(which loads both models from MLflow itself, so the tracking URI must be reachable from the workers).
With a PostgreSQL catalog each actor commits its paired rows straight into the lake, unit by unit (a
contiguous ``_row`` range each, refused when already committed), and the driver only counts them (with the
lake's data files on an object store, the actors get the driver's ``AWS_*`` variables); with the
SQLite catalog (one machine's file) the driver commits them batch by batch in ``_row`` order. Either way a
resume skips exactly what was committed and every row is committed once. Scores, classes and errors are
identical to a local replay; latencies are measured inside the actors.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from workbench import WorkbenchError
from workbench.replay.models import Predictor
from workbench.replay.pipeline import (
    ReplayOptions,
    class_thresholds,
    model_classes,
    model_quantiles,
    paired_table,
    resolve_task,
    with_task,
)
from workbench.replay.scoring import PairScorer
from workbench.store import AlreadyCommitted, RunState, Store
from workbench.store.lake import LakeTarget, is_url
from workbench.store.object_store import aws_env

log = logging.getLogger(__name__)


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401  (Ray Data is the part we need)
    except ImportError:
        raise WorkbenchError("--executor ray needs Ray: pip install 'canary-workbench[ray]'") from None
    return ray


def _check_placement(actors: int, use_gpu: bool, cpus: int, gpus: int) -> None:
    """Refuse, before anything starts, a request the cluster cannot place: each CPU actor holds a CPU for
    the whole run, and the tasks that read the traffic need one more, or the replay waits for ever."""
    if actors < 1:
        raise WorkbenchError(f"--ray-actors must be at least 1, not {actors}")
    if use_gpu and actors > gpus:
        raise WorkbenchError(f"--ray-actors {actors} needs {actors} GPUs (one per actor); the cluster has {gpus}")
    if not use_gpu and actors > cpus - 1:
        fits = f"use --ray-actors {cpus - 1} or fewer" if cpus > 1 else "add a CPU to the cluster"
        raise WorkbenchError(
            f"--ray-actors {actors} needs {actors + 1} CPUs on the cluster (one per actor, one for reading the "
            f"traffic); it has {cpus}: {fits}"
        )


def contiguous_units(rows: np.ndarray, prev: np.ndarray) -> list[tuple[int, int]]:
    """``(start, stop)`` offsets of the commit units of a batch whose ascending ``_row`` values are ``rows``,
    each row's ``prev`` the traffic set's ``_row`` before it (``_prev_row``; -1 for none): a unit ends only
    where the traffic holds a row between two of the batch's (committed before a resume, or in another batch).
    Gaps that no traffic row fills (rows the ingest quarantined) stay inside a unit, as in a local replay."""
    cuts = np.flatnonzero(prev[1:] != rows[:-1]) + 1
    bounds = [0, *cuts.tolist(), len(rows)]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


class PairActor:
    """A Ray actor holding both models; maps an Arrow batch of traffic to its paired result rows, or, given
    the run's lake (``commit``: the run id, its lake's folder and target, and the variables that reach its
    data path: :func:`~workbench.store.object_store.aws_env`), commits them itself and returns one row per batch
    with the rows it committed."""

    def __init__(
        self,
        uris: dict,
        tracking_uri: str,
        device: str,
        options: ReplayOptions,
        commit: tuple[str, str, LakeTarget, dict[str, str]] | None = None,
    ):
        import mlflow

        from workbench.replay.models import load_predictor

        mlflow.set_tracking_uri(tracking_uri)
        models = {role: load_predictor(uri, device) for role, uri in uris.items()}
        task = resolve_task(models, options.task)
        with_task(models, task)
        self.scorer = PairScorer(models, options.scoring(), measure=False)  # only load costs are measured here
        self.thresholds = class_thresholds(models, task)
        classes = model_classes(models, task)
        self.classes = len(classes) if classes is not None else None
        quantiles = model_quantiles(models, task)[0]
        self.quantiles = len(quantiles) if quantiles is not None else None
        self.sink: tuple[str, Store] | None = None
        if commit is not None:
            run_id, folder, target, env = commit
            os.environ.update(env)  # this actor's process: its lake's DuckDB reads them when it attaches
            self.sink = (run_id, Store(folder, target=target))

    def __call__(self, batch: pa.Table) -> pa.Table:
        t0 = time.perf_counter()
        scored = self.scorer.score(self.scorer.prepare(batch))
        row_ids = batch.column("_row").combine_chunks()
        paired = paired_table(row_ids, scored, self.thresholds, self.classes, self.quantiles)
        if self.sink is None:
            return paired
        run_id, store = self.sink
        seconds = time.perf_counter() - t0
        rows = paired.column("_row").to_numpy()
        prev = batch.column("_prev_row").fill_null(-1).to_numpy()
        done = 0
        for a, b in contiguous_units(rows, prev):
            unit = paired.slice(a, b - a).combine_chunks()
            try:
                store.commit_batch(
                    run_id, None, int(rows[a]), int(rows[b - 1]), b - a, seconds * (b - a) / len(rows), unit
                )
                done += b - a
            except AlreadyCommitted:  # a retried task: its rows are in the lake once already
                log.info("rows %d-%d of %s were committed before", rows[a], rows[b - 1], run_id)
        return pa.table({"rows": pa.array([done], pa.int64())})


class RayExecutor:
    """Runs a replay's scoring on a Ray cluster (``address`` None starts a local one).

    The remaining traffic is staged once as a Parquet file (``staging_dir``: shared storage when the
    cluster is remote), read by Ray Data and mapped through model-pair actors, which commit into the lake
    themselves when its catalog is PostgreSQL; otherwise the driver commits batch by batch, in ``_row`` order.
    """

    def __init__(
        self,
        address: str | None = None,
        actors: int | None = None,
        device: str = "auto",
        staging_dir: str | None = None,
    ):
        self.address, self.actors, self.device, self.staging_dir = address, actors, device, staging_dir

    def run(self, store: Store, run: RunState, models: dict[str, Predictor], options: ReplayOptions, progress) -> None:
        ray = _ray()
        import mlflow

        if not ray.is_initialized():
            ray.init(
                address=self.address,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
                runtime_env={"env_vars": {"MLFLOW_DISABLE_TELEMETRY": "true"}},
            )
        direct = store.target is not None and store.target.postgres is not None  # actors write into the lake
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = not direct
        ctx.enable_progress_bars = False
        gpus = int(ray.cluster_resources().get("GPU", 0))
        cpus = int(ray.cluster_resources().get("CPU", 1))
        use_gpu = gpus > 0 and any(m.ref.flavor == "pytorch" for m in models.values()) and self.device != "cpu"
        actors = self.actors or (gpus if use_gpu else max(1, cpus - 1))
        _check_placement(actors, use_gpu, cpus, gpus)
        uris = {role: m.ref.uri for role, m in models.items()}
        features = sorted({f for m in models.values() for f in m.ref.features})
        run_id, done = run.run_id, run.rows_done
        commit = None
        if direct:  # with the credentials of an object-store data path
            commit = (run_id, str(store.lake), store.target, aws_env() if is_url(store.data_path or "") else {})
        with tempfile.TemporaryDirectory(prefix=f"workbench-{run_id}-", dir=self.staging_dir) as staging:
            path = Path(staging) / "traffic.parquet"
            store.export_traffic_parquet(run.traffic, features, run.committed, path, row_group_rows=options.batch_size)
            ds = ray.data.read_parquet(str(path)).map_batches(
                PairActor,
                batch_size=options.batch_size,
                batch_format="pyarrow",
                fn_constructor_args=(uris, mlflow.get_tracking_uri(), "cuda" if use_gpu else "cpu", options, commit),
                concurrency=actors,
                num_gpus=1 if use_gpu else 0,
            )
            batch_no = run.next_batch
            for table in ds.iter_batches(batch_size=None if direct else options.batch_size, batch_format="pyarrow"):
                if direct:  # the actors committed; the driver counts
                    done += sum(table.column("rows").to_pylist())
                else:
                    rows = table.column("_row")
                    store.commit_batch(run_id, batch_no, rows[0].as_py(), rows[-1].as_py(), table.num_rows, 0.0, table)
                    batch_no += 1
                    done += table.num_rows
                if progress:
                    progress(done, run.rows_total)
        log.info(
            "ray replay of %s used %d actor(s)%s%s",
            run_id,
            actors,
            " on GPUs" if use_gpu else "",
            ", each committing into the lake" if direct else "",
        )
        if self.address is None:
            ray.shutdown()

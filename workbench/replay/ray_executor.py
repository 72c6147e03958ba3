"""Replay on Ray: the same run as Ray Data batch inference, one model-pair actor per GPU or CPU slot.

The run's remaining traffic is staged as one Parquet file, Ray Data maps it through :class:`PairActor`
(which loads both models from MLflow itself, so the tracking URI must be reachable from the workers),
and the driver commits the paired rows batch by batch in ``_row`` order, so resume and exactly-once
hold as for the local executor. Scores, classes and
errors are identical to a local replay; latencies are measured inside the actors.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import pyarrow as pa

from workbench import WorkbenchError
from workbench.replay.models import Predictor
from workbench.replay.pipeline import (
    ReplayOptions,
    class_thresholds,
    model_classes,
    paired_table,
    resolve_task,
    with_task,
)
from workbench.replay.scoring import PairScorer
from workbench.store import RunState, Store

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


class PairActor:
    """A Ray actor holding both models; maps an Arrow batch of traffic to its paired result rows."""

    def __init__(self, uris: dict, tracking_uri: str, device: str, options: ReplayOptions):
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

    def __call__(self, batch: pa.Table) -> pa.Table:
        scored = self.scorer.score(self.scorer.prepare(batch))
        return paired_table(batch.column("_row").combine_chunks(), scored, self.thresholds, self.classes)


class RayExecutor:
    """Runs a replay's scoring on a Ray cluster (``address`` None starts a local one).

    The remaining traffic is staged once as a Parquet file (``staging_dir``: shared storage when the
    cluster is remote), read by Ray Data in order, mapped through model-pair actors and committed by the
    driver batch by batch, in ``_row`` order.
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
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True
        ctx.enable_progress_bars = False
        gpus = int(ray.cluster_resources().get("GPU", 0))
        cpus = int(ray.cluster_resources().get("CPU", 1))
        use_gpu = gpus > 0 and any(m.ref.flavor == "pytorch" for m in models.values()) and self.device != "cpu"
        actors = self.actors or (gpus if use_gpu else max(1, cpus - 1))
        _check_placement(actors, use_gpu, cpus, gpus)
        uris = {role: m.ref.uri for role, m in models.items()}
        features = sorted({f for m in models.values() for f in m.ref.features})
        run_id, done = run.run_id, run.rows_done
        with tempfile.TemporaryDirectory(prefix=f"workbench-{run_id}-", dir=self.staging_dir) as staging:
            path = Path(staging) / "traffic.parquet"
            store.export_traffic_parquet(run.traffic, features, run.committed, path, row_group_rows=options.batch_size)
            ds = ray.data.read_parquet(str(path)).map_batches(
                PairActor,
                batch_size=options.batch_size,
                batch_format="pyarrow",
                fn_constructor_args=(uris, mlflow.get_tracking_uri(), "cuda" if use_gpu else "cpu", options),
                concurrency=actors,
                num_gpus=1 if use_gpu else 0,
            )
            batch_no = run.next_batch
            for table in ds.iter_batches(batch_size=options.batch_size, batch_format="pyarrow"):
                rows = table.column("_row")
                store.commit_batch(run_id, batch_no, rows[0].as_py(), rows[-1].as_py(), table.num_rows, 0.0, table)
                batch_no += 1
                done += table.num_rows
                if progress:
                    progress(done, run.rows_total)
        log.info("ray replay of %s used %d actor(s)%s", run_id, actors, " on GPUs" if use_gpu else "")
        if self.address is None:
            ray.shutdown()

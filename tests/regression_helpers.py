"""Shared by the regression tests: a seeded regression traffic set with numeric labels, and in-process
regression predictors whose errors are traffic columns (so every replay predicts the same numbers)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


class LinearModel:
    """A regression predictor: 3 x + ``noise`` x the traffic column ``column`` (a seeded error per request)."""

    def __init__(self, name: str, version: str, noise: float, column: str = "zb", task: str = "regression"):
        from workbench.replay.models import ModelRef

        self.ref = ModelRef(
            uri=f"models:/{name}/{version}",
            name=name,
            version=version,
            run_id=None,
            flavor="test",
            features=("x", column),
            threshold=0.5,
            task=task,
        )
        self.device, self.noise, self.column = "cpu", noise, column

    def predict(self, batch: pa.Table) -> np.ndarray:
        return 3 * batch.column("x").to_numpy() + self.noise * batch.column(self.column).to_numpy()


class QuantileModel(LinearModel):
    """A quantile regression predictor: :class:`LinearModel`'s prediction and its quantiles at ``levels`` under
    N(0, ``spread``^2) errors (prediction + spread z_q); ``cross`` (a traffic column): rows where it is above 1.5
    get crossing quantiles, ``columns``: return this many columns rather than 1 + levels."""

    def __init__(
        self,
        name: str,
        version: str,
        noise: float,
        column: str = "zb",
        levels: tuple[float, ...] = (0.1, 0.5, 0.9),
        spread: float = 1.0,
        cross: str | None = None,
        columns: int | None = None,
    ):
        from dataclasses import replace

        super().__init__(name, version, noise, column)
        self.ref = replace(self.ref, quantiles=levels, features=("x", column, *([cross] if cross else [])))
        self.spread, self.cross, self.columns = spread, cross, columns

    def predict(self, batch: pa.Table) -> np.ndarray:
        from scipy.stats import norm

        point = super().predict(batch)
        z = norm.ppf(np.asarray(self.ref.quantiles))
        out = np.column_stack([point, point[:, None] + self.spread * z[None, :]])
        if self.cross:
            flip = batch.column(self.cross).to_numpy() > 1.5
            out[flip, 1:] = out[flip, 1:][:, ::-1]
        return out[:, : self.columns] if self.columns else out


def save_quantile_model(path: Path, models: dict, features: list[str], example, metadata: dict) -> str:
    """Save sklearn regressors of quantiles (``{level: fitted model}``, 0.5 among them) as one MLflow pyfunc whose
    output is the median as ``prediction`` and each level's ``q<level>`` column (the workbench's convention);
    returns the model folder."""
    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature

    class QuantileRegressors(mlflow.pyfunc.PythonModel):
        def __init__(self, models: dict, features: list[str]):
            self.models, self.features = models, features

        def predict(self, context, model_input, params=None):
            X = model_input[self.features]
            out = {f"q{q:g}": m.predict(X) for q, m in sorted(self.models.items())}
            return pd.DataFrame({"prediction": out["q0.5"], **out})

    wrapper = QuantileRegressors(models, features)
    signature = infer_signature(example[features], wrapper.predict(None, example))
    mlflow.pyfunc.save_model(
        str(path), python_model=wrapper, signature=signature, metadata=metadata, pip_requirements=["scikit-learn"]
    )
    return str(path)


def write_traffic(folder: Path, rows: int, seed: int = 0, unlabelled: int = 0) -> tuple[Path, Path]:
    """Traffic (x, two error columns, a segment) and its numeric labels y = 3 x + N(0, 1); the last
    ``unlabelled`` labels are null (quarantined as ``null:y``). Returns (traffic file, labels file)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(rows)
    ids = [f"q{seed}-{i:06d}" for i in range(rows)]
    folder.mkdir(parents=True, exist_ok=True)
    traffic = pa.table(
        {
            "request_id": ids,
            "event_time": pa.array(np.arange(rows) * 60, pa.timestamp("s")),
            "x": x,
            "zb": rng.standard_normal(rows),
            "zc": rng.standard_normal(rows),
            "region": np.array(["north", "south"])[rng.integers(0, 2, rows)],
        }
    )
    y = 3 * x + rng.standard_normal(rows)
    labels = pa.table(
        {
            "request_id": ids,
            "label": (y > 0).astype(np.int64),
            "y": pa.array(y, mask=np.arange(rows) >= rows - unlabelled),
        }
    )
    pq.write_table(traffic, folder / f"traffic_{seed}.parquet")
    pq.write_table(labels, folder / f"labels_{seed}.parquet")
    return folder / f"traffic_{seed}.parquet", folder / f"labels_{seed}.parquet"

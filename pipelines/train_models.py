"""Train the demo's two flight-delay models and register them in MLflow.

- baseline (alias ``champion``): gradient boosting (sklearn) trained on January-February;
- candidate (alias ``challenger``): a torch MLP trained on January-June, logged as TorchScript so it
  loads without this file and runs on a GPU when one is present.

Each model's decision threshold is the F1-optimal cut on its own training window, stored in the model's
metadata; a 20k-row sample of its training features is logged with it as the drift reference.

The regression pair (:func:`register_regression`, model ``flight-delay-minutes``) predicts the arrival delay in
minutes from the same features: a gradient-boosting baseline on January-February (squared error) and a
gradient-boosting candidate on January-June with the absolute-error loss (it targets the median delay, which
lowers the MAE of a heavy-tailed target), both sklearn, each with ``task = "regression"`` in its metadata.

The multi-class pair (:func:`register_multiclass`, model ``flight-delay-band``) predicts the arrival delay's band
(on time, 15-60 minutes late, over 60 minutes late; cancelled flights have no band and are left out) from the same
features: a multinomial logistic regression baseline on January-February (one-hot carriers and airports,
standardized numbers) and a gradient-boosting candidate on January-June, both sklearn (``predict_proba`` gives the
class probabilities), each with ``task = "multiclass"`` in its metadata.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.prepare_flights import BAND, CATEGORICAL_FEATURES, NUMERIC_FEATURES, TARGET
from workbench.config import Settings, load_settings

MODEL_NAME = "flight-delay"
REGRESSION_MODEL = "flight-delay-minutes"
MULTICLASS_MODEL = "flight-delay-band"
EXPERIMENT = "canary-workbench-demo"
PIP_REQUIREMENTS = ["scikit-learn", "pandas", "numpy", "torch==2.13.0"]


def f1_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """The score cut that maximises F1 on (y, p)."""
    grid = np.linspace(0.05, 0.95, 91)
    best, best_t = -1.0, 0.5
    for t in grid:
        pred = p >= t
        tp = np.sum(pred & (y == 1))
        f1 = 2 * tp / max(1, pred.sum() + (y == 1).sum())
        if f1 > best:
            best, best_t = f1, float(t)
    return round(best_t, 2)


def _encoder():
    """Ordinal codes for the categorical features (unknown and missing values: -1), the numbers as they are."""
    from sklearn.compose import ColumnTransformer
    from sklearn.preprocessing import OrdinalEncoder

    return ColumnTransformer(
        [
            (
                "cat",
                OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1, encoded_missing_value=-1),
                CATEGORICAL_FEATURES,
            )
        ],
        remainder="passthrough",
        verbose_feature_names_out=False,
    )


def train_baseline(train: pd.DataFrame, seed: int = 0):
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.pipeline import Pipeline

    features = CATEGORICAL_FEATURES + NUMERIC_FEATURES
    model = Pipeline(
        [
            ("encode", _encoder()),
            (
                "gbm",
                HistGradientBoostingClassifier(
                    max_iter=200,
                    learning_rate=0.1,
                    categorical_features=list(range(len(CATEGORICAL_FEATURES))),
                    random_state=seed,
                ),
            ),
        ]
    )
    model.fit(train[features], train["label"])
    return model, features


def train_candidate(train: pd.DataFrame, epochs: int = 6, seed: int = 0):
    import torch

    torch.manual_seed(seed)
    X = train[NUMERIC_FEATURES].to_numpy(np.float32)
    y = train["label"].to_numpy(np.float32)
    mean = np.nanmean(X, axis=0)
    std = np.nanstd(X, axis=0) + 1e-6

    class DelayMLP(torch.nn.Module):
        def __init__(self, mean, std):
            super().__init__()
            self.register_buffer("mean", torch.tensor(mean))
            self.register_buffer("std", torch.tensor(std))
            f = len(mean)
            self.net = torch.nn.Sequential(
                torch.nn.Linear(f, 64),
                torch.nn.ReLU(),
                torch.nn.Linear(64, 64),
                torch.nn.ReLU(),
                torch.nn.Linear(64, 1),
            )

        def forward(self, x):
            z = (x - self.mean) / self.std
            z = torch.nan_to_num(z, nan=0.0)
            return torch.sigmoid(self.net(z))

    model = DelayMLP(mean, std)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(Xt), generator=gen)
        for i in range(0, len(Xt), 1024):
            idx = perm[i : i + 1024]
            p = model(Xt[idx]).squeeze(1)
            loss = torch.nn.functional.binary_cross_entropy(p, yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    return torch.jit.script(model), NUMERIC_FEATURES


def _scores_sklearn(model, df, features):
    return model.predict_proba(df[features])[:, 1]


def _scores_torch(model, df, features):
    import torch

    with torch.inference_mode():
        return model(torch.from_numpy(df[features].to_numpy(np.float32))).squeeze(1).numpy()


def _experiment(settings: Settings) -> str:
    """The demo models' MLflow experiment (created with its artifacts in the home when missing)."""
    import mlflow

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    exp = mlflow.get_experiment_by_name(EXPERIMENT)
    if exp:
        return exp.experiment_id
    return mlflow.create_experiment(EXPERIMENT, artifact_location=settings.artifacts_dir.resolve().as_uri())


def register(settings: Settings, train_path: Path, seed: int = 0, log=print) -> dict:
    """Train both models, log them with signatures and register them as ``flight-delay`` versions."""
    import mlflow
    from mlflow.models import infer_signature

    exp_id = _experiment(settings)
    data = pd.read_parquet(train_path)
    out = {}
    for role, alias, months in (("baseline", "champion", (1, 2)), ("candidate", "challenger", (1, 6))):
        train = data[(data["month"] >= months[0]) & (data["month"] <= months[1])].reset_index(drop=True)
        log(f"training {role} on months {months[0]}-{months[1]} ({len(train)} rows)")
        if role == "baseline":
            model, features = train_baseline(train, seed)
            scores = _scores_sklearn(model, train, features)
        else:
            model, features = train_candidate(train, seed=seed)
            scores = _scores_torch(model, train, features)
        threshold = f1_threshold(train["label"].to_numpy(), scores)
        example = train[features].head(5)
        signature = infer_signature(example, scores[:5])
        with mlflow.start_run(experiment_id=exp_id, run_name=f"train-{role}") as run:
            mlflow.log_params(
                {"role": role, "months": f"{months[0]}-{months[1]}", "rows": len(train), "threshold": threshold}
            )
            with tempfile.TemporaryDirectory() as tmp:
                ref = Path(tmp) / "reference.parquet"
                train[features + ["label"]].sample(min(20_000, len(train)), random_state=seed).to_parquet(ref)
                mlflow.log_artifact(str(ref), artifact_path="reference")
            common = dict(
                name="model",
                signature=signature,
                registered_model_name=MODEL_NAME,
                metadata={"threshold": threshold},
                pip_requirements=PIP_REQUIREMENTS,
            )
            if role == "baseline":
                info = mlflow.sklearn.log_model(sk_model=model, serialization_format="cloudpickle", **common)
            else:
                info = mlflow.pytorch.log_model(pytorch_model=model, serialization_format="pickle", **common)
        version = str(info.registered_model_version)
        mlflow.MlflowClient().set_registered_model_alias(MODEL_NAME, alias, version)
        out[role] = {
            "version": version,
            "run_id": run.info.run_id,
            "threshold": threshold,
            "uri": f"models:/{MODEL_NAME}@{alias}",
        }
        log(f"registered {MODEL_NAME} version {version} as @{alias} (threshold {threshold})")
    return out


def train_regressor(train: pd.DataFrame, loss: str, seed: int = 0, quantile: float | None = None, max_iter: int = 100):
    """A gradient-boosting regressor of the arrival delay in minutes (``loss``: sklearn's, e.g. absolute_error, or
    ``quantile`` with the level ``quantile``)."""
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.pipeline import Pipeline

    features = CATEGORICAL_FEATURES + NUMERIC_FEATURES
    gbm = HistGradientBoostingRegressor(
        loss=loss,
        **({"quantile": quantile} if quantile is not None else {}),
        max_iter=max_iter,
        learning_rate=0.1,
        categorical_features=list(range(len(CATEGORICAL_FEATURES))),
        random_state=seed,
    )
    model = Pipeline([("encode", _encoder()), ("gbm", gbm)])
    model.fit(train[features], train[TARGET])
    return model, features


def _register_pair(
    settings: Settings,
    train_path: Path,
    *,
    task: str,
    model_name: str,
    target: str,
    variants: tuple[tuple[str, str], tuple[str, str]],
    fit,
    predict,
    log,
) -> dict:
    """Train an sklearn pair of ``task`` on the rows with a ``target`` (the baseline on January-February, the
    candidate on January-June; ``variants``: (parameter name, value) of each, handed to ``fit(train, value)``,
    which returns the model and its features) and register it as ``model_name`` versions with
    ``task`` in their metadata (aliases as the classifiers'); ``predict(model, X)`` gives the signature's output.
    Returns each role's version and URI."""
    import mlflow
    from mlflow.models import infer_signature

    exp_id = _experiment(settings)
    data = pd.read_parquet(train_path)
    data = data[data[target].notna()]
    out = {}
    for (role, alias, months), (param, value) in zip(
        (("baseline", "champion", (1, 2)), ("candidate", "challenger", (1, 6))), variants, strict=True
    ):
        train = data[(data["month"] >= months[0]) & (data["month"] <= months[1])].reset_index(drop=True)
        log(f"training {task} {role} on months {months[0]}-{months[1]} ({len(train)} rows, {value})")
        model, features = fit(train, value)
        example = train[features].head(5)
        with mlflow.start_run(experiment_id=exp_id, run_name=f"train-{task}-{role}") as run:
            mlflow.log_params({"role": role, "months": f"{months[0]}-{months[1]}", "rows": len(train), param: value})
            info = mlflow.sklearn.log_model(
                sk_model=model,
                name="model",
                signature=infer_signature(example, predict(model, example)),
                registered_model_name=model_name,
                metadata={"task": task},
                pip_requirements=["scikit-learn", "pandas", "numpy"],
                serialization_format="cloudpickle",
            )
        version = str(info.registered_model_version)
        mlflow.MlflowClient().set_registered_model_alias(model_name, alias, version)
        out[role] = {"version": version, "run_id": run.info.run_id, "uri": f"models:/{model_name}@{alias}"}
        log(f"registered {model_name} version {version} as @{alias}")
    return out


def register_regression(settings: Settings, train_path: Path, seed: int = 0, log=print) -> dict:
    """Train the regression pair and register it as ``flight-delay-minutes`` versions; returns each role's
    version and URI."""
    return _register_pair(
        settings,
        train_path,
        task="regression",
        model_name=REGRESSION_MODEL,
        target=TARGET,
        variants=(("loss", "squared_error"), ("loss", "absolute_error")),
        fit=lambda train, loss: train_regressor(train, loss, seed),
        predict=lambda model, X: model.predict(X),
        log=log,
    )


def train_band_classifier(train: pd.DataFrame, kind: str, seed: int = 0):
    """A classifier of the arrival delay's band: ``logistic`` (multinomial logistic regression on one-hot
    categories and standardized, imputed numbers) or ``gbm`` (gradient boosting on ordinal codes)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    features = CATEGORICAL_FEATURES + NUMERIC_FEATURES
    if kind == "logistic":
        encode = ColumnTransformer(
            [
                ("cat", OneHotEncoder(handle_unknown="ignore", min_frequency=20), CATEGORICAL_FEATURES),
                ("num", make_pipeline(SimpleImputer(), StandardScaler()), NUMERIC_FEATURES),
            ]
        )
        model = Pipeline([("encode", encode), ("logistic", LogisticRegression(max_iter=300))])
    else:
        gbm = HistGradientBoostingClassifier(
            max_iter=100,
            learning_rate=0.1,
            categorical_features=list(range(len(CATEGORICAL_FEATURES))),
            random_state=seed,
        )
        model = Pipeline([("encode", _encoder()), ("gbm", gbm)])
    model.fit(train[features], train[BAND])
    return model, features


def register_multiclass(settings: Settings, train_path: Path, seed: int = 0, log=print) -> dict:
    """Train the multi-class pair and register it as ``flight-delay-band`` versions; returns each role's version
    and URI."""
    return _register_pair(
        settings,
        train_path,
        task="multiclass",
        model_name=MULTICLASS_MODEL,
        target=BAND,
        variants=(("kind", "logistic"), ("kind", "gbm")),
        fit=lambda train, kind: train_band_classifier(train, kind, seed),
        predict=lambda model, X: model.predict_proba(X),
        log=log,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", default="data/flights_train.parquet")
    a = p.parse_args(argv)
    settings = load_settings().ensure()
    register(settings, Path(a.train), log=lambda m: print(m, file=sys.stderr))
    register_regression(settings, Path(a.train), log=lambda m: print(m, file=sys.stderr))
    register_multiclass(settings, Path(a.train), log=lambda m: print(m, file=sys.stderr))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

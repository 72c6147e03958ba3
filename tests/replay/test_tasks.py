"""The task of a run: inferred from each MLflow model (its metadata, else its estimator's API), or set; models
of different tasks are refused; the task is kept with the run."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from regression_helpers import LinearModel, write_traffic
from workbench import WorkbenchError
from workbench.ingest.traffic import ingest
from workbench.replay.models import load_predictor
from workbench.replay.paired import resolve_task
from workbench.replay.pipeline import ReplayOptions, replay
from workbench.store import Store


def _save(path, model, metadata=None) -> str:
    import mlflow.sklearn
    from mlflow.models import infer_signature

    X = pd.DataFrame({"x": [0.1, 0.2], "zb": [0.0, 1.0]})
    signature = infer_signature(X, np.array([0.5, 0.5]))
    mlflow.sklearn.save_model(
        model, str(path), signature=signature, metadata=metadata, pip_requirements=["scikit-learn"]
    )
    return str(path)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    from sklearn.dummy import DummyRegressor
    from sklearn.linear_model import LinearRegression, LogisticRegression

    rng = np.random.default_rng(0)
    X = pd.DataFrame({"x": rng.standard_normal(200), "zb": rng.standard_normal(200)})
    d = tmp_path_factory.mktemp("models")
    return {
        "regressor": _save(d / "regressor", LinearRegression().fit(X, 3 * X["x"])),
        "classifier": _save(d / "classifier", LogisticRegression().fit(X, (X["x"] > 0).astype(int))),
        "multiclass": _save(d / "multiclass", LogisticRegression().fit(X, np.digitize(X["x"], [-0.5, 0.5]))),
        "declared": _save(d / "declared", DummyRegressor().fit(X, X["x"]), {"task": "binary"}),
    }


@pytest.mark.parametrize(
    ("name", "task", "source"),
    [
        ("regressor", "regression", "model"),
        ("classifier", "binary", "model"),
        ("multiclass", "multiclass", "model"),
        ("declared", "binary", "metadata"),
    ],
    ids=["sklearn-regressor", "sklearn-classifier", "three-classes", "metadata-wins"],
)
def test_task_is_inferred_from_the_model(model_dirs, name, task, source):
    ref = load_predictor(model_dirs[name], "cpu").ref
    assert (ref.task, ref.task_source) == (task, source)
    assert ref.to_dict()["task"] == task


def test_a_regressor_predicts_numbers_not_probabilities(model_dirs):
    import pyarrow as pa

    model = load_predictor(model_dirs["regressor"], "cpu")
    out = model.predict(pa.table({"x": [1.0, -2.0], "zb": [0.0, 0.0]}))
    np.testing.assert_allclose(out, [3.0, -6.0], atol=1e-9)


def test_models_of_different_tasks_are_refused_naming_both(model_dirs):
    models = {"baseline": load_predictor(model_dirs["classifier"], "cpu")}
    models["candidate"] = load_predictor(model_dirs["regressor"], "cpu")
    with pytest.raises(WorkbenchError) as e:
        resolve_task(models)
    msg = str(e.value)
    assert model_dirs["classifier"] in msg and model_dirs["regressor"] in msg
    assert "a binary classifier" in msg and "a regression model" in msg
    assert resolve_task(models, "regression") == "regression"  # --task says what both predict


def test_a_multiclass_model_names_its_classes_and_unknown_tasks_are_refused(model_dirs):
    m = load_predictor(model_dirs["multiclass"], "cpu")
    assert resolve_task({"baseline": m, "candidate": m}) == "multiclass"
    assert m.ref.classes == ("0", "1", "2")
    assert ReplayOptions(task="multiclass").task == "multiclass"
    with pytest.raises(WorkbenchError, match="unknown task 'ranking'"):
        ReplayOptions(task="ranking")


def test_a_mixed_replay_writes_nothing_and_the_task_stays_with_the_run(tmp_path):
    traffic, _ = write_traffic(tmp_path, 200, seed=5)
    with Store(":memory:") as store:
        ingest(store, traffic, "t")
        binary = LinearModel("m", "1", 1.0, task="binary")
        with pytest.raises(WorkbenchError, match="predict different things"):
            replay(store, "t", binary, LinearModel("m", "2", 1.0), run_id="mixed")
        assert store.get_run("mixed") is None
        replay(store, "t", LinearModel("m", "1", 1.0), LinearModel("m", "2", 1.0), run_id="r")
        assert store.require_run("r")["meta"]["task"] == "regression"
        with pytest.raises(WorkbenchError, match="was replayed as a regression run, not binary"):
            replay(
                store,
                "t",
                LinearModel("m", "1", 1.0),
                LinearModel("m", "2", 1.0),
                run_id="r",
                options=ReplayOptions(task="binary"),
            )

"""The MLflow UI that `workbench app` and `workbench demo` serve beside the app over a local tracking store."""

import httpx
import pytest

from workbench.config import load_settings


def test_the_mlflow_ui_serves_the_local_store_then_stops(tmp_path, monkeypatch):
    from pipelines.demo import mlflow_ui

    monkeypatch.delenv("WORKBENCH_MLFLOW_UI", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    settings = load_settings(tmp_path)
    import mlflow

    client = mlflow.MlflowClient(settings.mlflow_tracking_uri)
    client.create_registered_model("served-model")
    said: list[str] = []
    with mlflow_ui(settings, said.append) as url:
        assert url is not None and url.startswith("http://127.0.0.1:")
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200
        got = httpx.get(f"{url}/ajax-api/2.0/mlflow/registered-models/search", timeout=10).json()
        assert [m["name"] for m in got["registered_models"]] == ["served-model"]  # the home's store
    assert said == [f"serving the MLflow UI on {url} (model versions and runs; it stops with the app)"]
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/health", timeout=5)


@pytest.mark.parametrize(
    ("ui", "tracking", "expected"),
    [
        ("http://mlflow.internal:5000/", None, "http://mlflow.internal:5000"),
        (None, "https://mlflow.example.com", "https://mlflow.example.com"),
    ],
    ids=["WORKBENCH_MLFLOW_UI", "an HTTP tracking server"],
)
def test_a_known_mlflow_ui_is_used_and_none_started(tmp_path, monkeypatch, ui, tracking, expected):
    from pipelines.demo import mlflow_ui

    for var, value in (("WORKBENCH_MLFLOW_UI", ui), ("MLFLOW_TRACKING_URI", tracking)):
        if value is None:
            monkeypatch.delenv(var, raising=False)
        else:
            monkeypatch.setenv(var, value)
    said: list[str] = []
    with mlflow_ui(load_settings(tmp_path), said.append) as url:
        assert url == expected
    assert said == []

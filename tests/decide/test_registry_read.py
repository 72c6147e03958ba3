"""The registry read without MLflow's client (REST API, SQLite tables) gives what MLflow's client gives."""

import subprocess
import sys
import uuid

import pytest
from mlflow import MlflowClient

from conftest import REPO
from workbench.decide.registry import Registry
from workbench.decide.registry_read import RestRegistry, SqliteRegistry, direct_reader


def fill_registry(uri: str) -> tuple[str, list[str]]:
    """A model with a description, tags, aliases, three versions from runs (one deleted, one tagged) and a
    model without versions; returns the first model's name and its versions' run ids (and one unknown id)."""
    client = MlflowClient(uri, uri)
    name = "reg_" + uuid.uuid4().hex[:6]
    client.create_registered_model(name, description="fraud scorer", tags={"canary.weight": "5", "team": "risk"})
    exp = client.get_experiment_by_name("models") or client.get_experiment(client.create_experiment("models"))
    runs = []
    for _ in range(3):
        run = client.create_run(exp.experiment_id)
        client.create_model_version(name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
        runs.append(run.info.run_id)
    client.set_model_version_tag(name, "2", "canary.verdict", "PROMOTE")
    client.set_model_version_tag(name, "2", "note", "not a canary tag")
    client.set_registered_model_alias(name, "champion", "1")
    client.set_registered_model_alias(name, "challenger", "2")
    client.delete_model_version(name, "3")
    client.create_registered_model(name + "_empty")
    return name, runs + ["0" * 32]


def check_same_as_client(uri: str) -> None:
    name, run_ids = fill_registry(uri)
    fast, slow = Registry(uri), Registry(uri, direct_reads=False)
    assert direct_reader(uri) is not None
    models = fast.list_models()
    assert models == slow.list_models()
    mine = next(m for m in models if m["name"] == name)
    assert mine["description"] == "fraud scorer" and mine["tags"] == {"canary.weight": "5"}
    assert mine["aliases"] == {"champion": "1", "challenger": "2"}
    assert [v["version"] for v in mine["versions"]] == ["2", "1"]  # newest first, the deleted one hidden
    assert mine["versions"][0]["aliases"] == ["challenger"] and mine["versions"][0]["tags"] == {
        "canary.verdict": "PROMOTE"
    }
    assert mine["versions"][1]["run_id"] == run_ids[0] and mine["versions"][1]["status"] == "READY"
    assert next(m for m in models if m["name"] == name + "_empty")["versions"] == []
    experiments = fast.run_experiments(run_ids)
    assert experiments == slow.run_experiments(run_ids) and set(experiments) == set(run_ids[:3])


def test_rest_read_matches_the_client(mlflow_server):
    check_same_as_client(mlflow_server)


def test_sqlite_read_matches_the_client(tmp_path):
    check_same_as_client(f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_sqlite_read_creates_no_store_and_imports_no_mlflow(tmp_path):
    db = tmp_path / "mlflow.db"
    assert Registry(f"sqlite:///{db}").list_models() == [] and not db.exists()
    fill_registry(f"sqlite:///{db}")
    code = (
        "import sys; from workbench.decide.registry import Registry; "
        f"r = Registry('sqlite:///{db}'); ms = r.list_models(); "
        "r.run_experiments([v['run_id'] for v in ms[0]['versions']]); "
        "print(len(ms), 'mlflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["2", "False"]


@pytest.mark.parametrize(
    ("uri", "env", "kind"),
    [
        ("http://127.0.0.1:5000", {}, RestRegistry),
        ("https://mlflow.example.com/", {"MLFLOW_TRACKING_TOKEN": "t"}, RestRegistry),
        ("sqlite:////tmp/x/mlflow.db", {}, SqliteRegistry),
        ("sqlite:////tmp/x/mlflow.db?timeout=5", {}, None),
        ("postgresql://u@db/mlflow", {}, None),
        ("databricks", {}, None),
        ("http://127.0.0.1:5000", {"MLFLOW_TRACKING_INSECURE_TLS": "true"}, None),
        ("sqlite:////tmp/x/mlflow.db", {"MLFLOW_ENABLE_WORKSPACES": "true"}, None),
    ],
    ids=["http", "https-token", "sqlite", "sqlite-options", "postgres", "databricks", "insecure-tls", "workspaces"],
)
def test_which_uris_are_read_directly(uri, env, kind, monkeypatch):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    reader = direct_reader(uri)
    assert (None if reader is None else type(reader)) is kind

"""Shared fixtures: a small real demo (NYC flights sample, real MLflow sqlite store) built once per session."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
REPO = Path(__file__).resolve().parent.parent
DEMO_LIMIT = 6000


@pytest.fixture(scope="session")
def demo_home(tmp_path_factory) -> Path:
    """A workbench home after `workbench demo --no-app` on a 6000-flight sample (runs the real CLI)."""
    home = tmp_path_factory.mktemp("demo_home")
    env = os.environ | {"WORKBENCH_HOME": str(home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run([sys.executable, "-m", "workbench.cli", "demo", "--no-app", "--json", "--limit",
                           str(DEMO_LIMIT), "--data-dir", str(home / "data")],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (home / "demo.json").write_text(proc.stdout)
    return home


@pytest.fixture
def workbench_env(demo_home, monkeypatch):
    """Point the library at the demo home (settings and MLflow)."""
    from workbench.config import load_settings

    monkeypatch.setenv("WORKBENCH_HOME", str(demo_home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    settings = load_settings()
    import mlflow

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    return settings


def run_cli(*args: str, home: Path, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    env = os.environ | {"WORKBENCH_HOME": str(home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run([sys.executable, "-m", "workbench.cli", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


class TinyModel:
    """A test predictor: score = sigmoid(x), with optional failure modes keyed on the row's x value."""

    def __init__(self, name="tiny", raise_on=None, nan_on=None, threshold=0.5, wrong_shape=False):
        from workbench.models import ModelRef

        self.ref = ModelRef(uri=f"test:{name}", name=name, version="1", run_id=None, flavor="test",
                            features=("x",), threshold=threshold)
        self.device = "cpu"
        self.raise_on, self.nan_on, self.wrong_shape = raise_on or set(), nan_on or set(), wrong_shape
        self.calls = 0

    def predict(self, batch: pa.Table) -> np.ndarray:
        self.calls += 1
        x = batch.column("x").to_numpy()
        if self.raise_on.intersection(x.tolist()):
            raise ValueError("bad input row")
        out = 1 / (1 + np.exp(-x))
        out[np.isin(x, list(self.nan_on))] = np.nan
        return np.stack([out, out, out], axis=1) if self.wrong_shape else out

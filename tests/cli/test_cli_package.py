"""The ``workbench.cli`` package: its entry points, its module sizes and its light start-up."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import REPO
from workbench.cli import build_parser, main

COMMANDS = {
    "ingest", "labels", "replay", "evaluate", "drift", "runs", "demo", "decide", "keys", "decision",
    "canary", "sync", "serve", "webhook", "route", "jobs", "app", "approver", "gc", "migrate",
}  # fmt: skip


def test_every_command_is_in_the_parser():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(sub.choices) == COMMANDS
    assert callable(main)


def test_modules_stay_small():
    sizes = {p.name: len(p.read_text().splitlines()) for p in (REPO / "workbench" / "cli").glob("*.py")}
    assert max(sizes.values()) < 700, sizes


def test_python_dash_m_and_lazy_imports():
    env = os.environ | {"PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "workbench.cli", "--help"], env=env, cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 0 and proc.stdout.startswith("usage: workbench")
    heavy = ("pandas", "duckdb", "mlflow", "pyarrow", "uvicorn", "torch", "scipy")
    code = (
        "import sys, workbench.cli; workbench.cli.build_parser(); "
        f"print(' '.join(m for m in sys.modules if m.split('.')[0] in {heavy!r}))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True)
    assert loaded.returncode == 0 and loaded.stdout.strip() == "", loaded.stdout + loaded.stderr


def test_read_commands_start_without_statistics_or_mlflow(tmp_path):
    """Status and listing commands (run by routers, scripts and the suite hundreds of times) load neither
    scipy nor MLflow: each costs about a second of start-up."""
    env = os.environ | {"PYTHONPATH": str(REPO), "WORKBENCH_HOME": str(tmp_path)}
    env.pop("MLFLOW_TRACKING_URI", None)  # a tracking server is consulted (mlflow.set_tracking_uri sets this)
    for args in (["runs"], ["canary", "status", "m"], ["decision", "verify", "d1"]):
        code = (
            "import sys, runpy; sys.argv = ['workbench', *sys.argv[1:], '--json']\n"
            "try:\n    runpy.run_module('workbench.cli', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "print('loaded:', *sorted({m.split('.')[0] for m in sys.modules} & {'scipy', 'mlflow'}), file=sys.stderr)"
        )
        proc = subprocess.run(
            [sys.executable, "-c", code, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=120
        )
        assert proc.stderr.strip().splitlines()[-1] == "loaded:", (args, proc.stderr[-2000:])

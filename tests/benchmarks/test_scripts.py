"""Every script in ``benchmarks/`` still runs.

For each Python script: ``--help`` works in a fresh process (argparse comes before any heavy work); every
first-party import it makes resolves, including those inside functions that ``--help`` never reaches; the
repository paths it names exist; and where a quick variant finishes in seconds, that runs and prints its table.
Shell scripts (they need a GPU or a quiet host) get ``bash -n`` and the path check.

Scripts are found by a glob: a new one fails here until it has an entry in ``SCRIPTS``. The quick variants
that take tens of seconds or more on a 2-core machine are collected only with ``WORKBENCH_BENCH_SMOKE=all``
(their ``--help``, imports and paths are always checked).
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"
FIRST_PARTY = {"workbench", "pages", "pipelines"}
RUN_ALL = os.environ.get("WORKBENCH_BENCH_SMOKE") == "all"


@dataclass(frozen=True)
class Entry:
    quick: tuple[str, ...] | None = None  # the quick variant's arguments; "{tmp}" is the test's tmp_path
    prints: str | None = None  # a line of the table the quick variant prints
    slow: str | None = None  # why the quick variant is opt-in (it takes more than a few seconds)
    no_quick: str | None = None  # why there is no quick variant at all


SCRIPTS = {
    "app_pages.py": Entry(
        ("--rows", "2000", "--home", "{tmp}/home", "--no-renders"), prints="data functions, uncached"
    ),
    "concurrency.py": Entry(
        ("--rows", "20000", "--reads", "2", "--models", "constant", "--batch-size", "4096"),
        prints="combined:",
        slow="~40 s: four replay processes load torch",
    ),
    "decision_quality.py": Entry(
        ("--quick", "--workers", "1"),
        prints="## Summary against the targets",
        slow="~20 s: evaluations of 60 looks; tests/benchmarks/test_decision_quality.py runs it in-process",
    ),
    "decision_quality_multiclass.py": Entry(("--quick",), prints="## Summary against the targets"),
    "drift.py": Entry(
        ("--rows", "2000"), prints="speed-up (Evidently seconds / ours)", slow="~17 s: Evidently's import and report"
    ),
    "evaluate.py": Entry(
        ("--rows", "2000", "--big-rows", "0", "--workdir", "{tmp}/work"),
        prints="ratio mlflow / ours",
        slow="~45 s: four phase processes, mlflow.evaluate",
    ),
    "gpu_host_memory.py": Entry(
        ("--rows", "2000", "--writers", "1", "--batch-size", "1024", "--configs", "1:auto"),
        prints="GPU replay path, host memory emulated without a GPU",
    ),
    "reliability.py": Entry(
        ("--load-seconds", "1", "--out", "{tmp}/reliability.md"),
        prints="## Tests",
        slow="minutes: it runs the whole reliability suite",
    ),
    "replay.py": Entry(
        ("--models", "mlp", "--device", "cpu", "--rows", "2000", "--batch-size", "1024", "--writers", "1"),
        prints="(b) replay rows/s",
        slow="~15 s: five phase processes load torch",
    ),
    "router.py": Entry(
        ("--requests", "30", "--rounds", "1"),
        prints="added p50",
        slow="~25 s: starts two model servers and two routers",
    ),
    "gpu_check.sh": Entry(no_quick="needs a CUDA device"),
    "device_router.sh": Entry(no_quick="installs carried wheels on the lent quiet host"),
}

FOUND = sorted(p.name for p in BENCH.iterdir() if p.suffix in (".py", ".sh"))
PYTHON = [n for n in FOUND if n.endswith(".py")]


def entry(name: str) -> Entry:
    if name not in SCRIPTS:
        pytest.fail(f"benchmarks/{name} has no entry in SCRIPTS ({__file__}): say how it is checked")
    return SCRIPTS[name]


def env(tmp: Path | None = None) -> dict:
    """The subprocess environment: this checkout's code first; temporary files and the home under ``tmp``."""
    out = os.environ | {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "GIT_PYTHON_REFRESH": "quiet",
        "PYTHONWARNINGS": "ignore",
    }
    out.pop("MLFLOW_TRACKING_URI", None)
    if tmp is not None:
        out |= {"TMPDIR": str(tmp), "WORKBENCH_HOME": str(tmp / "default_home")}
    return out


def run(args: list[str], timeout: float, tmp: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, env=env(tmp), capture_output=True, text=True, timeout=timeout, check=False)


def test_every_entry_names_a_script():
    assert not set(SCRIPTS) - set(FOUND), f"entries for scripts that are gone: {set(SCRIPTS) - set(FOUND)}"


@pytest.mark.parametrize("name", FOUND)
def test_script_has_an_entry(name):
    entry(name)


@pytest.mark.parametrize("name", PYTHON)
def test_help(name):
    proc = run([sys.executable, f"benchmarks/{name}", "--help"], timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("usage:"), proc.stdout[:500]


def first_party_imports(path: Path) -> dict[str, list[str]]:
    """module -> names imported from it, for every first-party import anywhere in the file (functions too):
    the workbench, the app's pages, the pipelines, sibling benchmarks and the test fixtures."""
    local = {p.stem for p in BENCH.glob("*.py")} | {p.stem for p in (ROOT / "tests" / "fixtures").glob("*.py")}
    out: dict[str, list[str]] = {}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            mods = [(node.module, [a.name for a in node.names])]
        elif isinstance(node, ast.Import):
            mods = [(a.name, []) for a in node.names]
        else:
            continue
        for mod, names in mods:
            if mod.split(".")[0] in FIRST_PARTY | local:
                out.setdefault(mod, []).extend(names)
    return out


RESOLVE = """
import importlib, json, sys
sys.path[:0] = sys.argv[2:]
missing = []
for mod, names in json.loads(sys.argv[1]).items():
    try:
        m = importlib.import_module(mod)
    except ImportError as e:
        missing.append(f"{mod}: {e}")
        continue
    for n in names:
        if not hasattr(m, n):
            try:
                importlib.import_module(f"{mod}.{n}")
            except ImportError:
                missing.append(f"from {mod} import {n}")
print(json.dumps(missing))
"""


@pytest.mark.parametrize("name", [n for n in PYTHON if first_party_imports(BENCH / n)])
def test_first_party_imports_resolve(name):
    """``--help`` stops before the imports inside functions (where most of them are): resolve them all."""
    imports = first_party_imports(BENCH / name)
    proc = run(
        [sys.executable, "-c", RESOLVE, json.dumps(imports), str(ROOT), str(BENCH), str(ROOT / "tests" / "fixtures")],
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    missing = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not missing, f"benchmarks/{name} imports what does not exist: {missing}"


PATH_RE = re.compile(r"\b((?:tests|benchmarks|pipelines|workbench|pages)/[\w./-]*\w\.(?:py|sh))(?:::(\w+))?")


@pytest.mark.parametrize("name", FOUND)
def test_paths_it_names_exist(name):
    """Test files, scripts and pytest node ids named in the script (the suite it runs, the tests it deselects)."""
    bad = []
    for path, test in PATH_RE.findall((BENCH / name).read_text()):
        if not (ROOT / path).is_file():
            bad.append(path)
        elif test and not re.search(rf"^(?:async )?def {test}\(", (ROOT / path).read_text(), re.MULTILINE):
            bad.append(f"{path}::{test}")
    assert not bad, f"benchmarks/{name} names what does not exist: {bad}"


@pytest.mark.parametrize("name", [n for n in FOUND if n.endswith(".sh")])
def test_shell_syntax(name):
    proc = run(["bash", "-n", f"benchmarks/{name}"], timeout=30)
    assert proc.returncode == 0, proc.stderr


def quick_params():
    for name in PYTHON:
        e = SCRIPTS.get(name)
        if e is None or e.quick is None or (e.slow and not RUN_ALL):
            continue
        yield pytest.param(name, marks=[pytest.mark.timeout(900)] if e.slow else [], id=name)


@pytest.mark.parametrize("name", list(quick_params()))
def test_quick_run_prints_its_table(name, tmp_path):
    e = SCRIPTS[name]
    args = [a.replace("{tmp}", str(tmp_path)) for a in e.quick]
    proc = run([sys.executable, f"benchmarks/{name}", *args], timeout=800 if e.slow else 240, tmp=tmp_path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    report = tmp_path / "reliability.md"
    table = report.read_text() if name == "reliability.py" else proc.stdout  # that one's table is its report
    assert e.prints in table, (proc.stdout + proc.stderr)[-4000:]

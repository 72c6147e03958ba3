"""Progress files: rate and ETA from the replay's callback, throttled atomic writes, dead writers."""

import json
import subprocess
import sys

import pytest

from workbench import WorkbenchError
from workbench.ops.progress import ProgressFile, progress_dir, read_progress


class Clock:
    def __init__(self):
        self.t = 1_000_000.0

    def __call__(self):
        return self.t


def test_rate_eta_and_throttled_writes(tmp_path):
    clock = Clock()
    p = ProgressFile(
        tmp_path, "run_a", source="test", traffic="t", baseline="b", candidate="c", min_interval_s=1.0, clock=clock
    )
    path = progress_dir(tmp_path) / "run_a.json"
    assert json.loads(path.read_text())["stage"] == "starting"
    p.stage("replaying")
    p(400, 1000)  # a resumed run: 400 rows were done before this process started
    clock.t += 0.5
    p(500, 1000)  # within the interval: not written
    on_disk = json.loads(path.read_text())
    assert on_disk["rows_done"] == 400 and p.state.rows_done == 500
    assert p.state.rows_per_s == pytest.approx(200.0)  # (500 - 400) rows / 0.5 s, not 500 / 0.5
    clock.t += 1.5
    p(800, 1000)
    on_disk = json.loads(path.read_text())
    assert on_disk["rows_done"] == 800 and on_disk["rows_per_s"] == pytest.approx(200.0)
    assert on_disk["eta_s"] == pytest.approx(1.0) and on_disk["status"] == "running"
    clock.t += 0.1
    p(1000, 1000)  # the last batch is always written
    assert json.loads(path.read_text())["rows_done"] == 1000
    p.finish()
    [got] = read_progress(tmp_path)
    assert (got.status, got.stage, got.fraction, got.eta_s, got.source) == ("finished", "done", 1.0, 0.0, "test")
    assert not list(progress_dir(tmp_path).glob(".*tmp"))  # replaced atomically, no leftovers


def test_failure_and_dead_writers(tmp_path):
    failed = ProgressFile(tmp_path, "run_f", source="test")
    failed.finish(error="ValueError: boom")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    ProgressFile(tmp_path, "run_d", source="test")
    path = progress_dir(tmp_path) / "run_d.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"pid": int(dead.stdout)}))
    ProgressFile(tmp_path, "run_live", source="test")
    (progress_dir(tmp_path) / "junk.json").write_text("{not json")
    got = {p.run_id: p for p in read_progress(tmp_path)}
    assert set(got) == {"run_f", "run_d", "run_live"}
    assert got["run_f"].status == "failed" and got["run_f"].error == "ValueError: boom"
    assert got["run_d"].status == "interrupted"  # its process is gone
    assert got["run_live"].status == "running"  # this test's own process
    assert read_progress(tmp_path / "nowhere") == []
    with pytest.raises(WorkbenchError, match="invalid run id"):
        ProgressFile(tmp_path, "../escape", source="test")

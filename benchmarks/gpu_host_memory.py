"""Host memory of the GPU replay path, emulated on a machine without a GPU (memory only: speeds here mean nothing).

A GPU replay's host memory is what the pipeline holds outside the card: DuckDB (buffer pool, scan threads),
the Arrow batches in flight, the pinned feature buffers, the units the writers commit. This runs that exact
path (``_SharedGpuInput``: column-major buffers, one copy shared by both models, rows passed on without the
batch) with CUDA's calls redirected to the CPU and two one-line torch modules, so the models' activations,
which a GPU keeps in its own memory, do not count. It prints the replay's own resident memory (peak during
the replay minus before it) for each DuckDB configuration, on one 10M-row traffic of 25 float features.
The real figure comes from ``bash benchmarks/gpu_check.sh`` on a lent GPU; this one says where the memory
goes and lets a change be compared without one.

    WORKBENCH_DUCKDB_THREADS is set per configuration; ``--configs 8:auto 4:192MiB`` (threads:memory)
    python benchmarks/gpu_host_memory.py --rows 10000000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def stub_cuda_onto_cpu() -> None:
    """Make torch's CUDA calls used by the shared GPU path run on the CPU (pinned buffers become copies)."""
    import torch

    def cpu(args):
        return tuple("cpu" if a == "cuda" else a for a in args)

    class Event:
        def __init__(self, enable_timing=False):
            pass

        def record(self):
            pass

        def elapsed_time(self, other):
            return 1.0

    to, module_to, script_to, tensor = (torch.Tensor.to, torch.nn.Module.to, torch.jit.ScriptModule.to, torch.tensor)
    patches: list[tuple[Any, str, Any]] = [  # (owner, attribute, replacement), set at run time
        (torch.Tensor, "pin_memory", lambda self: self.clone()),
        (
            torch.Tensor,
            "to",
            lambda self, *a, **k: to(self, *cpu(a), **{n: v for n, v in k.items() if n != "non_blocking"}),
        ),
        (torch.nn.Module, "to", lambda self, *a, **k: module_to(self, *cpu(a), **k)),
        (torch.jit.ScriptModule, "to", lambda self, *a, **k: script_to(self, *cpu(a), **k)),
        (torch, "tensor", lambda *a, **k: tensor(*a, **({**k, "device": "cpu"} if "device" in k else k))),
        (torch.cuda, "is_available", lambda: True),
        (torch.cuda, "Event", Event),
        (torch.cuda, "synchronize", lambda *a: None),
        (torch.cuda, "get_device_name", lambda *a: "none (CUDA calls run on the CPU)"),
    ]
    for owner, name, value in patches:
        setattr(owner, name, value)


def one_replay(db: str, writers: int, batch: int) -> dict:
    """One replay on the emulated GPU path, in this process; its own resident memory."""
    stub_cuda_onto_cpu()
    import torch

    from replay import F, RssSampler
    from workbench.replay.models import ModelRef, TorchPredictor
    from workbench.replay.pipeline import ReplayOptions, replay
    from workbench.store import Store

    class Tiny(torch.nn.Module):
        def forward(self, x):
            return torch.sigmoid(x[:, 0:1] * 0.5)

    baseline, candidate = [
        TorchPredictor(
            ModelRef(f"emul:{r}", r, "1", None, "pytorch", tuple(f"f{j}" for j in range(F)), 0.5),
            torch.jit.script(Tiny()),
            "cuda",
        )
        for r in ("baseline", "candidate")
    ]
    with Store(db) as store, RssSampler() as rss:
        res = replay(
            store,
            "bench",
            baseline,
            candidate,
            run_id=f"emul_{time.time_ns()}",
            options=ReplayOptions(batch_size=batch, writers=writers),
        )
    assert res.rows and res.stages, res
    return {
        "rows": res.rows,
        "duckdb": res.stages["duckdb"],
        "before_mb": rss.before,
        "peak_mb": rss.peak,
        "own_mb": rss.peak - rss.before,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--writers", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=262_144)
    p.add_argument(
        "--configs",
        nargs="+",
        default=["16:512MB", "8:auto", "4:auto", "8:192MiB", "4:192MiB"],
        help="DuckDB threads:memory pairs (auto: the replay's own sizing)",
    )
    p.add_argument("--db", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.db:  # a child: one configuration
        print(json.dumps(one_replay(a.db, a.writers, a.batch_size)))
        return
    from replay import write_traffic
    from workbench.ingest.traffic import ingest
    from workbench.store import Store

    with tempfile.TemporaryDirectory(prefix="bench-gpumem-") as tmp:
        src, base = Path(tmp) / "traffic.parquet", Path(tmp) / "base_lake"
        write_traffic(src, a.rows, "mlp", None)
        with Store(base) as store:
            ingest(store, src, "bench")
        rows = []
        for config in a.configs:
            threads, memory = config.split(":")
            db = Path(tmp) / "run_lake"
            shutil.rmtree(db, ignore_errors=True)
            shutil.copytree(base, db)  # every configuration replays the same fresh storage
            env = os.environ | {"WORKBENCH_DUCKDB_THREADS": threads, "PYTHONWARNINGS": "ignore"}
            env.pop("WORKBENCH_DUCKDB_MEMORY_LIMIT", None)
            if memory != "auto":
                env["WORKBENCH_DUCKDB_MEMORY_LIMIT"] = memory
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--db",
                    str(db),
                    "--writers",
                    str(a.writers),
                    "--batch-size",
                    str(a.batch_size),
                ],
                capture_output=True,
                text=True,
                env=env,
            )
            if out.returncode:
                raise SystemExit(f"{config} failed:\n{out.stderr[-3000:]}")
            rows.append((config, json.loads(out.stdout.strip().splitlines()[-1])))
    print(
        f"\nGPU replay path, host memory emulated without a GPU: {a.rows:,} rows x 25 float features, "
        f"batch {a.batch_size:,}, {a.writers} writers"
    )
    print(f"{'config':>12} | {'DuckDB ran with':>20} | {'RSS before MB':>13} | {'peak MB':>8} | {'own MB':>7}")
    for config, r in rows:
        d = r["duckdb"]
        print(
            f"{config:>12} | {str(d['threads']) + ' threads ' + d['memory_limit']:>20} | {r['before_mb']:>13,.0f} | "
            f"{r['peak_mb']:>8,.0f} | {r['own_mb']:>+7,.0f}"
        )


if __name__ == "__main__":
    main()

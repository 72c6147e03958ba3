#!/usr/bin/env bash
# One-call GPU check (run on a CUDA machine from the repo root): CPU/GPU parity test, then the replay
# benchmark with a pair of torch MLPs (25 -> 256 -> 256 -> 1). DuckDB is carried as a wheel in .whl/
# when the machine lacks it. Results land in $OUT (or ./gpu-out).
set -uo pipefail
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
nproc | tee -a "$OUT/gpu.txt"
if ! python3 -c "import duckdb" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1
python3 -c "import torch, duckdb; print('torch', torch.__version__, 'duckdb', duckdb.__version__)" | tee -a "$OUT/gpu.txt"
python3 -m pytest -q -p no:cacheprovider tests/replay/test_replay_faults.py tests/replay/test_replay.py -k "gpu or timeout or online or resume" --deselect tests/replay/test_replay_faults.py::test_sigkill_mid_run_then_resume_holds_each_request_once --deselect tests/replay/test_replay_faults.py::test_replay_from_source_files_ingests_then_replays 2>&1 | tee "$OUT/pytest.txt" | tail -3
# WRITERS, DUCKDB_MEMORY and DUCKDB_THREADS (space-separated lists) vary the replay's writer threads and
# DuckDB's memory limit and threads ("auto": the replay sizes DuckDB itself: 8 threads, 256 MiB here);
# the default matrix (4 replays) shows which of them keeps >= 10M rows/s within 2 GiB
python3 benchmarks/replay.py --models mlp --device cuda --rows 10000000 --batch-size 262144 --writers ${WRITERS:-8} \
  --duckdb-memory ${DUCKDB_MEMORY:-auto 192MiB} --duckdb-threads ${DUCKDB_THREADS:-auto 4} \
  --json-out "$OUT/replay_gpu.json" 2>&1 | tee "$OUT/replay_gpu.txt" | tail -12

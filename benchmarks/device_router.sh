#!/usr/bin/env bash
# The router benchmark on a quiet machine (the lent GPU host's 16 cores; the GPU is not used). That host has
# Python with numpy/pandas/pyarrow/scikit-learn but no MLflow: the wheels in .whl/router (mlflow-skinny,
# fastapi, uvicorn, httptools, uvloop, ... for cp312, see the README) and .whl/duckdb* are installed into a
# private folder. Results land in $OUT (or ./device-out). Fetch the wheels once, on a machine with the
# package registry (the device has none), and pass .whl to the device tool's carry:
#   pip download --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux2014_x86_64 \
#     --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 -c constraints.txt -d .whl/router \
#     mlflow-skinny cryptography httptools uvloop fastapi uvicorn httpx bcrypt
#   pip download --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
#     --no-deps -c constraints.txt -d .whl duckdb
set -uo pipefail
OUT=${OUT:-device-out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/router-site \
  .whl/router/*.whl .whl/duckdb*.whl || exit 1
export PYTHONPATH=/tmp/router-site:$PWD PATH=/tmp/router-site/bin:$PATH PYTHONUNBUFFERED=1 MLFLOW_DISABLE_TELEMETRY=true
nproc | tee "$OUT/router_host.txt"
timeout 240 python3 benchmarks/router.py --requests ${ROUTER_REQUESTS:-3000} 2>&1 | tee "$OUT/router.txt" | tail -24

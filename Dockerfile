# syntax=docker/dockerfile:1
# canary-workbench: the library, the CLI, the Streamlit app, the HTTP service and the job scheduler.
#
# The install steps are the README's `make install` (see docs/operations/container.md): torch==2.13.0 first, then
# the project under constraints.txt; here the project is installed non-editable, without the test extra, with the
# `s3` extra (DuckDB's httpfs: a data path on an object store, $WORKBENCH_DATA_PATH=s3://...).
# CPU torch by default. For CUDA, pick the PyTorch wheel index of your CUDA version (the wheels bring the
# CUDA runtime; the host's driver comes in through the NVIDIA container toolkit, `docker run --gpus all`):
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 -t canary-workbench:cuda .
# and, to build on a CUDA base image instead, one that has Python 3.11 as `python3` with venv:
#   --build-arg BASE_IMAGE=<registry>/cuda-python:3.11   (both stages build from BASE_IMAGE)
ARG BASE_IMAGE=python:3.11.7-slim-bookworm

FROM ${BASE_IMAGE} AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
# 1. torch first, pinned, from the index that serves the CPU (or CUDA) build: pip never pulls another one
RUN python3 -m venv /opt/venv \
 && pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" torch==2.13.0
# 2. the project with every dependency pinned by constraints.txt, and the s3 extra (pinned in pyproject.toml)
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY workbench ./workbench
COPY pipelines ./pipelines
RUN pip install --no-cache-dir -c constraints.txt ".[s3]"

FROM ${BASE_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    WORKBENCH_HOME=/data/workbench MLFLOW_DISABLE_TELEMETRY=true GIT_PYTHON_REFRESH=quiet
RUN groupadd --system --gid 10001 workbench \
 && useradd --system --uid 10001 --gid workbench --create-home --home-dir /home/workbench \
        --shell /usr/sbin/nologin workbench \
 && mkdir -p /data/workbench /data/mlflow \
 && chown -R workbench:workbench /data
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY app.py ./
COPY pages ./pages
COPY pipelines/jobs ./pipelines/jobs
COPY --chmod=0755 docker/entrypoint.sh /usr/local/bin/workbench-entrypoint
USER 10001:10001
VOLUME ["/data"]
# 8501: the app; 8000: `workbench serve` (webhooks, /metrics); 5000: `mlflow server` (compose.yaml)
EXPOSE 8501 8000 5000
ENTRYPOINT ["workbench-entrypoint"]
CMD ["app"]

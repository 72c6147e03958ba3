# syntax=docker/dockerfile:1
# canary-workbench image: CPU torch by default. Install steps mirror the README's `make install`.
FROM python:3.11.7-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY workbench ./workbench
COPY pipelines ./pipelines
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/venv/bin/pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
 && /opt/venv/bin/pip install --no-cache-dir -c constraints.txt .

FROM python:3.11.7-slim-bookworm
RUN useradd --create-home --uid 10001 workbench
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY --chown=workbench:workbench app.py ./
COPY --chown=workbench:workbench pages ./pages
ENV PATH=/opt/venv/bin:$PATH WORKBENCH_HOME=/data/workbench PYTHONUNBUFFERED=1
USER workbench
EXPOSE 8501
CMD ["streamlit", "run", "app.py", "--server.address", "0.0.0.0", "--server.port", "8501", "--server.headless", "true"]

#!/bin/sh
# Entrypoint of the canary-workbench image.
#   app [STREAMLIT OPTIONS]  serve the Streamlit app on 0.0.0.0:${PORT:-8501} (the default command)
#   anything else            a workbench command: `jobs scheduler /app/pipelines/jobs`, `serve --host 0.0.0.0`,
#                            `jobs run SPEC`, `runs --json`, ...
set -eu
if [ "$#" -eq 0 ] || [ "$1" = "app" ]; then
    if [ "$#" -gt 0 ]; then
        shift
    fi
    exec streamlit run "${WORKBENCH_APP:-/app/app.py}" --server.address 0.0.0.0 --server.port "${PORT:-8501}" \
        --server.headless true --browser.gatherUsageStats false "$@"
fi
exec workbench "$@"

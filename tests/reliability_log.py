"""What the reliability suite tried, for ``benchmarks/reliability.md``.

The fault, bad-input, security and load tests call :func:`record` once they have checked an outcome:
the area, what was tried, what happened, and the counts that show nothing was lost. When
``WORKBENCH_RELIABILITY_LOG`` names a file, each record is appended to it as one JSON line (the tests
run in one process, or in subprocesses that append whole lines); ``benchmarks/reliability.py`` runs the
suite with it set and renders the markdown. Without it, recording does nothing.
"""

from __future__ import annotations

import json
import os


def record(area: str, fault: str, outcome: str, **counts) -> None:
    """Log one checked fault or input: ``area`` (e.g. "crash"), what was tried, what happened, and counts."""
    path = os.environ.get("WORKBENCH_RELIABILITY_LOG")
    if not path:
        return
    line = json.dumps(
        {
            "area": area,
            "fault": fault,
            "outcome": outcome,
            "counts": counts,
            "test": os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0],
        },
        default=str,
    )
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")

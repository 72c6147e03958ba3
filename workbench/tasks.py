"""What the models of a run predict: its task, recorded in the run's ``meta`` when it is replayed.

``binary``: a score (the positive class's probability) per request, judged against 0/1 labels;
``regression``: a number per request, judged against numeric labels (stored apart from the binary ones), and the
quantiles of the target at the levels of the run's ``meta.quantiles`` when both models predict them;
``multiclass``: a predicted class and the class probabilities per request (the run's ``meta.classes`` names the
classes, in the models' order), judged against class labels stored as text.
"""

from __future__ import annotations

from typing import Any, Final

from workbench.errors import WorkbenchError

BINARY: Final = "binary"
REGRESSION: Final = "regression"
MULTICLASS: Final = "multiclass"
TASKS: Final = (BINARY, REGRESSION, MULTICLASS)
SUPPORTED: Final = (BINARY, REGRESSION, MULTICLASS)
DESCRIBED: Final = {
    BINARY: "a binary classifier",
    REGRESSION: "a regression model",
    MULTICLASS: "a multi-class classifier",
}


def check_task(task: str, *, supported: bool = True) -> str:
    """``task`` when it is known (and replayable with ``supported``), else an error naming the choices."""
    if task not in TASKS:
        raise WorkbenchError(f"unknown task {task!r}: use one of {', '.join(SUPPORTED)}")
    if supported and task not in SUPPORTED:
        raise WorkbenchError(f"{task} models are not supported end to end yet (use one of {', '.join(SUPPORTED)})")
    return task


def run_task(run: dict[str, Any]) -> str:
    """The task a stored run recorded (runs replayed before tasks were recorded are binary)."""
    return str((run.get("meta") or {}).get("task") or BINARY)


def run_classes(run: dict[str, Any]) -> list[str]:
    """The classes of a multi-class run, in the order of its models' probabilities (empty for other tasks)."""
    return [str(c) for c in (run.get("meta") or {}).get("classes") or []]


def run_quantiles(run: dict[str, Any]) -> list[float]:
    """The quantile levels a regression run stored for both models, ascending (empty when it stored none)."""
    return [float(q) for q in (run.get("meta") or {}).get("quantiles") or []]

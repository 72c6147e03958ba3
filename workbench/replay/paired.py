"""What a run of two models predicts (its task, classes, quantile levels, class thresholds) and the paired
result rows of a batch: one row per request, both models side by side."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import numpy as np
import pyarrow as pa

from workbench import WorkbenchError
from workbench.replay.models import Predictor
from workbench.replay.scoring import Scored
from workbench.roles import BASELINE, CANDIDATE, ROLES
from workbench.tasks import BINARY, DESCRIBED, MULTICLASS, REGRESSION, check_task


def resolve_task(models: dict[str, Predictor], override: str | None = None) -> str:
    """The task of a run of ``models``: ``override`` when given, else the models' own, which must agree;
    a task not supported end to end is refused."""
    if override is not None:
        return check_task(override)
    tasks = {r: getattr(m.ref, "task", None) or "binary" for r, m in models.items()}
    if len(set(tasks.values())) > 1:
        described = "; ".join(f"the {r} {models[r].ref.uri} is {DESCRIBED[t]}" for r, t in tasks.items())
        raise WorkbenchError(
            f"the two models predict different things ({described}): a run compares two models of one task; "
            "pass --task to say what both predict when a model's task was guessed wrongly"
        )
    return check_task(next(iter(tasks.values())))


def model_classes(models: dict[str, Predictor], task: str) -> list[str] | None:
    """The classes of a multi-class run (None for another task): both models must name the same classes in the
    same order (their probabilities' columns)."""
    if task != MULTICLASS:
        return None
    classes = {r: m.ref.classes for r, m in models.items()}
    for r, c in classes.items():
        if not c or len(c) < 2:
            raise WorkbenchError(
                f"the {r} {models[r].ref.uri} does not name its classes: a multi-class model needs them (an sklearn "
                "classifier's classes_, or the model metadata's 'classes' in the order of its probabilities)"
            )
    base, cand = (list(classes[r] or ()) for r in ROLES)
    if base != cand:
        how = "in another order" if sorted(base) == sorted(cand) else "different classes"
        raise WorkbenchError(
            f"the two models name {how} (baseline {base}, candidate {cand}): a multi-class run compares two models "
            "of one class set"
        )
    return base


def model_quantiles(models: dict[str, Predictor], task: str) -> tuple[list[float] | None, str | None]:
    """The quantile levels a regression run stores for both models (None for another task, or when the models
    do not give the same levels), and why none are stored when a model gives some."""
    if task != REGRESSION:
        return None, None
    levels = {r: getattr(m.ref, "quantiles", None) for r, m in models.items()}
    if not any(levels.values()):
        return None, None
    if levels[BASELINE] == levels[CANDIDATE]:
        return [float(q) for q in levels[BASELINE] or ()], None
    given = "; ".join(f"the {r} gives {list(q) if q else 'none'}" for r, q in levels.items())
    return None, f"quantiles not stored: the two models give different quantile levels ({given})"


def with_task(models: dict[str, Predictor], task: str) -> None:
    """Record ``task`` on each model whose own task differs (set with ``--task``): it says how they score."""
    for m in models.values():
        if getattr(m.ref, "task", BINARY) != task:
            m.ref = replace(m.ref, task=task, task_source="option")


def class_thresholds(models: dict[str, Predictor], task: str) -> dict[str, float | None]:
    """Each role's decision threshold: None for a regression or multi-class run (a regression model's scores are
    predictions; a multi-class model's class is its most probable)."""
    return {r: m.ref.threshold if task == BINARY else None for r, m in models.items()}


def paired_table(
    rows: pa.Array,
    scored: dict[str, Scored],
    thresholds: Mapping[str, float | None],
    n_classes: int | None = None,
    n_quantiles: int | None = None,
) -> pa.Table:
    """The wide, paired result rows of one batch (one row per request, both models side by side). A role
    without a threshold (a regression model) has no class: its score is the prediction. With ``classes`` (a
    multi-class run) see :func:`multiclass_columns`. With ``n_quantiles`` (a regression run that stores quantiles)
    each model's output is its prediction then its quantiles, stored as ``*_quantiles`` (a list per row, apart in
    ``prediction_quantiles``, null where the model failed)."""
    if n_classes is not None:
        return multiclass_columns(rows, scored, n_classes)
    n = len(rows)
    cols: dict[str, pa.Array] = {"_row": rows}
    quantiles: dict[str, pa.Array] = {}
    for role in ROLES:
        s = scored[role]
        point = s.scores[:, 0] if s.scores.ndim == 2 else s.scores  # a model's extra columns: its quantiles
        ok = np.isfinite(point)
        all_ok = bool(ok.all())
        threshold = thresholds[role]
        cols[f"{role}_score"] = pa.array(point) if all_ok else pa.array(point, mask=~ok)  # errors: null
        if threshold is None:
            cols[f"{role}_class"] = pa.nulls(n, pa.int32())
        else:
            classes = (point >= threshold).astype(np.int32)
            cols[f"{role}_class"] = pa.array(classes) if all_ok else pa.array(classes, mask=~ok)
        cols[f"{role}_latency_ms"] = pa.array(s.latency_ms)
        cols[f"{role}_error"] = pa.nulls(n, pa.string()) if all_ok else pa.array(s.errors, pa.string())
        if n_quantiles is not None:
            q = s.scores[:, 1:] if s.scores.ndim == 2 else np.full((n, n_quantiles), np.nan)
            good = ok & np.isfinite(q).all(axis=1)
            quantiles[f"{role}_quantiles"] = pa.ListArray.from_arrays(
                pa.array(np.arange(n + 1, dtype=np.int32) * n_quantiles),
                pa.array(np.where(good[:, None], q, 0.0).reshape(-1)),
                mask=None if good.all() else pa.array(~good),
            )
    return pa.table(cols | quantiles)


def multiclass_columns(rows: pa.Array, scored: dict[str, Scored], classes: int) -> pa.Table:
    """Paired rows of a multi-class run: per model the class (the index of its most probable class, the lowest
    on a tie), its probability as the score, and ``*_proba`` (the row of class probabilities, stored apart in
    ``prediction_probabilities``); a row the model failed has none of them (its error says why)."""
    n = len(rows)
    cols: dict[str, pa.Array] = {"_row": rows}
    for role in ROLES:
        s = scored[role]
        p = s.scores if s.scores.ndim == 2 else np.full((n, classes), np.nan)
        ok = np.isfinite(p).all(axis=1)
        safe = np.where(ok[:, None], p, 0.0)
        best = safe.argmax(axis=1).astype(np.int32)
        top = safe[np.arange(n), best]
        failed = None if ok.all() else ~ok
        cols[f"{role}_score"] = pa.array(top, mask=failed)
        cols[f"{role}_class"] = pa.array(best, mask=failed)
        cols[f"{role}_latency_ms"] = pa.array(s.latency_ms)
        cols[f"{role}_error"] = pa.nulls(n, pa.string()) if s.errors is None else pa.array(s.errors, pa.string())
        flat = pa.array(safe.reshape(-1))
        cols[f"{role}_proba"] = pa.ListArray.from_arrays(
            pa.array(np.arange(n + 1, dtype=np.int32) * classes),
            flat,
            mask=pa.array(failed) if failed is not None else None,
        )
    return pa.table(cols)

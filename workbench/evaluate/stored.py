"""Stored evaluations: whether one still covers its run as it is now, and evaluations asked for again (a finished
run whose data has not changed since its latest evaluation, asked with the same options, gets that evaluation
back instead of a new one: the bootstrap and the influence intervals over every labelled row again, and a new
row in ``evaluations``)."""

from __future__ import annotations

import inspect
from dataclasses import fields
from typing import Any

from workbench.evaluate.evaluation import evaluate_run, evaluation_params
from workbench.evaluate.results import Options
from workbench.store import Store
from workbench.tasks import run_task


def evaluation(store: Store, run_id: str, *, recompute: bool = False, **options: Any) -> dict[str, Any]:
    """:func:`evaluate_run` with ``options``, as a dict; for a finished run, the latest stored evaluation instead
    when it was made with the same options from the same state of the run's data (rows, traffic, labels), so
    asking again costs a lookup and records nothing. ``recompute`` evaluates regardless."""
    with store.snapshot():  # the run with the state of its data, and the stored evaluation, as of one moment
        run = store.require_run(run_id)
        if not recompute and run["status"] == "finished":
            args = inspect.signature(evaluate_run).bind(store, run_id, **options)
            args.apply_defaults()
            a = args.arguments
            opts = Options(**{f.name: a[f.name] for f in fields(Options)})
            wanted = evaluation_params(run, a["segment"], a["window"], opts, a["thresholds"], a["partial"], a["prices"])
            stored = store.evaluation_made_with(run_id, wanted)
            if stored is not None:
                return stored
    return evaluate_run(store, run_id, **options).to_dict()


def evaluation_is_current(store: Store, evaluation: dict) -> str | None:
    """None when a stored evaluation covers its run as it is now (finished, the same rows, the same labels);
    otherwise why it does not, in words."""
    cov = evaluation.get("coverage") or {}
    run = store.require_run(evaluation["run_id"])
    if not cov:
        return "it does not record what it covered (made by an older release): evaluate the run again"
    if not cov.get("complete"):
        return (
            f"it covers {cov.get('rows_done', 0):,} of {cov.get('rows_total', 0):,} rows of a run that was "
            f"{cov.get('status')} (a partial evaluation)"
        )
    if int(run["rows_done"] or 0) != cov.get("rows_done"):
        return f"the run has {int(run['rows_done'] or 0):,} rows now, the evaluation covers {cov.get('rows_done'):,}"
    if store.labels_state(run["traffic"], run_task(run)) != cov.get("labels"):
        return "the run's labels changed since it was evaluated"
    return None

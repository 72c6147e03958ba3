"""Evaluations asked for again: a finished run whose data has not changed since its latest evaluation, asked
with the same options, gets that evaluation back instead of a new one (the bootstrap and the influence
intervals over every labelled row again, and a new row in ``evaluations``)."""

from __future__ import annotations

import inspect
from dataclasses import fields
from typing import Any

from workbench.evaluate.evaluation import evaluate_run, evaluation_params
from workbench.evaluate.results import Options
from workbench.store import Store


def evaluation(store: Store, run_id: str, *, recompute: bool = False, **options: Any) -> dict[str, Any]:
    """:func:`evaluate_run` with ``options``, as a dict; for a finished run, the latest stored evaluation instead
    when it was made with the same options from the same state of the run's data (rows, traffic, labels), so
    asking again costs a lookup and records nothing. ``recompute`` evaluates regardless."""
    run = store.require_run(run_id)
    if not recompute and run["status"] == "finished":
        args = inspect.signature(evaluate_run).bind(store, run_id, **options)
        args.apply_defaults()
        a = args.arguments
        opts = Options(**{f.name: a[f.name] for f in fields(Options)})
        wanted = evaluation_params(
            store, run, a["segment"], a["window"], opts, a["thresholds"], a["partial"], a["prices"]
        )
        stored = store.evaluation_made_with(run_id, wanted)
        if stored is not None:
            return stored
    return evaluate_run(store, run_id, **options).to_dict()

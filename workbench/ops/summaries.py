"""Summaries of a run that the app's pages show, computed once per state of the run's data and stored in the lake.

A first visit of a page over a 10M-row run would otherwise aggregate the run (seconds) or judge it (the Decide
page's preview: a minute). The flow computes them once the run is evaluated (:func:`precompute`); a page reads
the copy stored under the run's current state (:func:`~workbench.store.app.run_token`: rows, status, traffic
and labels; for a decision's evidence also every run of the pair and the drift report), and computes a missing
or stale one itself (:func:`look_up`), storing it when it can write (:func:`save`). Each summary is defined
once, in :data:`COMPUTE`, which both call.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from workbench import WorkbenchError
from workbench.store import Store
from workbench.store.app import run_token

log = logging.getLogger(__name__)

SCORE_BINS = 200  # score histogram bins (ROC/PR thresholds at k/200)
LATENCY_PER_DECADE = 20  # log-spaced latency bins
LATENCY_PROBS = (0.5, 0.95, 0.99)
MIN_ROWS_VAR = "WORKBENCH_SUMMARY_MIN_ROWS"
# a 100k-row run's pages aggregate and judge it in well under 2 s on a first visit (10M rows: 5-60 s)
DEFAULT_MIN_ROWS = 100_000


def _evidence(store: Store, run: dict, policy: Any) -> Any:
    from workbench.decide.canary import load_drift
    from workbench.decide.judge import run_evidence

    return run_evidence(store, run, policy, load_drift(store, run["run_id"]))


#: name -> (what it is computed from: the store, the run and the summary's argument); the argument's key
COMPUTE: dict[str, Callable[[Store, dict, Any], Any]] = {
    "scores": lambda s, r, _: s.app_score_summary(r["run_id"], SCORE_BINS, LATENCY_PER_DECADE),
    "latency_quantiles": lambda s, r, _: s.app_latency_quantiles(r["run_id"], list(LATENCY_PROBS)),
    "segment_columns": lambda s, r, _: s.app_segment_columns(r["traffic"]),
    "breakdowns": lambda s, r, columns: s.app_breakdowns(r["run_id"], list(columns)),
    "evidence": _evidence,  # the argument: a policy
}


def key_of(name: str, arg: Any) -> str:
    """The key a summary is stored under besides its run: its bins, its columns, the policy's hash."""
    if name == "scores":
        return f"{SCORE_BINS}/{LATENCY_PER_DECADE}"
    if name == "latency_quantiles":
        return ",".join(map(str, LATENCY_PROBS))
    if name == "breakdowns":
        return ",".join(arg)
    if name == "evidence":
        return arg.hash
    return ""


def token_of(store: Store, run: dict, name: str) -> str:
    """The state of the data summary ``name`` of ``run`` depends on: the run's
    :func:`~workbench.store.app.run_token`; for a decision's evidence, that of every finished run of the pair and
    the run's latest drift report."""
    states = {r["run_id"]: run_token(r) for r in store.app_runs()}
    if name != "evidence":
        return states[run["run_id"]]
    base, cand = run["baseline"], run["candidate"]
    runs = [r["run_id"] for r in store.pair_runs(cand.get("name"), str(base.get("version")), str(cand.get("version")))]
    parts = [f"{r}:{states.get(r)}" for r in dict.fromkeys([*runs, run["run_id"]])]
    drift = json.dumps(store.latest_drift(run["run_id"]), sort_keys=True, default=str)
    return "\n".join(parts) + "\ndrift:" + hashlib.sha256(drift.encode()).hexdigest()


@dataclass(frozen=True)
class Looked:
    """A summary's value, the state it was computed under, and whether it came from the lake."""

    value: Any
    token: str
    stored: bool


def look_up(store: Store, run_id: str, name: str, arg: Any = None) -> Looked:
    """Summary ``name`` of a run: the stored copy when it was computed under the data's current state, else
    computed now (not stored: see :func:`save`)."""
    if name not in COMPUTE:
        raise WorkbenchError(f"unknown run summary {name!r}; choose one of {', '.join(COMPUTE)}")
    run = store.require_run(run_id)
    key, token = key_of(name, arg), token_of(store, run, name)
    text = store.stored_summary(run_id, name, key, token)
    if text is not None:
        return Looked(loads(text), token, True)
    return Looked(COMPUTE[name](store, run, arg), token, False)


def save(store: Store, run_id: str, name: str, arg: Any, looked: Looked) -> None:
    """Store a summary computed by :func:`look_up` (under the state it was computed under)."""
    if not looked.stored:
        store.save_summary(run_id, name, key_of(name, arg), looked.token, dumps(looked.value))


def summary(store: Store, run_id: str, name: str, arg: Any = None) -> Any:
    """Summary ``name`` of a run, stored or computed; a computed one is stored (``store`` must write)."""
    looked = look_up(store, run_id, name, arg)
    save(store, run_id, name, arg, looked)
    return looked.value


def min_rows() -> int:
    """The smallest run the flow stores summaries of (``$WORKBENCH_SUMMARY_MIN_ROWS``, default
    :data:`DEFAULT_MIN_ROWS`): a page aggregates or judges a smaller run on its first visit within its budget."""
    raw = os.environ.get(MIN_ROWS_VAR, "")
    try:
        return int(raw) if raw else DEFAULT_MIN_ROWS
    except ValueError:
        raise WorkbenchError(f"${MIN_ROWS_VAR} must be a whole number of rows, not {raw!r}") from None


def precompute(store: Store, run_id: str, evidence: bool = True, at_least: int = 0) -> list[str]:
    """Compute and store the summaries of a finished run of ``at_least`` rows the pages show (the evidence of a
    decision under the shipped policy of the run's task only with ``evidence``: after the drift report, which it
    depends on); returns the names stored. A run the evidence cannot be built for (no registered candidate, ...)
    is logged, not raised."""
    from workbench.decide.policy import policy_for_run

    run = store.require_run(run_id)
    if run["status"] != "finished" or run["rows_done"] < at_least:
        return []
    summary(store, run_id, "scores")
    summary(store, run_id, "latency_quantiles")
    columns = summary(store, run_id, "segment_columns")  # what the breakdowns are by
    summary(store, run_id, "breakdowns", tuple(columns))
    done = ["scores", "latency_quantiles", "segment_columns", "breakdowns"]
    if evidence and run["candidate"].get("name") and run["candidate"].get("version"):  # a decidable pair
        try:
            summary(store, run_id, "evidence", policy_for_run(None, run))
            done.append("evidence")
        except WorkbenchError as e:
            log.info("run %s: no decision evidence stored (%s)", run_id, e)
    return done


def dumps(value: Any) -> str:
    """JSON text of a summary; times keep their type (``{"$time": iso}``), tuples become lists."""

    def default(x: Any) -> Any:
        if isinstance(x, datetime):
            return {"$time": x.isoformat()}
        if isinstance(x, date):
            return {"$date": x.isoformat()}
        raise TypeError(f"cannot store a {type(x).__name__} in a run summary")

    return json.dumps(value, default=default)


def loads(text: str) -> Any:
    """A summary from :func:`dumps`."""

    def hook(d: dict) -> Any:
        if len(d) == 1 and "$time" in d:
            return datetime.fromisoformat(d["$time"])
        if len(d) == 1 and "$date" in d:
            return date.fromisoformat(d["$date"])
        return d

    return json.loads(text, object_hook=hook)

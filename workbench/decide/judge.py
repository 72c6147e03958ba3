"""Judging a run: gather the pair's growing sample from the store, build the evidence, score it, and apply
the new-evidence rule.

The rule: each PROMOTE must rest on more labelled rows than the last PROMOTE of the same candidate version
used. The bounds are anytime-valid on the growing sample, so judging it again after every slice keeps the
false-promote rate at the policy's level; judging the *same* rows again adds nothing, and returns HOLD with
"no new evidence since decision <id>". A ROLLBACK needs no new evidence.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from workbench.decide.context import drifted_features, latest_change_point
from workbench.decide.evidence import Sample, build_evidence
from workbench.decide.policy import Outcome, Policy, Verdict
from workbench.decide.scorecard import Check, Scorecard, score, with_check
from workbench.store import Store
from workbench.tasks import run_classes, run_quantiles, run_task

DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class Judged:
    """What a decision on a run judged: the evidence dict, the drift report (context) and the scorecard."""

    evidence: dict[str, Any]
    drift: dict | None
    scorecard: Scorecard


def segment_columns(store: Store, runs: list[dict], policy: Policy) -> tuple[list[str], list[str]]:
    """(columns to segment by, declared columns left out): the policy's ``segment_columns`` and every column
    the pair's traffic sets declare, kept when every run's traffic has it."""
    declared = dict.fromkeys(policy.segment_columns)
    present: list[set[str]] = []
    for r in runs:
        info = store.require_traffic(r["traffic"])
        declared.update(dict.fromkeys(store.declared_segments(r["traffic"])))
        present.append(set(info["columns"]) | ({info["entity_col"]} if info["entity_col"] else set()))
    keep = [c for c in declared if all(c in cols for cols in present)]
    return keep, [c for c in declared if c not in keep]


def gather(store: Store, run: dict, policy: Policy, features: Sequence[str] = ()) -> tuple[Sample, list[str]]:
    """The pair's growing sample (every finished run of the run's baseline/candidate versions) with the values
    of ``features`` where every run's traffic has them, and the declared segment columns some of its traffic
    sets lack."""
    base, cand = run["baseline"], run["candidate"]
    runs = store.pair_runs(cand["name"], str(base["version"]), str(cand["version"]))
    if run["run_id"] not in {r["run_id"] for r in runs}:
        runs.append({"run_id": run["run_id"], "traffic": run["traffic"], "mode": run["mode"]})
    columns, missing = segment_columns(store, runs, policy)
    have = [set(store.require_traffic(t)["columns"]) for t in {r["traffic"] for r in runs}]
    features = [f for f in features if all(f in cols for cols in have)]
    tables = [(r["run_id"], store.decision_rows(r["run_id"], columns, features)) for r in runs]
    thresholds = (
        float(base.get("threshold", DEFAULT_THRESHOLD)),
        float(cand.get("threshold", DEFAULT_THRESHOLD)),
    )
    online = all(r.get("mode") == "online" for r in runs)
    task, classes, quantiles = run_task(run), tuple(run_classes(run)), tuple(run_quantiles(run))
    sample = Sample.from_tables(
        tables, online=online, thresholds=thresholds, task=task, classes=classes, quantiles=quantiles
    )
    return sample, missing


def last_promote(store: Store, model: str, baseline_version: str, candidate_version: str) -> dict | None:
    """The record of the last applied PROMOTE that moved this baseline/candidate pair up the ramp, if any."""
    for row in reversed(store.chain(model)):
        record = json.loads(row["record"]) if row.get("record") else {}
        if (
            record.get("kind") == "decision"
            and record.get("verdict") == Verdict.PROMOTE
            and str((record.get("candidate") or {}).get("version")) == str(candidate_version)
            and str((record.get("baseline") or {}).get("version")) == str(baseline_version)
            and int(record.get("weight_after", 0)) > int(record.get("weight_before", 0))
        ):
            return record
    return None


def new_evidence_check(labelled_rows: int, earlier: dict | None) -> Check:
    """PASS when the sample has labelled rows the last PROMOTE of this candidate did not use, else HOLD."""
    used = int(((earlier or {}).get("evidence") or {}).get("labelled_rows") or 0)
    if earlier is None:
        outcome, reason = Outcome.PASS, "no earlier PROMOTE of this candidate: all labelled rows are new"
    elif labelled_rows > used:
        outcome = Outcome.PASS
        reason = f"{labelled_rows - used:,} labelled rows since decision {earlier['decision_id']} ({used:,} then)"
    else:
        outcome = Outcome.INCONCLUSIVE
        reason = (
            f"no new evidence since decision {earlier['decision_id']}: its PROMOTE used these {used:,} labelled "
            "rows; replay newer traffic (or wait for its labels) to move the ramp again"
        )
    return Check(
        gate="evidence.new_rows",
        kind="evidence",
        metric="labeled_rows",
        criterion="new_evidence",
        threshold=float(used),
        baseline=float(used),
        candidate=float(labelled_rows),
        delta=None,
        outcome=outcome,
        critical=False,
        reason=reason,
        rows=labelled_rows,
    )


def run_evidence(store: Store, run: dict, policy: Policy, drift: dict | None) -> dict[str, Any]:
    """Gather the pair's growing sample and build the evidence a decision on ``run`` judges under ``policy``
    (``drift``: the run's drift report, context). A policy whose gates name another task's metrics than the run's
    is refused."""
    policy.check_task(run_task(run), run["run_id"])
    drifted = drifted_features(drift) if policy.drift.drifted_slices else {}
    sample, missing = gather(store, run, policy, list(drifted))
    measured = [(r, store.run_resources(r)) for r in sample.runs]
    evidence = build_evidence(
        sample, policy, change_point=latest_change_point(drift), drifted=drifted, resources=measured
    )
    if missing:
        evidence["segments_missing"] = missing
    return evidence


def judge_run(store: Store, run: dict, policy: Policy, drift: dict | None, evidence: dict | None = None) -> Judged:
    """Score the evidence (:func:`run_evidence`, unless the caller has it for this run, policy and drift report)
    under ``policy``, with the new-evidence rule."""
    policy.check_task(run_task(run), run["run_id"])
    evidence = run_evidence(store, run, policy, drift) if evidence is None else evidence
    card = score(policy, evidence, drift)
    base, cand = run["baseline"], run["candidate"]
    earlier = last_promote(store, cand["name"], str(base["version"]), str(cand["version"]))
    card = with_check(card, new_evidence_check(int(evidence["labeled_rows"]), earlier))
    return Judged(evidence, drift, card)

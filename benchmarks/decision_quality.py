"""Benchmark: the verdict's error rates across the whole canary ramp, on synthetic paired traffic with known truth.

    python benchmarks/decision_quality.py [--trials 1000] [--context-trials N] [--comparison-trials 50]
        [--trials-for SCENARIO=N] [--quick] [--scenarios a,b] [--seed 0] [--json PATH] [--workers 2]
        [--store-trials 1] [--no-segments] [--policy FILE] [--rule NAME=SPEC]
        [--regression-trials 200] [--regression-only]

What it does, per scenario and trial:

1. **Known truth.** A seeded generator makes labelled paired predictions: three numeric features, a segment
   column (A/B/C/D), event times, a label drawn from a logistic model of the features, a baseline and a
   candidate score (the true logit plus shared and own noise; the candidate's own noise ``sigma_c`` and logit
   offset ``shift`` set its quality, per segment and per period of time where a scenario says so), per-request
   (online) latencies and errors. The scenario constants were set by construction (bisection on a large sample:
   ``--calibrate`` re-derives them); each run re-measures every scenario's true deltas on a huge sample
   (``--truth-rows``) and prints them, with the policy margins the truth violates.
2. **The ramp, walked as a scheduled job walks it.** A trial's traffic arrives in ``--looks`` slices of
   ``--slice-rows`` labelled rows. After each slice every live decision rule decides on the cumulative rows:
   PROMOTE moves its canary weight one ramp step (:func:`workbench.decide.canary.next_weight`), HOLD keeps it,
   ROLLBACK ends that rule's walk at 0, and so does reaching 100 %; the trial stops once every rule has ended.
   Replay is shadow (both models score every request), so the evidence at a look does not depend on the weight
   and all rules see the same rows; each rule keeps its own weight.
3. **Two paths, one answer.** The fast path calls the library's pure functions on arrays. The store path goes
   through the real library: the slice's traffic and labels through :mod:`workbench.ingest.traffic` (the traffic
   set declares its ``segment`` column, ``store.declare_segments``), a replay run per look (mode ``online``)
   that replays all the traffic so far, written with the store's run API (``open_run``, ``commit_batch`` of
   :func:`workbench.replay.paired.paired_table` rows, ``finish_run``), then ``evaluate_run``, ``drift_run`` and
   ``build_decision`` + ``apply_decision`` signed with a throwaway key (``judge_run`` gathers the pair's finished
   runs, each request once, the latest run's copy: the fast path's cumulative rows). ``--store-trials`` trials
   per ``--store-scenarios`` scenario run on both paths; the harness asserts that every look's verdict, weight
   and per-gate outcome are identical and that every number the checks judged (baseline, candidate, the delta
   and its bounds) and the evaluation and drift numbers agree within 1e-9.

Decision rules (each keeps its own ramp):

* **(c) sequential**: the policy (default: the shipped one) as the library now judges a run: at each look a
  :class:`~workbench.decide.evidence.Sample` of the cumulative rows (request ids, event times, labels, scores with
  NaN where a model failed, failures, online latencies, the ``segment`` column), the change point of the look's
  drift report (``latest_change_point``), ``build_evidence`` (anytime-valid one-sided bounds overall, per
  segment, on the recent window and after the change point), ``score``, then the new-evidence rule as
  ``judge_run`` applies it (a PROMOTE needs labelled rows the rule's last PROMOTE that moved the weight did not
  use). Drift is context: the fast path computes only the report's drifted features and concept-drift part, all
  a decision reads (it slices the drifted features' bins and the rows after the change point).
* **(a) fixed-horizon**: the same gates judged by ``score`` on the cumulative evaluation's fixed-horizon 95 %
  intervals (:func:`workbench.evaluate.evaluation.evaluate_samples`, with ``--segment segment`` unless
  ``--no-segments``) through :func:`fixed_horizon_evidence`, a fresh test at every look and no new-evidence rule,
  as the previous release decided (it has no recent window and no change point: those gates are skipped).
* **(b) point-thresholds**: the same evidence with every interval collapsed onto its point estimate: MLflow's
  ``validate_evaluation_results`` semantics.

``--rule NAME=SPEC`` adds a rule (a policy file, judged as (c) is, or ``module:attr`` naming a :class:`Rule` or a
callable ``f(look: Look) -> Verdict | Decided``); NAME ``sequential`` replaces (c).

Cost: rule (c) costs about 0.05-0.1 s per look on the 2-core machine (``build_evidence`` on up to 100,000 rows);
the evaluation that (a) and (b) read costs 0.2-0.8 s per look with segments, so they run on the first
``--comparison-trials`` trials of each scenario only (the tables give each rule's number of trials). Rule (c)
runs ``--trials`` trials per scenario whose share is a targeted error rate and ``--context-trials`` for the
others.

Output: the truth table; per scenario and rule the share of trials reaching each ramp step, ending PROMOTE at
100 %, HOLD or ROLLBACK (Wilson 95 % intervals), the median labelled rows used and the gates not passing at the
last look of the trials that ended held; the targets with pass/fail for rule (c) (false promote = any PROMOTE
that moves the weight at or after the look where the candidate is worse than a margin; power = reaching 100 %
for the +1 f1 point candidate within the walk's labelled rows; drift-for-both trials held for drift alone, i.e.
by drift.*, after_change.* or drifted.* gates only, at some look; 1 %-error candidates rolled back); the
machine, its load and the time taken.

**Regression.** Four regression candidates (:data:`REGRESSION_SCENARIOS`: MAE the same, +3 %, +2.1 % and -5 %
against the baseline's, in closed form from normal errors) walk the same ramp under rule (c) with the shipped
regression policy (anytime-valid bounds on the per-request absolute- and squared-error differences, per segment
and on the recent window): false promote of the two worse than the 2 % MAE margin <= 1 %, power of the better one
>= 90 % (``--regression-trials`` each; ``--regression-only`` runs these alone).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import importlib
import json
import math
import os
import platform
import resource
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # entry points set it before numerical libraries load
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one thread per worker: the workers are the parallelism

import numpy as np  # noqa: E402  (after the thread settings above)

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from workbench.decide.canary import next_weight  # noqa: E402
from workbench.decide.context import drifted_features, latest_change_point  # noqa: E402
from workbench.decide.evidence import Sample, build_evidence  # noqa: E402
from workbench.decide.judge import new_evidence_check  # noqa: E402
from workbench.decide.policy import Outcome, Policy, Verdict, load_policy  # noqa: E402
from workbench.decide.scorecard import Scorecard, score, with_check  # noqa: E402
from workbench.evaluate.metrics import METRICS, confusion, grouping  # noqa: E402
from workbench.evaluate.stats import wilson  # noqa: E402

# -- the synthetic world ---------------------------------------------------------------------------------
SEGMENTS = np.array(["A", "B", "C", "D"])
SEGMENT_SHARE = np.array([0.4, 0.3, 0.2, 0.1])
SEGMENT_EFFECT = np.array([0.0, 0.3, -0.3, 0.5])  # added to the true logit: segments differ in base rate
FEATURES = ("f0", "f1", "f2")
INTERCEPT = -1.0
WEIGHTS = np.array([1.2, 0.8, -0.6])
SIGMA_SHARED = 0.5  # noise both models share (what neither model knows)
SIGMA_BASELINE = 1.0  # the baseline's own noise
LATENCY_MS = 5.0  # median per-request latency (online, one request at a time)
LATENCY_SIGMA = 0.35  # log-normal spread
SECONDS_PER_ROW = 6  # event times: one labelled request every 6 s
T0 = np.datetime64("2026-09-01T00:00:00", "s")
THRESHOLD = 0.5
RECENT_SHARE = 0.2  # "the most recent window" of the truth: the latest 20 % of the horizon's time
MODEL = "dq_model"
SEQUENTIAL = "(c) sequential"


@dataclass(frozen=True)
class Scenario:
    """A candidate with known truth. ``shift``/``sigma_c`` set its scores; ``segment_shift`` overrides the shift
    per segment; ``late_shift`` and ``late_sigma`` replace shift and noise from ``late_from`` (a share of the
    horizon's time) on; ``drift_size``
    moves features f0 and f1 for both models from ``drift_from`` on."""

    name: str
    title: str
    target: dict  # the true deltas it was built to have (checked against the huge sample)
    sigma_c: float = SIGMA_BASELINE
    shift: float = 0.0
    segment_shift: dict = field(default_factory=dict)
    late_shift: float | None = None
    late_sigma: float | None = None
    late_from: float = 0.75
    drift_from: float | None = None
    drift_size: float = 0.0
    error_rate: float = 0.0
    latency_factor: float = 1.0
    error_rate_scenario: bool = False  # its measured share is one of the targeted error rates

    def shifts(self, seg: np.ndarray, pos: np.ndarray) -> np.ndarray:
        s = np.full(len(seg), self.shift)
        for name, v in self.segment_shift.items():
            s[seg == int(np.flatnonzero(SEGMENTS == name)[0])] = v
        if self.late_shift is not None:
            s[pos >= self.late_from] = self.late_shift
        return s

    def sigmas(self, pos: np.ndarray) -> np.ndarray | float:
        if self.late_sigma is None:
            return self.sigma_c
        return np.where(pos >= self.late_from, self.late_sigma, self.sigma_c)


# Constants from ``--calibrate`` (bisection on 4,000,000 rows, one draw per world). "Better" candidates have
# less own noise (better on every metric) and an offset that puts their f1 gain at the target; "worse" ones keep
# the baseline's noise and lose f1 through a logit offset alone (AUC, log loss within their margins), so the f1
# gate is the one that must catch them.
BETTER_SIGMA = 0.9
RECENT_SIGMA = 0.5  # the degrading candidate is much better early (less noise), then worse than the baseline
SCENARIOS: tuple[Scenario, ...] = (
    Scenario("identical", "same model quality as the baseline (independent noise)", {"f1": 0.0}),
    Scenario(
        "worse_3pt", "f1 -0.03: worse than the 0.02 margin", {"f1": -0.03}, shift=-0.3085, error_rate_scenario=True
    ),
    Scenario(
        "worse_edge", "f1 -0.021: just past the 0.02 margin", {"f1": -0.021}, shift=-0.227, error_rate_scenario=True
    ),
    Scenario("inside_margin", "f1 -0.01: inside the 0.02 margin", {"f1": -0.01}, shift=-0.1168),
    Scenario(
        "better_1pt",
        "f1 +0.01: better by one f1 point",
        {"f1": 0.01},
        sigma_c=BETTER_SIGMA,
        shift=0.0505,
        error_rate_scenario=True,
    ),
    Scenario(
        "segment_worse",
        "f1 +0.01 overall, f1 -0.05 on segment D (10 % of traffic)",
        {"f1": 0.01, "f1@D": -0.05},
        sigma_c=BETTER_SIGMA,
        shift=0.156,
        segment_shift={"D": -0.5288},
    ),
    Scenario(
        "recent_worse",
        "f1 +0.03 in the first half of the time, -0.03 in the second: from look 5 on the "
        "cumulative delta is still >= 0, the latest window worse than the margin",
        {"f1@early": 0.03, "f1@late": -0.03},
        sigma_c=RECENT_SIGMA,
        shift=0.0361,
        late_sigma=SIGMA_BASELINE,
        late_shift=-0.3109,
        late_from=0.5,
    ),
    Scenario(
        "drift_both",
        "f1 +0.01; features f0, f1 shift by +0.8 sd for both models from 1/8 of the time",
        {"f1": 0.01},
        sigma_c=BETTER_SIGMA,
        shift=0.0932,
        drift_from=0.125,
        drift_size=0.8,
        error_rate_scenario=True,
    ),
    Scenario(
        "errors_1pct",
        "f1 +0.01, but 1 % of the candidate's requests fail",
        {"f1": 0.01, "error_rate": 0.01},
        sigma_c=BETTER_SIGMA,
        shift=0.0505,
        error_rate=0.01,
        error_rate_scenario=True,
    ),
    Scenario(
        "slower",
        "f1 +0.01, but the candidate takes 2x as long per request",
        {"f1": 0.01, "p99_ratio": 2.0},
        sigma_c=BETTER_SIGMA,
        shift=0.0505,
        latency_factor=2.0,
    ),
)
BY_NAME = {s.name: s for s in SCENARIOS}


def _expit(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass(frozen=True)
class Paired:
    """Labelled paired rows in event-time order: what the replay and the labels give, and the truth's extras."""

    y: np.ndarray  # 0/1 labels (int8)
    baseline: np.ndarray  # scores; NaN where the model failed
    candidate: np.ndarray
    latency_b: np.ndarray  # ms
    latency_c: np.ndarray
    segment: np.ndarray  # index into SEGMENTS
    features: np.ndarray  # (rows, 3)
    pos: np.ndarray  # share of the horizon's time at which the request came

    def __len__(self) -> int:
        return len(self.y)

    def head(self, n: int) -> Paired:
        return Paired(*(getattr(self, f)[:n] for f in self.__dataclass_fields__))

    def part(self, lo: int, hi: int) -> Paired:
        return Paired(*(getattr(self, f)[lo:hi] for f in self.__dataclass_fields__))


def generate(sc: Scenario, pos: np.ndarray, rng: np.random.Generator) -> Paired:
    """Paired labelled rows at times ``pos`` (shares of the horizon) for scenario ``sc``."""
    n = len(pos)
    seg = rng.choice(len(SEGMENTS), size=n, p=SEGMENT_SHARE)
    x = rng.standard_normal((n, len(FEATURES)))
    if sc.drift_from is not None:
        x[pos >= sc.drift_from, :2] += sc.drift_size
    logit = INTERCEPT + x @ WEIGHTS + SEGMENT_EFFECT[seg]
    y = (rng.random(n) < _expit(logit)).astype(np.int8)
    z = rng.standard_normal((3, n))
    seen = logit + SIGMA_SHARED * z[0]
    baseline = _expit(seen + SIGMA_BASELINE * z[1])
    candidate = _expit(seen + sc.sigmas(pos) * z[2] + sc.shifts(seg, pos))
    lat_b = np.round(rng.lognormal(math.log(LATENCY_MS), LATENCY_SIGMA, n), 3)
    lat_c = np.round(rng.lognormal(math.log(LATENCY_MS * sc.latency_factor), LATENCY_SIGMA, n), 3)
    if sc.error_rate:
        candidate[rng.random(n) < sc.error_rate] = np.nan
    return Paired(y, baseline, candidate, lat_b, lat_c, seg, x, pos)


def trial_rng(seed: int, sc: Scenario, trial: int) -> np.random.Generator:
    """One generator per (seed, scenario, trial): a trial's data does not depend on which others run."""
    return np.random.default_rng([seed, zlib.crc32(sc.name.encode()), trial])


def trial_data(sc: Scenario, cfg: Config, trial: int) -> Paired:
    rows = cfg.looks * cfg.slice_rows
    return generate(sc, (np.arange(rows) + 0.5) / rows, trial_rng(cfg.seed, sc, trial))


# -- truth ---------------------------------------------------------------------------------------------
GATED = ("f1", "roc_auc", "log_loss", "accuracy")


def metric_values(y: np.ndarray, s: np.ndarray) -> dict[str, float]:
    g, c = grouping(y, s).weigh(), confusion(y, s >= THRESHOLD)
    return {m: float(METRICS[m].compute(g if METRICS[m].from_scores else c)) for m in GATED}


def deltas(d: Paired, mask: np.ndarray | None = None) -> dict[str, float]:
    """Candidate minus baseline on the rows both scored (and ``mask``), plus the baseline's values."""
    ok = np.isfinite(d.candidate) & np.isfinite(d.baseline)
    if mask is not None:
        ok &= mask
    b, c = metric_values(d.y[ok], d.baseline[ok]), metric_values(d.y[ok], d.candidate[ok])
    return {m: c[m] - b[m] for m in GATED} | {f"baseline.{m}": b[m] for m in GATED}


def truth(sc: Scenario, rows: int, seed: int = 12345) -> dict:
    """True deltas on ``rows`` rows spread uniformly over the horizon's time (a huge sample)."""
    rng = np.random.default_rng([seed, zlib.crc32(sc.name.encode())])
    d = generate(sc, rng.random(rows), rng)
    out: dict[str, Any] = {
        "rows": rows,
        "overall": deltas(d),
        "segments": {str(s): deltas(d, d.segment == i) for i, s in enumerate(SEGMENTS)},
        "recent": deltas(d, d.pos >= 1 - RECENT_SHARE),
        "error_rate": float(np.mean(~np.isfinite(d.candidate))),
    }
    if sc.late_shift is not None:
        out["early"], out["late"] = deltas(d, d.pos < sc.late_from), deltas(d, d.pos >= sc.late_from)
    if sc.drift_from is not None:
        out["after_drift"] = deltas(d, d.pos >= sc.drift_from)
    ok = np.isfinite(d.candidate)
    p99 = {"baseline": float(np.quantile(d.latency_b, 0.99)), "candidate": float(np.quantile(d.latency_c[ok], 0.99))}
    out["p99_ms"], out["p99_ratio"] = p99, p99["candidate"] / p99["baseline"]
    # each target's value, and its standard error on this many rows from 8 disjoint parts (random positions)
    k = rows // 8
    out["targets"] = {}
    for key in sc.target:
        parts = [target_value(sc, d.part(i * k, (i + 1) * k), key) for i in range(8)]
        out["targets"][key] = {
            "target": sc.target[key],
            "value": target_value(sc, d, key),
            "se": float(np.std(parts, ddof=1) / math.sqrt(len(parts))),
        }
    return out


def target_value(sc: Scenario, d: Paired, key: str) -> float:
    """The true value that a ``target`` key names: ``f1`` (overall), ``f1@D`` (segment D), ``f1@early`` /
    ``f1@late`` (before / from ``late_from``), ``error_rate``, ``p99_ratio``."""
    if key == "error_rate":
        return float(np.mean(~np.isfinite(d.candidate)))
    if key == "p99_ratio":
        return float(np.quantile(d.latency_c[np.isfinite(d.candidate)], 0.99) / np.quantile(d.latency_b, 0.99))
    metric, _, where = key.partition("@")
    if not where:
        return deltas(d)[metric]
    if where in ("early", "late"):
        return deltas(d, (d.pos >= sc.late_from) == (where == "late"))[metric]
    return deltas(d, d.segment == int(np.flatnonzero(SEGMENTS == where)[0]))[metric]


def violations(policy: Policy, t: dict) -> list[str]:
    """The policy's margins that the true candidate violates: overall, on a segment, in the most recent window
    (what the issue asks the gates to judge, whether or not today's policy looks there), error rate, latency."""
    out = []

    def judge(where: str, d: dict) -> None:
        for g in policy.metrics:
            m, up = g.metric, g.better_up
            delta, base = d[m], d[f"baseline.{m}"]
            if g.min_absolute_change is not None:
                bound = g.min_absolute_change if up else -g.min_absolute_change
                if (delta < bound) if up else (delta > bound):
                    out.append(f"{where}{m} {delta:+.4f} past {bound:+g}")
            if g.min_relative_change is not None:
                bound = abs(base) * (g.min_relative_change if up else -g.min_relative_change)
                if (delta < bound) if up else (delta > bound):
                    out.append(f"{where}{m} {delta / abs(base):+.1%} past {bound / abs(base):+.0%}")

    judge("", t["overall"])
    judge("recent ", t["recent"])
    for g in policy.segments:
        bound = g.min_absolute_change
        worse = sorted((d[g.metric], s) for s, d in t["segments"].items() if bound is not None and d[g.metric] < bound)
        if worse:
            more = f" (and {len(worse) - 1} more segments)" if len(worse) > 1 else ""
            out.append(f"segment {worse[0][1]} {g.metric} {worse[0][0]:+.4f} past {bound:+g}{more}")
    if t["error_rate"] > policy.errors.max_rate:
        out.append(f"error rate {t['error_rate']:.2%} > {policy.errors.max_rate:g}")
    for lat in policy.latency:
        if lat.percentile == "p99" and lat.max_ratio is not None and t["p99_ratio"] > lat.max_ratio:
            out.append(f"p99 latency {t['p99_ratio']:.2f}x > {lat.max_ratio:g}x")
    return out


def bad_from_look(sc: Scenario, violated: list[str], looks: int) -> int | None:
    """The first look at which a PROMOTE is a false promote: 1 for a candidate worse than a margin throughout,
    the first look whose slice comes after ``late_from`` for one that degrades late, None for a good one."""
    if not violated:
        return None
    if sc.late_shift is not None and all(v.startswith("recent ") for v in violated):
        return math.ceil(sc.late_from * looks - 1e-9) + 1
    return 1


# -- decision rules ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Decided:
    """A rule's verdict at one look: the gates that did not pass, each gate's outcome, a one-line reason, the
    labelled rows it judged (None: the look's) and the judged numbers per check (for the parity check)."""

    verdict: Verdict
    blocking: tuple[str, ...] = ()
    outcomes: tuple[tuple[str, str], ...] = ()
    reason: str = ""
    rows: int | None = None
    numbers: tuple[tuple[str, float | None], ...] = ()


class Evidence:
    """What the walk knows at one look, each part computed on first use (a rule that does not read the
    fixed-horizon evaluation does not pay for it): ``evaluation`` (``workbench evaluate --json``), ``drift``
    (``workbench drift --json``, or its concept-drift part alone on the fast path's trials: drift is context,
    and the sequential rule reads only its change point) and the labelled rows."""

    def __init__(self, rows: int, evaluation: Callable[[], dict], drift: Callable[[], dict | None]):
        self.rows = rows
        self._make = {"evaluation": evaluation, "drift": drift}
        self._done: dict[str, Any] = {}

    def get(self, part: str) -> Any:
        if part not in self._done:
            self._done[part] = self._make[part]()
        return self._done[part]

    @property
    def evaluation(self) -> dict:
        return self.get("evaluation")

    @property
    def drift(self) -> dict | None:
        return self.get("drift")

    def computed(self, part: str) -> bool:
        return part in self._done


@dataclass(frozen=True)
class Look:
    """What a rule sees at one look: the look's number (1-based), its canary weight before deciding, the
    evidence (evaluation and drift dicts, computed on first use), the rule's earlier decisions in this trial,
    the cumulative labelled rows themselves (arrays, in time order: a sequential rule needs per-row values)
    and the ramp."""

    index: int
    weight: int
    evidence: Evidence
    history: tuple[Step, ...]
    sample: Paired
    ramp: tuple[int, ...]

    @property
    def evaluation(self) -> dict:
        return self.evidence.evaluation

    @property
    def drift(self) -> dict | None:
        return self.evidence.drift

    @property
    def labeled_rows(self) -> int:
        return self.evidence.rows


class Rule(Protocol):
    """A decision rule. ``policy``: when set, the store path signs and applies the rule's decisions with
    ``build_decision``/``apply_decision`` under that policy (so ``decide`` must equal what ``judge_run`` decides
    on the pair's stored runs); when None, the store path calls ``decide`` on the stored evaluation and drift."""

    @property
    def name(self) -> str: ...

    @property
    def policy(self) -> Policy | None: ...

    def decide(self, look: Look) -> Decided: ...


def card_numbers(card: Scorecard) -> tuple[tuple[str, float | None], ...]:
    """The numbers each check judged (baseline, candidate, the delta's value and bounds), flattened."""
    out: list[tuple[str, float | None]] = []
    for c in card.checks:
        out += [(f"{c.gate}.baseline", c.baseline), (f"{c.gate}.candidate", c.candidate)]
        if c.delta is not None:
            for k in ("value", "ci_low", "ci_high", "fail_low", "fail_high"):
                out.append((f"{c.gate}.delta.{k}", getattr(c.delta, k)))
    return tuple(out)


def _decided(card: Scorecard, rows: int | None = None) -> Decided:
    return Decided(
        card.verdict,
        tuple(c.gate for c in card.checks if c.outcome != Outcome.PASS),
        tuple((c.gate, str(c.outcome)) for c in card.checks),
        card.reason,
        rows,
        card_numbers(card),
    )


def fixed_horizon_evidence(ev: dict, policy: Policy, online: bool = True) -> dict:
    """The evidence shape :func:`~workbench.decide.scorecard.score` reads, from a fixed-horizon evaluation dict
    (``workbench evaluate --json``, 95 % intervals): metrics and segments as they are (a segment with fewer than
    the policy's ``min_segment_rows`` is listed, not judged, as the sequential evidence does); latency per model
    with bounds, the baseline's percentile taken at its point estimate and the candidate's bounds from the
    evaluation's interval on the difference; no recent window and no after-change slice (the evaluation has
    neither: those gates are skipped, as the previous release had no such gates)."""
    out: dict[str, Any] = {
        "bound": f"fixed-horizon {ev.get('confidence') or 0.95:.0%}",
        "labeled_rows": ev.get("labeled_rows"),
        "baseline": ev.get("baseline") or {},
        "candidate": ev.get("candidate") or {},
        "delta": ev.get("delta") or {},
        "errors": ev.get("errors") or {},
    }
    segs: dict[str, Any] = {}
    for col, values in (ev.get("segments") or {}).items():
        segs[col] = {}
        for v, seg in values.items():
            small = bool(seg.get("small")) or int(seg.get("rows") or 0) < policy.min_segment_rows
            segs[col][v] = {"rows": int(seg.get("rows") or 0), "small": True} if small else dict(seg, small=False)
    out["segments"] = segs
    lat = ev.get("latency") or {}
    latency: dict[str, Any] = {"online": online, "baseline": {}, "candidate": {}}
    for p, b in (lat.get("baseline") or {}).items():
        c = (lat.get("candidate") or {}).get(p)
        d = (lat.get("delta") or {}).get(p) or {}
        if not isinstance(b, (int, float)) or not isinstance(c, (int, float)):
            continue
        latency["baseline"][p] = {"value": b, "ci_low": b, "ci_high": b}
        lo, hi = d.get("ci_low"), d.get("ci_high")
        latency["candidate"][p] = {
            "value": c,
            "ci_low": None if lo is None else b + lo,
            "ci_high": None if hi is None else b + hi,
        }
    out["latency"] = latency
    return out


@dataclass(frozen=True)
class PolicyRule:
    """Rule (a): the policy's gates judged by ``score`` on the cumulative evaluation's fixed-horizon 95 %
    intervals (:func:`fixed_horizon_evidence`), a fresh test at every look and no new-evidence rule, as the
    previous release decided. Not signed on the store path (``build_decision`` now judges the sequential way)."""

    name: str
    judge: Policy

    @property
    def policy(self) -> None:
        return None

    def decide(self, look: Look) -> Decided:
        return _decided(score(self.judge, fixed_horizon_evidence(look.evaluation, self.judge), look.drift))


def point_estimates(obj: Any) -> Any:
    """The evidence with every interval collapsed onto its point estimate (``value``, or ``rate`` for error
    rates): scoring that judges the estimate against the threshold, as MLflow's ``validate_evaluation_results``."""
    if isinstance(obj, dict):
        out = {k: point_estimates(v) for k, v in obj.items()}
        if "ci_low" in out and "ci_high" in out:
            point = out.get("value", out.get("rate"))
            if point is not None:
                out["ci_low"] = out["ci_high"] = point
        return out
    if isinstance(obj, list):
        return [point_estimates(v) for v in obj]
    return obj


@dataclass(frozen=True)
class PointThresholdRule:
    """Rule (b): the policy's gates on point estimates: MLflow-style thresholds (no interval, no inconclusive)."""

    name: str
    judge: Policy

    @property
    def policy(self) -> None:
        return None  # not signed on the store path: judged there on the stored evaluation and drift

    def decide(self, look: Look) -> Decided:
        ev = point_estimates(fixed_horizon_evidence(look.evaluation, self.judge))
        return _decided(score(self.judge, ev, look.drift))


class _FastSample(Sample):
    """A :class:`Sample` whose record citation skips the per-row label digest (a Python loop over every row):
    the citation goes into a signed record, never into a judged number, and the fast path signs nothing."""

    def cite(self) -> dict[str, Any]:
        ok = self.labelled()
        t = self.time[ok]
        return {
            "runs": list(self.runs),
            "rows": len(self),
            "labelled_rows": int(ok.sum()),
            "first_event": str(t.min()) if len(t) else None,
            "last_event": str(t.max()) if len(t) else None,
            "labels_digest": "not computed on the fast path",
        }


def sample_of(d: Paired) -> Sample:
    """The pair's growing sample as :meth:`Sample.from_tables` gathers it from the store, on the trial's arrays:
    every request once, in event-time order (row i at T0 + i x SECONDS_PER_ROW), NaN scores where a model failed,
    per-request (online) latencies, the declared segment column."""
    n = len(d)
    return _FastSample(
        np.arange(n),
        (T0 + np.arange(n) * np.timedelta64(SECONDS_PER_ROW, "s")).astype("datetime64[us]"),
        d.y.astype(np.float64),
        d.baseline,
        d.candidate,
        ~np.isfinite(d.baseline),
        ~np.isfinite(d.candidate),
        d.latency_b,
        d.latency_c,
        {"segment": SEGMENTS[d.segment]},
        online=True,
        thresholds=(THRESHOLD, THRESHOLD),
        features={c: d.features[:, i] for i, c in enumerate(FEATURES)},
    )


@dataclass(frozen=True)
class SequentialRule:
    """Rule (c): the policy as the library now judges a run (:func:`workbench.decide.judge.judge_run`), on
    arrays: the pair's growing sample (:func:`sample_of`), the change point of the look's drift report,
    ``build_evidence``, ``score`` and the new-evidence rule against the labelled rows of this rule's last
    PROMOTE that moved the weight in this trial. Signed on the store path (``build_decision`` +
    ``apply_decision``, which call ``judge_run``)."""

    name: str
    judge: Policy

    @property
    def policy(self) -> Policy:
        return self.judge

    def decide(self, look: Look) -> Decided:
        evidence = build_evidence(
            sample_of(look.sample),
            self.judge,
            change_point=latest_change_point(look.drift),
            drifted=drifted_features(look.drift) if self.judge.drift.drifted_slices else {},
        )
        card = score(self.judge, evidence, look.drift)
        earlier = None
        for s in reversed(look.history):
            if s.verdict == Verdict.PROMOTE and s.weight_after > s.weight_before:
                earlier = {"decision_id": f"look {s.look}", "evidence": {"labelled_rows": s.rows}}
                break
        rows = int(evidence["labeled_rows"])
        return _decided(with_check(card, new_evidence_check(rows, earlier)), rows)


@dataclass(frozen=True)
class CallableRule:
    """A rule from a callable ``f(look) -> Verdict | Decided`` (the slot for rules that are not a policy file)."""

    name: str
    func: Callable[[Look], Any]

    @property
    def policy(self) -> None:
        return None

    def decide(self, look: Look) -> Decided:
        out = self.func(look)
        return out if isinstance(out, Decided) else Decided(Verdict(out))


def load_rule(name: str, spec: str) -> Rule:
    """``spec``: a policy file (.toml/.yaml/.yml/.json: judged as rule (c) judges the shipped one), or
    ``module:attr`` naming a rule or a callable."""
    if Path(spec).suffix.lower() in (".toml", ".yaml", ".yml", ".json"):
        return SequentialRule(name, load_policy(spec))
    module, sep, attr = spec.partition(":")
    if not sep:
        raise SystemExit(f"--rule {name}={spec}: give a policy file or module:attr")
    obj = getattr(importlib.import_module(module), attr)
    if hasattr(obj, "decide"):
        return obj
    if callable(obj):
        return CallableRule(name, obj)
    raise SystemExit(f"--rule {name}={spec}: {spec} is neither a rule (with .decide) nor callable")


# -- the walk --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Config:
    looks: int = 16
    slice_rows: int = 6_250
    seed: int = 0
    segments: bool = True  # rules (a), (b): evaluate with --segment segment (the traffic declares the column)


@dataclass(frozen=True)
class Step:
    look: int
    rows: int
    weight_before: int
    weight_after: int
    verdict: str
    blocking: tuple[str, ...]
    outcomes: tuple[tuple[str, str], ...]
    numbers: tuple[tuple[str, float | None], ...] = ()  # what the checks judged (compared within a tolerance)


def _steps_key(s: Step) -> tuple:
    return s.look, s.rows, s.weight_before, s.weight_after, s.verdict, s.outcomes


def evaluate_fast(d: Paired, segments: bool) -> dict:
    """``workbench evaluate --json`` of these rows, computed on arrays with the evaluation's defaults."""
    import pyarrow as pa

    from workbench.evaluate.evaluation import evaluate_samples

    n = len(d)
    ok = {"baseline": np.isfinite(d.baseline), "candidate": np.isfinite(d.candidate)}
    latency = {"baseline": d.latency_b[ok["baseline"]].copy(), "candidate": d.latency_c[ok["candidate"]].copy()}
    errors = {r: {"rows": n, "errors": int(n - ok[r].sum())} for r in ok}
    seg = ("segment", pa.array(SEGMENTS[d.segment])) if segments else None
    return evaluate_samples(
        "fast",
        d.y,
        {"baseline": d.baseline, "candidate": d.candidate},
        {"baseline": THRESHOLD, "candidate": THRESHOLD},
        latency,
        errors,
        n,
        segment=seg,
    ).to_dict()


def drift_fast(d: Paired, decision_part: bool = False) -> dict:
    """The fields of ``workbench drift --json`` that the policy reads, on arrays, as ``drift_run`` computes them
    with its default reference (the earliest 20 % of the run's rows by event time; the rest is current):
    normed Wasserstein per feature and per score (Evidently's default test above 1,000 reference values, which
    the harness requires), prediction drift of each model (reference against current) and of baseline against
    candidate (current rows), Page-Hinkley concept drift on each model's per-request error stream.
    ``decision_part``: only what the sequential rule slices by, the drifted features and the change point (the
    rest of the report is context in the scorecard, never a failure)."""
    from scipy import stats as sps

    from workbench.drift.report import DEFAULT_REFERENCE_SHARE
    from workbench.drift.stattests import SMALL_REFERENCE, stat_test

    n = len(d)
    k = int(n * DEFAULT_REFERENCE_SHARE)
    wasserstein = stat_test("wasserstein")

    def compare(ref: np.ndarray, cur: np.ndarray) -> dict:
        ref, cur = ref[np.isfinite(ref)], cur[np.isfinite(cur)]
        if len(ref) <= SMALL_REFERENCE:
            raise ValueError(
                f"{len(ref)} reference values: drift_run would use a p-value test, which the fast "
                "path does not reproduce; use larger slices"
            )
        w = float(sps.wasserstein_distance(ref, cur)) / max(float(np.std(ref)), 0.001)
        return {
            "test": wasserstein.name,
            "statistic": w,
            "threshold": wasserstein.default_threshold,
            "drifted": bool(w >= wasserstein.default_threshold),
            "reference_rows": len(ref),
            "current_rows": len(cur),
        }

    features = {
        c: compare(d.features[:k, i], d.features[k:, i]) | {"kind": "numerical"} for i, c in enumerate(FEATURES)
    }
    if decision_part:
        return {"features": features, "concept_drift": concept_drift(d)}
    share = sum(f["drifted"] for f in features.values()) / len(features)
    pred = {
        r: compare(s[:k], s[k:]) | {"available": True}
        for r, s in (("baseline", d.baseline), ("candidate", d.candidate))
    }
    pred["baseline_vs_candidate"] = compare(d.baseline[k:], d.candidate[k:])
    return {
        "share_drifted": share,
        "dataset_drift": share >= 0.5,
        "features": features,
        "prediction_drift": pred,
        "concept_drift": concept_drift(d),
    }


def concept_drift(d: Paired) -> dict:
    """``concept_drift`` of ``workbench drift --json``: Page-Hinkley on each model's per-request error stream."""
    from workbench.drift.concept import PageHinkley, page_hinkley

    concept: dict = {}
    for role, s in (("baseline", d.baseline), ("candidate", d.candidate)):
        ok = np.isfinite(s)
        err = ((s[ok] >= THRESHOLD).astype(np.int64) != d.y[ok]).astype(np.float64)
        alarms = page_hinkley(err, PageHinkley())
        times = T0 + (np.flatnonzero(ok) * SECONDS_PER_ROW).astype("timedelta64[s]")
        c = {
            "detected": bool(alarms),
            "change_point": str(times[alarms[0].change_index]) + "Z" if alarms else None,
            "rows": int(ok.sum()),
        }
        if role == "baseline":
            concept = c
        else:
            concept["candidate"] = c
    return concept


def walk(
    rules: list[Rule],
    evidence: Callable[[int], Evidence],
    sample: Paired,
    cfg: Config,
    ramp: tuple[int, ...],
    decide_signed: Callable[[int, Rule, int], Decided | None] | None = None,
    stop: int | None = None,
) -> list[list[Step]]:
    """Walk the ramp: after each slice, the evidence on the cumulative rows and each live rule's decision; the
    walk ends when every rule has ended (ROLLBACK or 100 %). ``decide_signed(look, rule, weight)`` (the store
    path) decides a rule through the signed records instead; ``stop``: walk only the first looks."""
    steps: list[list[Step]] = [[] for _ in rules]
    weight = [0] * len(rules)
    live = [True] * len(rules)
    for k in range(1, min(cfg.looks, stop or cfg.looks) + 1):
        if not any(live):
            break
        n = k * cfg.slice_rows
        ev = evidence(n)
        head = sample.head(n)
        for i, rule in enumerate(rules):
            if not live[i]:
                continue
            decided = decide_signed(k, rule, weight[i]) if decide_signed else None
            if decided is None:
                decided = rule.decide(Look(k, weight[i], ev, tuple(steps[i]), head, ramp))
            after = next_weight(decided.verdict, weight[i], ramp)
            steps[i].append(
                Step(
                    k,
                    ev.rows if decided.rows is None else decided.rows,
                    weight[i],
                    after,
                    str(decided.verdict),
                    decided.blocking,
                    decided.outcomes,
                    decided.numbers,
                )
            )
            weight[i] = after
            if decided.verdict == Verdict.ROLLBACK or after == ramp[-1]:
                live[i] = False
    return steps


def walk_fast(
    sc: Scenario,
    trial: int,
    cfg: Config,
    rules: list[Rule],
    ramp: tuple[int, ...],
    stop: int | None = None,
    full_drift: bool = False,
) -> tuple[list[list[Step]], dict[int, Evidence]]:
    """One trial on arrays. ``full_drift``: the whole drift report at each look (the parity check compares it
    with ``drift_run``'s); otherwise only its drifted features and concept-drift part, all that a decision
    reads from it."""
    data = trial_data(sc, cfg, trial)
    seen: dict[int, Evidence] = {}

    def evidence(n: int) -> Evidence:
        head = data.head(n)
        seen[n] = Evidence(n, lambda: evaluate_fast(head, cfg.segments), lambda: drift_fast(head, not full_drift))
        return seen[n]

    return walk(rules, evidence, data, cfg, ramp, stop=stop), seen


# -- the store path --------------------------------------------------------------------------------------
def _refs(model: str) -> dict:
    return {
        role: {
            "uri": f"models:/{model}/{v}",
            "name": model,
            "version": v,
            "run_id": None,
            "flavor": "synthetic",
            "features": list(FEATURES),
            "threshold": THRESHOLD,
        }
        for role, v in (("baseline", "1"), ("candidate", "2"))
    }


def _model_of(rule_index: int) -> str:
    return f"{MODEL}_{rule_index}"


def walk_store(
    sc: Scenario,
    trial: int,
    cfg: Config,
    rules: list[Rule],
    ramp: tuple[int, ...],
    workdir: Path,
    stop: int | None = None,
) -> tuple[list[list[Step]], dict]:
    """The same trial through ingest, the store's run API, ``evaluate_run``, ``drift_run`` and the signed
    decisions. Each rule with a policy ramps its own registered model (its own run per look, a replay of all
    the traffic so far: the pair's runs pooled, each request once, are the fast path's cumulative rows); the
    traffic set declares its segment column, as ``ingest --segment segment`` does."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from workbench.decide.canary import apply_decision, build_decision
    from workbench.decide.signing import Signer, init_keys, trusted_keys
    from workbench.drift.report import drift_run
    from workbench.evaluate.evaluation import evaluate_run
    from workbench.ingest.traffic import ingest, ingest_labels
    from workbench.replay.paired import paired_table
    from workbench.replay.scoring import Scored
    from workbench.store import Store

    data = trial_data(sc, cfg, trial)
    workdir.mkdir(parents=True, exist_ok=True)
    init_keys(workdir / "keys")  # a throwaway key pair for this trial
    signer = Signer.from_keys_dir(workdir / "keys", "decision-quality")
    trusted = trusted_keys(workdir / "keys", workdir / "no-trusted")
    signed_rules = [i for i, r in enumerate(rules) if r.policy is not None]
    run_rules = signed_rules or [0]  # the rules with a run of their own per look (the first serves the others)
    seen: dict[int, Evidence] = {}
    traffic = "dq"
    thresholds = {"baseline": THRESHOLD, "candidate": THRESHOLD}

    store = Store(workdir / "lake")
    try:

        def ingest_slice(j: int) -> None:
            lo, hi = j * cfg.slice_rows, (j + 1) * cfg.slice_rows
            part = data.part(lo, hi)
            ids = pa.array([f"r{trial}-{i:07d}" for i in range(lo, hi)])
            cols = {
                "request_id": ids,
                "event_time": pa.array(
                    T0 + (np.arange(lo, hi) * SECONDS_PER_ROW).astype("timedelta64[s]"), pa.timestamp("s")
                ),
                "segment": pa.array(SEGMENTS[part.segment]),
            }
            cols |= {c: pa.array(part.features[:, i]) for i, c in enumerate(FEATURES)}
            pq.write_table(pa.table(cols), workdir / "slice.parquet")
            pq.write_table(pa.table({"request_id": ids, "label": part.y.astype(np.int32)}), workdir / "labels.parquet")
            res = ingest(store, workdir / "slice.parquet", traffic)
            if res.quarantined:
                raise RuntimeError(f"ingest quarantined {res.quarantined} rows: {res.reasons}")
            ingest_labels(store, workdir / "labels.parquet", traffic, time_col=None)
            if j == 0:
                store.declare_segments(traffic, ["segment"])

        def replay_run(run_id: str, model: str, slices: int) -> None:
            refs = _refs(model)
            state = store.open_run(
                run_id=run_id,
                traffic=traffic,
                baseline=refs["baseline"],
                candidate=refs["candidate"],
                batch_size=cfg.slice_rows,
                device="cpu",
                mode="online",
                meta={"benchmark": "decision_quality"},
            )
            if state.rows_total != slices * cfg.slice_rows:
                raise RuntimeError(f"run {run_id} covers {state.rows_total} rows, expected {slices * cfg.slice_rows}")
            for j in range(slices):  # a replay of the whole traffic so far: one commit unit per slice
                lo, hi = j * cfg.slice_rows, (j + 1) * cfg.slice_rows
                part = data.part(lo, hi)
                scored = {}
                for role, s, lat in (
                    ("baseline", part.baseline, part.latency_b),
                    ("candidate", part.candidate, part.latency_c),
                ):
                    bad = ~np.isfinite(s)
                    errors = (
                        ["RuntimeError: synthetic failure" if b else None for b in bad.tolist()] if bad.any() else None
                    )
                    scored[role] = Scored(s, errors, lat)
                store.commit_batch(
                    run_id, j, lo, hi - 1, hi - lo, 0.0, paired_table(pa.array(np.arange(lo, hi)), scored, thresholds)
                )
            store.finish_run(run_id)

        def evidence(n: int) -> Evidence:
            k = n // cfg.slice_rows
            ingest_slice(k - 1)
            for i in run_rules:
                run_id = f"look{k:02d}_rule{i}"
                replay_run(run_id, _model_of(i), k)
                evaluate_run(store, run_id, segment="segment" if cfg.segments else None)
                drift_run(store, run_id)
            first = f"look{k:02d}_rule{run_rules[0]}"  # what build_decision reads: the run's stored reports
            ev, dr = store.latest_evaluation(first), store.latest_drift(first)
            if ev is None or dr is None:
                raise RuntimeError(f"run {first} has no stored evaluation or drift report")
            seen[n] = Evidence(n, lambda: ev, lambda: dr)
            return seen[n]

        def decide_signed(k: int, rule: Rule, weight: int) -> Decided | None:
            i = rules.index(rule)
            if rule.policy is None:
                return None
            signed, card = build_decision(
                store, f"look{k:02d}_rule{i}", rule.policy, signer, justification="benchmark: the rule's verdict"
            )
            if signed.record["weight_before"] != weight:
                raise AssertionError(
                    f"the signed record starts at {signed.record['weight_before']} %, the walk at {weight} %"
                )
            st = apply_decision(store, signed, trusted)
            if not st.verified or st.weight != signed.record["weight_after"]:
                raise AssertionError(
                    f"applying {signed.decision_id} left the canary at {st.weight} % (verified {st.verified})"
                )
            return _decided(card, int(signed.record["evidence"]["labelled_rows"]))

        steps = walk(rules, evidence, data, cfg, ramp, decide_signed, stop)
        for i in signed_rules:  # the signed chain holds exactly the walk's decisions
            chain = store.chain(_model_of(i))
            if len(chain) != len(steps[i]):
                raise AssertionError(f"rule {rules[i].name}: {len(chain)} applied records for {len(steps[i])} looks")
    finally:
        store.close()
    return steps, seen


def _numbers(ev: dict, dr: dict | None) -> dict[str, float]:
    """The judged numbers of an evaluation and a drift dict, flattened (for the parity check)."""
    if dr is None:
        raise AssertionError("the parity check needs the drift report of every look")
    out: dict[str, float] = {"labeled_rows": ev["labeled_rows"]}
    for who in ("baseline", "candidate", "delta"):
        for m in ("f1", "roc_auc", "log_loss"):
            for k in ("value", "ci_low", "ci_high"):
                out[f"{who}.{m}.{k}"] = ev[who][m][k]
    for k in ("value", "ci_low", "ci_high"):
        out[f"latency.delta.p99.{k}"] = ev["latency"]["delta"]["p99"][k]
    out["latency.baseline.p99"] = ev["latency"]["baseline"]["p99"]
    for k in ("rate", "ci_low", "ci_high"):
        out[f"errors.candidate.{k}"] = ev["errors"]["candidate"][k]
    for col, vals in (ev.get("segments") or {}).items():
        for v, s in vals.items():
            for k in ("value", "ci_low", "ci_high"):
                out[f"segments.{col}.{v}.f1.{k}"] = s["delta"]["f1"][k]
    out["drift.share_drifted"] = dr["share_drifted"]
    for c, f in dr["features"].items():
        out[f"drift.{c}"] = f["statistic"]
    for r in ("baseline", "candidate", "baseline_vs_candidate"):
        out[f"drift.prediction.{r}"] = dr["prediction_drift"][r]["statistic"]
    out["drift.concept.baseline"] = float(dr["concept_drift"]["detected"])
    out["drift.concept.candidate"] = float(dr["concept_drift"]["candidate"]["detected"])
    return out


def _agree(where: str, a: dict[str, Any], b: dict[str, Any], tolerance: float) -> float:
    """The largest absolute difference between two flattened number dicts; AssertionError past ``tolerance``
    (relative to the larger of 1 and the number) or when their fields differ."""
    if a.keys() != b.keys():
        raise AssertionError(f"{where}: judged fields differ: {sorted(a.keys() ^ b.keys())}")
    worst = 0.0
    for key in a:
        x, y = a[key], b[key]
        if (x is None) != (y is None):
            raise AssertionError(f"{where}: {key} is {x} (fast) vs {y} (store)")
        if x is not None:
            diff = abs(x - y)
            worst = max(worst, diff)
            if diff > tolerance * max(1.0, abs(x)):
                raise AssertionError(f"{where}: {key} = {x!r} (fast) vs {y!r} (store)")
    return worst


def check_parity(
    sc: Scenario,
    trial: int,
    cfg: Config,
    rules: list[Rule],
    ramp: tuple[int, ...],
    workdir: Path,
    stop: int | None = None,
    tolerance: float = 1e-9,
) -> dict:
    """Run one trial (its first ``stop`` looks) on both paths; raise AssertionError unless every look's verdict,
    weight and gate outcomes are identical, every number the checks judged agrees within ``tolerance`` (the
    sequential rule's: baseline, candidate, delta and bounds per check) and so do the evaluation and drift
    reports the fixed-horizon rules read."""
    t0 = time.perf_counter()
    fast, fast_seen = walk_fast(sc, trial, cfg, rules, ramp, stop, full_drift=True)
    t1 = time.perf_counter()
    slow, slow_seen = walk_store(sc, trial, cfg, rules, ramp, workdir, stop)
    t2 = time.perf_counter()
    worst = {"evaluation": 0.0, "checks": 0.0}
    for n in sorted(fast_seen):
        f, s = fast_seen[n], slow_seen[n]
        if f.computed("evaluation"):  # a fixed-horizon rule read it at this look
            where = f"{sc.name} trial {trial}, {n} rows"
            diff = _agree(where, _numbers(f.evaluation, f.drift), _numbers(s.evaluation, s.drift), tolerance)
            worst["evaluation"] = max(worst["evaluation"], diff)
        if latest_change_point(f.drift) != latest_change_point(s.drift):
            raise AssertionError(
                f"{sc.name} trial {trial}, {n} rows: change point {latest_change_point(f.drift)} (fast) vs "
                f"{latest_change_point(s.drift)} (store)"
            )
    for rule, fs, ss in zip(rules, fast, slow, strict=True):
        if [_steps_key(x) for x in fs] != [_steps_key(x) for x in ss]:
            raise AssertionError(
                f"{sc.name} trial {trial}, rule {rule.name}: the paths disagree\n fast:  "
                f"{[(x.look, x.rows, x.verdict, x.weight_after, x.blocking) for x in fs]}\n store: "
                f"{[(x.look, x.rows, x.verdict, x.weight_after, x.blocking) for x in ss]}"
            )
        for x, y in zip(fs, ss, strict=True):
            where = f"{sc.name} trial {trial}, rule {rule.name}, look {x.look}"
            worst["checks"] = max(worst["checks"], _agree(where, dict(x.numbers), dict(y.numbers), tolerance))
    return {
        "scenario": sc.name,
        "trial": trial,
        "looks": len(fast_seen),
        "max_abs_diff": max(worst.values()),
        "max_abs_diff_by": worst,
        "fast_s": round(t1 - t0, 2),
        "store_s": round(t2 - t1, 2),
        "verdicts": {r.name: [x.verdict for x in f] for r, f in zip(rules, fast, strict=True)},
        "weights": {r.name: [x.weight_after for x in f] for r, f in zip(rules, fast, strict=True)},
    }


# -- trials and their summary ----------------------------------------------------------------------------
@dataclass(frozen=True)
class TrialOutcome:
    """One rule's trial, summarised."""

    max_weight: int
    final: str  # "PROMOTE" (reached 100 %), "ROLLBACK" or "HOLD" (the horizon ended first)
    rows: int  # labelled rows at the last decision
    false_promote: bool  # a PROMOTE that moved the weight at or after the scenario's bad_from_look
    drift_alone: bool  # some HOLD whose only non-passing gates were drift gates (:data:`DRIFT_GATES`)
    held_by: tuple[str, ...] = ()  # every gate that did not pass at some HOLD of the trial
    last_held_by: tuple[str, ...] = ()  # the gates that did not pass at the last look, when it held


DRIFT_GATES = ("drift.", "after_change.", "drifted.")  # checks that exist because of a drift report


def summarise(steps: list[Step], ramp: tuple[int, ...], bad_from: int | None) -> TrialOutcome:
    last = steps[-1]
    final = "PROMOTE" if last.weight_after == ramp[-1] else "ROLLBACK" if last.verdict == Verdict.ROLLBACK else "HOLD"
    holds = [s for s in steps if s.verdict == Verdict.HOLD]
    return TrialOutcome(
        max(s.weight_after for s in steps),
        final,
        last.rows,
        bad_from is not None
        and any(
            s.verdict == Verdict.PROMOTE and s.look >= bad_from and s.weight_after > s.weight_before for s in steps
        ),
        any(s.blocking and all(g.startswith(DRIFT_GATES) for g in s.blocking) for s in holds),
        tuple(sorted({g for s in holds for g in s.blocking})),
        last.blocking if final == "HOLD" else (),
    )


_WORKER: dict = {}  # set before the worker pool forks: rules, config, ramp, bad_from, comparison trials


def _run_chunk(task: tuple[str, int, int]) -> tuple[str, list[list[TrialOutcome | None]], int]:
    """Trials ``lo`` to ``hi`` of a scenario; a rule outside ``always`` runs only in the first ``comparison``
    trials (None in its slot otherwise)."""
    name, lo, hi = task
    w = _WORKER
    sc = BY_NAME[name]
    out: list[list[TrialOutcome | None]] = []
    looks = 0
    for trial in range(lo, hi):
        keep = [i for i, r in enumerate(w["rules"]) if r.name in w["always"] or trial < w["comparison"]]
        steps, seen = walk_fast(sc, trial, w["cfg"], [w["rules"][i] for i in keep], w["ramp"])
        looks += len(seen)
        row: list[TrialOutcome | None] = [None] * len(w["rules"])
        for i, st in zip(keep, steps, strict=True):
            row[i] = summarise(st, w["ramp"], w["bad_from"][name])
        out.append(row)
    return name, out, looks


def run_trials(
    scenarios: list[Scenario],
    trials: dict[str, int],
    cfg: Config,
    rules: list[Rule],
    ramp: tuple[int, ...],
    bad_from: dict[str, int | None],
    workers: int,
    progress: Callable[[str], None] = lambda s: None,
    comparison: int | None = None,
    always: tuple[str, ...] = (),
    start: dict[str, int] | None = None,
) -> tuple[dict[str, list[list[TrialOutcome | None]]], int]:
    """Fast-path trials; returns per scenario a list of trials, each a list of per-rule outcomes (None where
    the rule did not run: rules not in ``always`` run in the first ``comparison`` trials only)."""
    _WORKER.update(
        rules=rules,
        cfg=cfg,
        ramp=ramp,
        bad_from=bad_from,
        always=always,
        comparison=10**9 if comparison is None else comparison,
    )
    chunk = 5
    first = start or {}
    tasks = [
        (sc.name, lo, min(lo + chunk, first.get(sc.name, 0) + trials[sc.name]))
        for sc in scenarios
        for lo in range(first.get(sc.name, 0), first.get(sc.name, 0) + trials[sc.name], chunk)
    ]
    results: dict[str, list] = {sc.name: [] for sc in scenarios}
    looks = 0
    with chunks(_run_chunk, tasks, workers) as it:
        for done, (name, out, n) in enumerate(it, 1):
            results[name].extend(out)
            looks += n
            if done % max(1, len(tasks) // 20) == 0:
                progress(f"{done}/{len(tasks)} chunks")
    return results, looks


@contextlib.contextmanager
def chunks(func: Callable[[Any], Any], tasks: list, workers: int) -> Iterator[Iterator[Any]]:
    """``func`` over ``tasks`` in order: in this process with one worker, else in a forked pool of ``workers``."""
    if workers <= 1:
        yield map(func, tasks)
        return
    import multiprocessing

    pool = multiprocessing.get_context("fork").Pool(workers)
    try:
        yield pool.imap(func, tasks)
    finally:
        pool.close()
        pool.join()


def share(k: int, n: int) -> dict:
    ci = wilson(k, n, 0.95) or (None, None)
    return {"k": k, "n": n, "share": k / n if n else None, "ci_low": ci[0], "ci_high": ci[1]}


def fmt_share(s: dict) -> str:
    if not s["n"]:
        return "n/a"
    return f"{100 * s['share']:.1f} [{100 * s['ci_low']:.1f}, {100 * s['ci_high']:.1f}]"


def _top(counts: dict[str, int], n: int, k: int = 4) -> list[dict]:
    return [{"gate": g, "trials": c, "share": c / n} for g, c in sorted(counts.items(), key=lambda kv: -kv[1])[:k]]


def aggregate(outcomes: list[list[TrialOutcome | None]], rule_index: int, ramp: tuple[int, ...]) -> dict:
    rows = [o for t in outcomes if (o := t[rule_index]) is not None]
    n = len(rows)
    held: dict[str, int] = {}
    last: dict[str, int] = {}
    for o in rows:
        for g in o.held_by:
            held[g] = held.get(g, 0) + 1
        for g in o.last_held_by:
            last[g] = last.get(g, 0) + 1
    return {
        "held_by": _top(held, max(n, 1)),
        "last_held_by": _top(last, max(n, 1)),
        "trials": n,
        "reach": {str(w): share(sum(o.max_weight >= w for o in rows), n) for w in ramp},
        "final": {f: share(sum(o.final == f for o in rows), n) for f in ("PROMOTE", "HOLD", "ROLLBACK")},
        "median_rows": float(np.median([o.rows for o in rows])) if rows else None,
        "false_promote": share(sum(o.false_promote for o in rows), n),
        "drift_alone": share(sum(o.drift_alone for o in rows), n),
    }


# -- regression: the same ramp and targets for a model judged on its MAE ---------------------------------------
@dataclass(frozen=True)
class RegressionScenario:
    """A regression candidate with known truth. y = s + N(0, 1) with s ~ N(0, 4) (what both models know); the
    baseline predicts s + N(0, 1), the candidate s + N(0, ``sigma_c``^2). Errors are normal, so each model's MAE is
    sqrt(2 / pi) sqrt(1 + sigma^2) and the candidate's relative MAE change is sqrt((1 + sigma_c^2) / 2) - 1
    exactly (the RMSE's too): ``sigma_c`` is set from the ``target`` change in closed form."""

    name: str
    title: str
    mae_change: float  # relative change of the candidate's MAE against the baseline's (+0.03: 3 % worse)
    error_rate_scenario: bool = True

    @property
    def sigma_c(self) -> float:
        return math.sqrt(2 * (1 + self.mae_change) ** 2 - 1)


REGRESSION_SCENARIOS: tuple[RegressionScenario, ...] = (
    RegressionScenario("reg_same", "MAE the same as the baseline's (independent errors)", 0.0, False),
    RegressionScenario("reg_worse_3pct", "MAE +3 %: worse than the 2 % margin", 0.03),
    RegressionScenario("reg_worse_edge", "MAE +2.1 %: just past the 2 % margin", 0.021),
    RegressionScenario("reg_better_5pct", "MAE -5 %: better", -0.05),
)
REG_BY_NAME = {s.name: s for s in REGRESSION_SCENARIOS}


def mae_margin(policy: Policy) -> float:
    """The relative MAE rise a regression policy's ``mae`` gate tolerates (0.02: 2 %)."""
    change = next((g.min_relative_change for g in policy.metrics if g.metric == "mae"), None)
    if change is None:
        raise SystemExit("the regression policy has no mae gate with min_relative_change")
    return -float(change)


def regression_data(sc: RegressionScenario, cfg: Config, trial: int) -> Sample:
    """A trial's labelled paired regression rows as the pair's growing sample (segments, event times, online
    latencies), in event-time order."""
    from workbench.tasks import REGRESSION

    rng = np.random.default_rng([cfg.seed, zlib.crc32(sc.name.encode()), trial])
    n = cfg.looks * cfg.slice_rows
    known = 2.0 * rng.standard_normal(n)
    z = rng.standard_normal((3, n))
    lat = np.round(rng.lognormal(math.log(LATENCY_MS), LATENCY_SIGMA, (2, n)), 3)
    none = np.zeros(n, dtype=bool)
    return _FastSample(
        np.arange(n),
        (T0 + np.arange(n) * np.timedelta64(SECONDS_PER_ROW, "s")).astype("datetime64[us]"),
        known + z[0],
        known + z[1],
        known + sc.sigma_c * z[2],
        none,
        none,
        lat[0],
        lat[1],
        {"segment": SEGMENTS[rng.choice(len(SEGMENTS), size=n, p=SEGMENT_SHARE)]},
        online=True,
        task=REGRESSION,
    )


def _head(sample: Sample, n: int) -> Sample:
    """The first ``n`` rows of a sample (the cumulative rows at a look)."""
    cut = {
        f.name: getattr(sample, f.name)[:n]
        for f in dataclasses.fields(sample)
        if isinstance(getattr(sample, f.name), np.ndarray)
    }
    return dataclasses.replace(sample, **cut, segments={k: v[:n] for k, v in sample.segments.items()})


def regression_walk(sc: RegressionScenario, trial: int, cfg: Config, policy: Policy) -> list[Step]:
    """Rule (c) on a regression trial: at each look ``build_evidence`` on the cumulative rows (anytime-valid MAE
    and RMSE bounds overall, per segment and on the recent window), ``score`` and the new-evidence rule; the walk
    moves the weight as :func:`walk` does and ends at ROLLBACK or 100 %."""
    sample, ramp = regression_data(sc, cfg, trial), tuple(policy.ramp)
    steps: list[Step] = []
    weight = 0
    for k in range(1, cfg.looks + 1):
        evidence = build_evidence(_head(sample, k * cfg.slice_rows), policy)
        earlier = next(
            (
                {"decision_id": f"look {s.look}", "evidence": {"labelled_rows": s.rows}}
                for s in reversed(steps)
                if s.verdict == Verdict.PROMOTE and s.weight_after > s.weight_before
            ),
            None,
        )
        rows = int(evidence["labeled_rows"])
        d = _decided(with_check(score(policy, evidence), new_evidence_check(rows, earlier)), rows)
        after = next_weight(d.verdict, weight, ramp)
        steps.append(Step(k, rows, weight, after, str(d.verdict), d.blocking, d.outcomes))
        weight = after
        if d.verdict == Verdict.ROLLBACK or after == ramp[-1]:
            break
    return steps


def _regression_chunk(task: tuple[str, int, int]) -> tuple[str, list[TrialOutcome]]:
    name, lo, hi = task
    sc, w = REG_BY_NAME[name], _WORKER
    bad = 1 if sc.mae_change > mae_margin(w["policy"]) else None
    return name, [summarise(regression_walk(sc, t, w["cfg"], w["policy"]), w["ramp"], bad) for t in range(lo, hi)]


def run_regression(
    trials: int, cfg: Config, policy: Policy, workers: int, progress: Callable[[str], None] = lambda s: None
) -> dict[str, dict]:
    """Rule (c) on every regression scenario (``trials`` each; the context scenario a fifth of them, at least
    one), aggregated as the classifier scenarios' tables are."""
    ramp = tuple(policy.ramp)
    _WORKER.update(cfg=cfg, policy=policy, ramp=ramp)
    counts = {s.name: trials if s.error_rate_scenario else max(1, trials // 5) for s in REGRESSION_SCENARIOS}
    tasks = [(n, lo, min(lo + 5, c)) for n, c in counts.items() for lo in range(0, c, 5)]
    results: dict[str, list[list[TrialOutcome | None]]] = {n: [] for n in counts}
    with chunks(_regression_chunk, tasks, workers) as it:
        for done, (name, out) in enumerate(it, 1):
            results[name] += [[o] for o in out]
            if done % max(1, len(tasks) // 10) == 0:
                progress(f"{done}/{len(tasks)} chunks")
    return {n: aggregate(r, 0, ramp) for n, r in results.items()}


def print_regression(agg: dict[str, dict], policy: Policy, cfg: Config) -> dict[str, dict]:
    """The regression scenarios' ramp table and their targets (as the classifier scenarios': false promote of a
    candidate worse than the MAE margin <= 1 %, power of the better one >= 90 %); returns the targets met."""
    ramp = tuple(policy.ramp)
    margin = mae_margin(policy)
    print(
        f"\n## Regression: rule (c) under the shipped regression policy (MAE margin {margin:.0%}, confidence "
        f"{policy.confidence:g}; % of trials [Wilson 95 %])\n"
    )
    head = " | ".join(f"reach {w} %" for w in ramp[:-1])
    print(f"| scenario | trials | {head} | PROMOTE at 100 % | HOLD | ROLLBACK | median labelled rows | false promote |")
    print("|---|---|" + "---|" * (len(ramp) - 1) + "---|---|---|---|---|")
    for sc in REGRESSION_SCENARIOS:
        a = agg[sc.name]
        cells = [fmt_share(a["reach"][str(w)]) for w in ramp[:-1]]
        cells += [fmt_share(a["final"][f]) for f in ("PROMOTE", "HOLD", "ROLLBACK")]
        fp = fmt_share(a["false_promote"]) if sc.mae_change > margin else "-"
        print(
            f"| {sc.name}: {sc.title} | {a['trials']} | " + " | ".join(cells) + f" | {a['median_rows']:,.0f} | {fp} |"
        )
    horizon = cfg.looks * cfg.slice_rows
    met: dict[str, dict] = {}
    print("\n| metric | target | rule (c) | target met? |\n|---|---|---|---|")
    for sc in REGRESSION_SCENARIOS:
        if sc.mae_change > margin:
            label, v, ok, target = f"false promote: {sc.name}", agg[sc.name]["false_promote"], None, "<= 1 %"
            ok = v["share"] <= 0.01
        elif sc.mae_change < 0:
            label, v, target = f"power: {sc.name} reaches 100 % within {horizon:,} labelled rows", None, ">= 90 %"
            v = agg[sc.name]["final"]["PROMOTE"]
            ok = v["share"] >= 0.90
        else:
            continue
        met[label] = {"pass": ok} | v
        print(f"| {label} | {target} | {fmt_share(v)} (n={v['n']}) | {'**pass**' if ok else '**FAIL**'} |")
    return met


# -- output ------------------------------------------------------------------------------------------------
def machine() -> dict:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "host": platform.node(),
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "load_avg": [round(x, 2) for x in os.getloadavg()],
    }


def print_truth(truths: dict, scenarios: list[Scenario], bad_from: dict, viol: dict) -> None:
    print("\n## Known truth (huge-sample simulation, candidate minus baseline)\n")
    print(
        "| scenario | built for | f1 | roc_auc | log_loss (rel) | accuracy | worst segment f1 | recent-window f1 "
        "| errors | p99 ratio | worse than a margin (bad from look) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for sc in scenarios:
        t = truths[sc.name]
        o = t["overall"]
        seg = min(t["segments"].items(), key=lambda kv: kv[1]["f1"])
        built = ", ".join(f"{k} {v:+g}" for k, v in sc.target.items())
        bad = "; ".join(viol[sc.name]) or "no"
        if viol[sc.name]:
            bad += f" (look {bad_from[sc.name]})"
        print(
            f"| {sc.name} | {built} | {o['f1']:+.4f} | {o['roc_auc']:+.4f} | "
            f"{o['log_loss'] / o['baseline.log_loss']:+.2%} | {o['accuracy']:+.4f} | {seg[0]} {seg[1]['f1']:+.4f} | "
            f"{t['recent']['f1']:+.4f} | {t['error_rate']:.2%} | {t['p99_ratio']:.2f} | {bad} |"
        )
    rows = next(iter(truths.values()))["rows"] if truths else 0
    print(
        f"\n{rows:,} rows per scenario (scenario constants from --calibrate). Each scenario against what it "
        "was built for (value, standard error):"
    )
    for sc in scenarios:
        print(
            f"- {sc.name}: "
            + "; ".join(
                f"{k} {v['value']:+.4f} (target {v['target']:+g}, se {v['se']:.4f})"
                for k, v in truths[sc.name]["targets"].items()
            )
        )


def print_tables(
    agg: dict, scenarios: list[Scenario], rules: list[Rule], ramp: tuple[int, ...], bad_from: dict
) -> None:
    print("\n## The ramp, per scenario and rule (% of trials [Wilson 95 %])\n")
    head = " | ".join(f"reach {w} %" for w in ramp[:-1])
    for sc in scenarios:
        bad = bad_from[sc.name]
        note = f"worse than a margin from look {bad}" if bad else "not worse than any margin"
        print(f"\n### {sc.name}: {sc.title} ({note})\n")
        print(f"| rule | trials | {head} | PROMOTE at 100 % | HOLD | ROLLBACK | median labelled rows | false promote |")
        print("|---|---|" + "---|" * (len(ramp) - 1) + "---|---|---|---|---|")
        for r in rules:
            a = agg[sc.name][r.name]
            if not a["trials"]:
                continue
            cells = [fmt_share(a["reach"][str(w)]) for w in ramp[:-1]]
            cells += [fmt_share(a["final"][f]) for f in ("PROMOTE", "HOLD", "ROLLBACK")]
            fp = fmt_share(a["false_promote"]) if bad else "-"
            print(f"| {r.name} | {a['trials']} | " + " | ".join(cells) + f" | {a['median_rows']:,.0f} | {fp} |")
        for r in rules:
            a = agg[sc.name][r.name]
            if a["last_held_by"]:
                gates = ", ".join(f"{x['gate']} {100 * x['share']:.0f} %" for x in a["last_held_by"])
                print(f"\n{r.name}: not passing at the last look of the trials that ended held: {gates}")


def summary_metrics(agg: dict, scenarios: list[Scenario], rules: list[Rule], bad_from: dict, cfg: Config) -> dict:
    names = {s.name for s in scenarios}
    out: dict[str, dict] = {}
    for r in rules:
        m: dict[str, Any] = {}
        bad = [s for s in scenarios if bad_from[s.name] and agg[s.name][r.name]["trials"]]
        if bad:
            m["false_promote"] = {s.name: agg[s.name][r.name]["false_promote"] for s in bad}
            m["to_100"] = {s.name: agg[s.name][r.name]["final"]["PROMOTE"] for s in bad}
            worst = max(bad, key=lambda s: agg[s.name][r.name]["false_promote"]["share"] or 0)
            m["false_promote_worst"] = {"scenario": worst.name} | agg[worst.name][r.name]["false_promote"]
        if "better_1pt" in names:
            m["power"] = agg["better_1pt"][r.name]["final"]["PROMOTE"]
        if "drift_both" in names:
            m["drift_alone"] = agg["drift_both"][r.name]["drift_alone"]
        if "errors_1pct" in names:
            m["errors_rolled_back"] = agg["errors_1pct"][r.name]["final"]["ROLLBACK"]
        out[r.name] = m
    return out


#: the decision-quality targets: (label, key, sub-key, target text, test on a share)
def targets(summary: dict, rule: str, horizon: int) -> list[tuple[str, str, str | None, str, Callable[[dict], bool]]]:
    out: list[tuple[str, str, str | None, str, Callable[[dict], bool]]] = []
    m = summary[rule]
    for name in m.get("false_promote") or {}:
        if BY_NAME[name].error_rate_scenario:
            out.append(
                (
                    f"false promote (any PROMOTE from the bad look on): {name}",
                    "false_promote",
                    name,
                    "<= 1 %",
                    lambda s: s["share"] <= 0.01,
                )
            )
    if "power" in m:
        out.append(
            (
                f"power: +1 f1 point reaches 100 % within {horizon:,} labelled rows",
                "power",
                None,
                ">= 90 %",
                lambda s: s["share"] >= 0.90,
            )
        )
    if "drift_alone" in m:
        out.append(
            (
                "drift for both: held for drift alone (drift.* / after_change.* / drifted.* gates only) at some look",
                "drift_alone",
                None,
                "0 %",
                lambda s: s["k"] == 0,
            )
        )
    if "errors_rolled_back" in m:
        out.append(("1 % errors: rolled back", "errors_rolled_back", None, ">= 99 %", lambda s: s["share"] >= 0.99))
    return out


def print_summary(summary: dict, rules: list[Rule], cfg: Config, judged: str | None) -> dict:
    """The targets table (every rule's share; pass/fail for rule ``judged``) and the other worse-than-a-margin
    scenarios; returns {target label: {"pass": bool, ...share}} for ``judged``."""
    horizon = cfg.looks * cfg.slice_rows
    print("\n## Summary against the targets (% of trials [Wilson 95 %])\n")
    names = [r.name for r in rules]
    verdict_col = [f"{judged}: target met?"] if judged else []
    print("| metric | target | " + " | ".join(names + verdict_col) + " |")
    print("|---|---|" + "---|" * (len(names) + len(verdict_col)))

    def value(rule: str, key: str, sub: str | None) -> dict | None:
        v = summary[rule].get(key)
        if v is not None and sub is not None:
            v = v.get(sub)
        return v if v and v.get("n") else None

    first = judged or names[0]
    met: dict[str, dict] = {}
    for label, key, sub, target, ok in targets(summary, first, horizon):
        cells = []
        for r in names:
            v = value(r, key, sub)
            cells.append(f"{fmt_share(v)} (n={v['n']})" if v else "-")
        if judged:
            v = value(judged, key, sub)
            passed = v is not None and ok(v)
            met[label] = {"pass": passed} | (v or {})
            cells.append("**pass**" if passed else "**FAIL**")
        print(f"| {label} | {target} | " + " | ".join(cells) + " |")
    other = [n for n in summary[first].get("to_100") or {} if not BY_NAME[n].error_rate_scenario]
    if other:
        print(
            "\nOther candidates worse than a margin (should rarely get far): share of trials promoted to 100 % / "
            "any false promote\n"
        )
        print("| scenario | " + " | ".join(names) + " |")
        print("|---|" + "---|" * len(names))
        for n in other:
            cells = []
            for r in names:
                a, f = value(r, "to_100", n), value(r, "false_promote", n)
                cells.append(f"{fmt_share(a)} / {fmt_share(f)} (n={a['n']})" if a and f else "-")
            print(f"| {n} | " + " | ".join(cells) + " |")
    return met


# -- calibration (how the scenario constants were set) -----------------------------------------------------
def calibrate(rows: int = 4_000_000) -> None:
    """Re-derive the scenarios' offsets by bisection on one large sample per world (common random numbers:
    the offset only moves the candidate's logit, so each world is drawn once)."""

    def solve(f: Callable[[float], float], target: float, lo: float = -1.5, hi: float = 1.5) -> float:
        for _ in range(30):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if f(mid) < target else (lo, mid)
        return round((lo + hi) / 2, 4)

    def world(sc: Scenario) -> tuple[Callable[..., float], Paired]:
        d = generate(sc, np.random.default_rng(7).random(rows), np.random.default_rng(8))
        logit_c = np.log(d.candidate) - np.log1p(-d.candidate)  # the candidate's logit without any offset
        f1 = METRICS["f1"].compute

        def f1_delta(shift: np.ndarray | float, mask: np.ndarray | None = None) -> float:
            m = np.ones(rows, bool) if mask is None else mask
            return float(
                f1(confusion(d.y[m], (logit_c + shift)[m] >= 0)) - f1(confusion(d.y[m], d.baseline[m] >= THRESHOLD))
            )

        return f1_delta, d

    same, _ = world(Scenario("cal", "", {}))
    better, d = world(Scenario("cal", "", {}, sigma_c=BETTER_SIGMA))
    for name, tgt in (("worse_3pt", -0.03), ("worse_edge", -0.021), ("inside_margin", -0.01)):
        print(name, "shift", solve(lambda s: same(s), tgt))
    print("better_1pt / errors_1pct / slower", "shift", solve(lambda s: better(s), 0.01))
    in_d = d.segment == int(np.flatnonzero(SEGMENTS == "D")[0])
    d_shift = solve(lambda s: better(s, in_d), -0.05)
    print("segment_worse", "D", d_shift, "shift", solve(lambda s: better(np.where(in_d, d_shift, s)), 0.01))
    recent, r = world(
        Scenario("cal", "", {}, sigma_c=RECENT_SIGMA, late_sigma=SIGMA_BASELINE, late_shift=0.0, late_from=0.5)
    )
    late = r.pos >= 0.5
    print(
        "recent_worse",
        "shift",
        solve(lambda s: recent(s, ~late), 0.03),
        "late_shift",
        solve(lambda s: recent(s, late), -0.03),
    )
    drift, _ = world(Scenario("cal", "", {}, sigma_c=BETTER_SIGMA, drift_from=0.125, drift_size=0.8))
    print("drift_both", "shift", solve(lambda s: drift(s), 0.01))


# -- main ----------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--trials",
        type=int,
        default=None,
        help="trials of rule (c) per scenario whose share is a targeted error rate (default 1000; 1 with --quick)",
    )
    p.add_argument(
        "--context-trials",
        type=int,
        default=None,
        help="trials of rule (c) for scenarios whose share is no targeted error rate (default: --trials)",
    )
    p.add_argument(
        "--comparison-trials",
        type=int,
        default=None,
        help="trials of the comparison rules (a) and (b) per scenario: the first N trials (default 50; 0 with "
        "--quick, where the parity check still runs them)",
    )
    p.add_argument(
        "--trials-for",
        action="append",
        default=[],
        metavar="SCENARIO=N",
        help="trials of rule (c) for one scenario (e.g. errors_1pct=400: its trials end at the first look)",
    )
    p.add_argument("--quick", action="store_true", help="a few trials and a smaller truth sample: seconds, for CI")
    p.add_argument("--scenarios", default=None, help=f"comma-separated subset of: {', '.join(BY_NAME)}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="write every number to this JSON file")
    p.add_argument(
        "--looks", type=int, default=None, help="slices of traffic, a decision after each (default 16; 8 with --quick)"
    )
    p.add_argument(
        "--slice-rows",
        type=int,
        default=None,
        help="labelled rows per slice (default: 100,000 / --looks; a ramp of 5 steps needs at least 5 looks)",
    )
    p.add_argument(
        "--no-segments",
        action="store_true",
        help="rules (a), (b): evaluate without --segment segment (as the previous release's flow did)",
    )
    p.add_argument(
        "--policy",
        type=Path,
        default=None,
        help="the policy of every rule (default: the shipped one); e.g. a modified copy for an experiment",
    )
    p.add_argument(
        "--rule",
        action="append",
        default=[],
        metavar="NAME=SPEC",
        help="another rule: a policy file (judged as rule (c)) or module:attr (a Rule or a callable); NAME "
        "'sequential' replaces rule (c)",
    )
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument(
        "--store-trials",
        type=int,
        default=None,
        help="trials per store scenario run on both paths and compared (default 1)",
    )
    p.add_argument(
        "--store-scenarios",
        default=None,
        help="scenarios whose first trials also run on the store path (default better_1pt,errors_1pct,"
        "drift_both; better_1pt,errors_1pct with --quick)",
    )
    p.add_argument(
        "--store-looks", type=int, default=None, help="looks of the store-path trials (default --looks; 3 with --quick)"
    )
    p.add_argument(
        "--truth-rows",
        type=int,
        default=None,
        help="rows of the truth simulation per scenario (default 2,000,000; 400,000 with --quick)",
    )
    p.add_argument(
        "--regression-trials",
        type=int,
        default=None,
        help="trials of rule (c) per regression scenario whose share is a targeted error rate, under the shipped "
        "regression policy (default 200; 1 with --quick; 0: none)",
    )
    p.add_argument(
        "--regression-only", action="store_true", help="run the regression scenarios alone (not the classifier ones)"
    )
    p.add_argument("--calibrate", action="store_true", help="re-derive the scenario constants and exit")
    args = p.parse_args(argv)
    if args.looks is None:
        args.looks = 8 if args.quick else 16  # quick: every look above the evaluation's exact-bootstrap size
    if args.slice_rows is None:
        args.slice_rows = 100_000 // max(1, args.looks)
    if args.trials is None:
        args.trials = 1 if args.quick else 1000
    if args.context_trials is None:
        args.context_trials = args.trials
    if args.comparison_trials is None:
        args.comparison_trials = 0 if args.quick else 50
    if args.store_trials is None:
        args.store_trials = 1
    if args.store_looks is None:
        args.store_looks = 3 if args.quick else args.looks
    if args.store_scenarios is None:
        args.store_scenarios = "better_1pt,errors_1pct" + ("" if args.quick else ",drift_both")
    if args.truth_rows is None:
        args.truth_rows = 400_000 if args.quick else 2_000_000
    if args.regression_trials is None:
        args.regression_trials = 1 if args.quick else 200
    if min(args.trials, args.context_trials, args.looks) < 1 or args.comparison_trials < 0:
        p.error("--trials, --context-trials and --looks must be at least 1, --comparison-trials at least 0")
    if args.slice_rows * 0.2 <= 1000:
        p.error(
            "--slice-rows must exceed 5,000: drift's default reference (20 %) needs over 1,000 rows for the "
            "test the fast path reproduces"
        )
    return args


def build_rules(args: argparse.Namespace, extra: tuple[Rule, ...] = ()) -> list[Rule]:
    """(a), (b), (c) under ``--policy`` (default: the shipped one), then ``--rule`` rules and ``extra`` (one
    named ``(c) sequential``, or ``--rule sequential=SPEC``, replaces rule (c))."""
    policy = load_policy(args.policy)
    rules: list[Rule] = [
        PolicyRule("(a) fixed-horizon", policy),
        PointThresholdRule("(b) point-thresholds", policy),
        SequentialRule(SEQUENTIAL, policy),
    ]
    added: list[Rule] = []
    for item in args.rule:
        name, sep, spec = item.partition("=")
        if not sep:
            raise SystemExit(f"--rule {item}: use NAME=SPEC")
        if name == "sequential":
            name = SEQUENTIAL
        rule = load_rule(name, spec)
        added.append(rule if getattr(rule, "name", None) == name else _renamed(rule, name))
    for rule in [*added, *extra]:
        if rule.name == SEQUENTIAL:
            rules[2] = rule
        else:
            rules.append(rule)
    names = [r.name for r in rules]
    if len(set(names)) != len(names):
        raise SystemExit(f"two rules share a name: {names}")
    return rules


COMPARISON = ("(a) fixed-horizon", "(b) point-thresholds")


def _renamed(rule: Any, name: str) -> Rule:
    if dataclasses.is_dataclass(rule) and not isinstance(rule, type):
        rule = dataclasses.replace(rule, name=name)
    else:
        rule.name = name
    return rule


def main(argv: list[str] | None = None, extra_rules: tuple[Rule, ...] = ()) -> dict:
    """Run the benchmark; ``extra_rules`` join the command line's (a rule named ``(c) sequential`` replaces rule
    (c)). Returns every number that ``--json`` writes."""
    args = parse_args(argv)
    try:  # one BLAS thread per worker, also where numpy was loaded before this module set the environment
        from threadpoolctl import threadpool_limits
    except ImportError:
        return _main(args, extra_rules)
    with threadpool_limits(1):
        return _main(args, extra_rules)


def _progress(part: str, text: str) -> None:
    print(f"  fast path ({part}): {text}", file=sys.stderr, flush=True)


def regression_part(args: argparse.Namespace, cfg: Config) -> dict[str, Any]:
    """The regression scenarios under the shipped regression policy (``--regression-trials``), printed; their
    numbers for the JSON (empty when off)."""
    if args.regression_trials < 1:
        return {}
    policy = load_policy(None, "regression")
    reg = run_regression(args.regression_trials, cfg, policy, args.workers, functools.partial(_progress, "regression"))
    return {
        "policy": policy.to_dict(),
        "scenarios": {
            s.name: {"title": s.title, "mae_change": s.mae_change, "sigma_c": s.sigma_c} for s in REGRESSION_SCENARIOS
        },
        "trials": args.regression_trials,
        "results": reg,
        "targets": print_regression(reg, policy, cfg),
    }


def _main(args: argparse.Namespace, extra_rules: tuple[Rule, ...]) -> dict:
    if args.calibrate:
        calibrate()
        return {}
    if args.regression_only:
        t, mach = time.perf_counter(), machine()
        cfg = Config(looks=args.looks, slice_rows=args.slice_rows, seed=args.seed)
        print(
            f"machine: {mach['host']}, {mach['cores']} cores ({mach['cpu'] or 'cpu unknown'}), load average "
            f"{' '.join(map(str, mach['load_avg']))} at the start; walk: {cfg.looks} looks of {cfg.slice_rows:,} "
            f"labelled rows; {args.workers} worker(s)"
        )
        out = {"machine": mach, "regression": regression_part(args, cfg), "seconds": time.perf_counter() - t}
        print(f"\nwall {out['seconds']:.0f} s; load average at the end {' '.join(map(str, os.getloadavg()))}")
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(out, indent=1, default=str))
        return out
    t_start, cpu_start = time.perf_counter(), time.process_time()
    mach = machine()
    unknown = [s for s in (args.scenarios or "").split(",") if s and s not in BY_NAME]
    if unknown:
        raise SystemExit(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(BY_NAME)}")
    scenarios = list(SCENARIOS) if not args.scenarios else [BY_NAME[s] for s in args.scenarios.split(",") if s]
    trials = {sc.name: args.trials if sc.error_rate_scenario else args.context_trials for sc in scenarios}
    for item in args.trials_for:
        name, _, n = item.partition("=")
        if name not in trials or not n.isdigit() or int(n) < 1:
            raise SystemExit(f"--trials-for {item}: use SCENARIO=N with a selected scenario and N >= 1")
        trials[name] = int(n)
    rules = build_rules(args, extra_rules)
    always = tuple(r.name for r in rules if r.name not in COMPARISON)
    comparison = {name: min(args.comparison_trials, n) for name, n in trials.items()}
    policy = load_policy(args.policy)  # the margins that say which candidate is worse; the ramp
    ramp = tuple(policy.ramp)
    cfg = Config(looks=args.looks, slice_rows=args.slice_rows, seed=args.seed, segments=not args.no_segments)

    print(f"# Decision quality across the ramp {' -> '.join(map(str, (0,) + ramp))} %\n")
    print(
        f"machine: {mach['host']}, {mach['cores']} cores ({mach['cpu'] or 'cpu unknown'}), load average "
        f"{' '.join(map(str, mach['load_avg']))} at the start; Python {mach['python']}, numpy {mach['numpy']}"
    )
    print(
        f"policy: {args.policy or 'the shipped default'} (confidence {policy.confidence:g}, planned_rows "
        f"{policy.planned_rows:,}, min_segment_rows {policy.min_segment_rows:,}, recent_share "
        f"{policy.drift.recent_share})"
    )
    print(
        f"walk: {cfg.looks} looks of {cfg.slice_rows:,} labelled rows ({cfg.looks * cfg.slice_rows:,} in all), "
        f"a decision after each; rules (a), (b) on the cumulative evaluation "
        f"{'with' if cfg.segments else 'without'} segments; rule (c) on the pair's growing sample"
    )
    print(
        "trials per scenario, rule (c) [rules (a), (b)]: "
        + ", ".join(f"{k} {v:,} [{comparison[k]:,}]" for k, v in trials.items())
    )
    print("rules: " + "; ".join(r.name for r in rules))

    t = time.perf_counter()
    truths = {sc.name: truth(sc, args.truth_rows) for sc in scenarios}
    viol = {sc.name: violations(policy, truths[sc.name]) for sc in scenarios}
    bad_from = {sc.name: bad_from_look(sc, viol[sc.name], cfg.looks) for sc in scenarios}
    truth_s = time.perf_counter() - t
    print_truth(truths, scenarios, bad_from, viol)

    parity = []
    store_names = [s for s in args.store_scenarios.split(",") if s and s in {x.name for x in scenarios}]
    t = time.perf_counter()
    if args.store_trials > 0 and store_names:
        with tempfile.TemporaryDirectory(prefix="dq_store_") as tmp:
            for name in store_names:
                for trial in range(args.store_trials):
                    res = check_parity(
                        BY_NAME[name], trial, cfg, rules, ramp, Path(tmp) / f"{name}_{trial}", stop=args.store_looks
                    )
                    parity.append(res)
    store_s = time.perf_counter() - t
    if parity:
        print("\n## Fast path against the store path (same trial, same data)\n")
        print(
            f"| scenario | trial | looks | verdicts per look ({SEQUENTIAL}) | identical | largest number difference "
            "(checks / evaluation) | fast s | store s |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for p in parity:
            v = " ".join(x[0] for x in p["verdicts"][SEQUENTIAL])
            d = p["max_abs_diff_by"]
            print(
                f"| {p['scenario']} | {p['trial']} | {p['looks']} | {v} | yes, all rules | {d['checks']:.1e} / "
                f"{d['evaluation']:.1e} | {p['fast_s']} | {p['store_s']} |"
            )

    t = time.perf_counter()
    results: dict[str, list] = {}
    looks_done = 0
    for part in ("comparison", "rest"):  # the trials with every rule first, then rule (c)'s other trials
        todo = {n: (comparison[n] if part == "comparison" else trials[n] - comparison[n]) for n in trials}
        start = {n: 0 if part == "comparison" else comparison[n] for n in trials}
        res, done = run_trials(
            scenarios,
            todo,
            cfg,
            rules,
            ramp,
            bad_from,
            args.workers,
            progress=functools.partial(_progress, part),
            comparison=max(comparison.values(), default=0) if part == "comparison" else 0,
            always=always,
            start=start,
        )
        looks_done += done
        for n, rows in res.items():
            results.setdefault(n, []).extend(rows)
    fast_s = time.perf_counter() - t
    agg = {sc.name: {r.name: aggregate(results[sc.name], i, ramp) for i, r in enumerate(rules)} for sc in scenarios}
    print_tables(agg, scenarios, rules, ramp, bad_from)
    summary = summary_metrics(agg, scenarios, rules, bad_from, cfg)
    met = print_summary(summary, rules, cfg, SEQUENTIAL)

    t = time.perf_counter()
    regression = regression_part(args, cfg)
    regression_s = time.perf_counter() - t

    wall = time.perf_counter() - t_start
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = time.process_time() - cpu_start + children.ru_utime + children.ru_stime
    load_end = [round(x, 2) for x in os.getloadavg()]
    n_trials = sum(trials.values())
    print(
        f"\n{n_trials:,} fast-path trials of rule (c), {sum(comparison.values()):,} of them with rules (a) and (b) "
        f"({looks_done:,} looks) with {args.workers} worker(s); "
        f"{len(parity)} store-path trial(s) compared; wall {wall:.0f} s (truth {truth_s:.0f} s, store path "
        f"{store_s:.0f} s, fast path {fast_s:.0f} s, regression {regression_s:.0f} s), CPU {cpu:.0f} s; load "
        "average at the end "
        f"{' '.join(map(str, load_end))}"
    )
    out = {
        "machine": mach | {"load_avg_end": load_end},
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "config": {
            "looks": cfg.looks,
            "slice_rows": cfg.slice_rows,
            "seed": cfg.seed,
            "segments": cfg.segments,
            "ramp": list(ramp),
        },
        "policy": policy.to_dict(),
        "rules": [r.name for r in rules],
        "trials": {"sequential": trials, "comparison": comparison},
        "truth": truths,
        "violations": viol,
        "bad_from_look": bad_from,
        "parity": parity,
        "results": agg,
        "summary": summary,
        "targets": met,
        "regression": regression,
        "seconds": {
            "wall": wall,
            "cpu": cpu,
            "truth": truth_s,
            "store": store_s,
            "fast": fast_s,
            "regression": regression_s,
        },
        "looks_evaluated": looks_done,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1, default=str))
    return out


if __name__ == "__main__":
    main()

"""Benchmark: the multi-class verdict's error rates across the whole canary ramp, on synthetic paired traffic with
known truth (the multi-class scenarios of the decision-quality benchmark, ``benchmarks/decision_quality.py``).

    python benchmarks/decision_quality_multiclass.py [--trials 200] [--looks 16] [--slice-rows 6250] [--seed 0]
        [--truth-rows 1000000] [--quick] [--json PATH]

Known truth: three features, three classes drawn from a multinomial logistic model of them, and two models
whose class probabilities are the softmax of the true logits plus noise both share and their own noise; the
candidate's own noise and a logit offset per class set its quality. Each run measures every scenario's true
deltas (macro_f1, accuracy, log_loss) on a huge sample and prints them with the shipped multi-class policy's
margins the truth violates.

The rule is the shipped default multi-class policy (``workbench/decide/default_multiclass_policy.toml``) as the
library judges a run: after each slice of ``--slice-rows`` labelled rows, a :class:`~workbench.decide.evidence.
Sample` of the cumulative rows (the predicted class and the probability each model gave the true class),
``build_evidence`` (anytime-valid one-sided bounds of each gate metric's per-request influence, overall and on
the recent window), ``score``, and the new-evidence rule; PROMOTE moves the canary weight one ramp step, ROLLBACK
ends the walk at 0, and so does reaching 100 %. Replay is shadow, so the evidence does not depend on the weight.

Targets, as the binary scenarios': false promote (any PROMOTE that moves the weight of a candidate worse than a
margin) <= 1 %, and power (the better candidate reaches 100 % within the walk's labelled rows) >= 90 %.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workbench.decide.canary import next_weight  # noqa: E402
from workbench.decide.evidence import Sample, build_evidence  # noqa: E402
from workbench.decide.judge import new_evidence_check  # noqa: E402
from workbench.decide.policy import Policy, Verdict, load_policy  # noqa: E402
from workbench.decide.scorecard import score, with_check  # noqa: E402
from workbench.evaluate import stats  # noqa: E402
from workbench.evaluate.multiclass import multiclass_confusion, multiclass_metrics  # noqa: E402
from workbench.tasks import MULTICLASS  # noqa: E402

CLASSES = ("a", "b", "c")
WEIGHTS = np.array([[1.4, 0.0, -1.4], [-0.6, 1.2, -0.6], [0.3, -0.5, 0.2]])  # features x classes
INTERCEPTS = np.array([0.6, 0.0, -0.6])  # class shares about 46 / 30 / 24 %
SIGMA_SHARED = 0.5  # logit noise both models share (what neither model knows)
SIGMA_BASELINE = 1.0  # the baseline's own logit noise
SECONDS_PER_ROW = 6
T0 = np.datetime64("2026-01-01T00:00:00", "us")


@dataclass(frozen=True)
class Scenario:
    """A candidate with known truth: its own logit noise ``sigma_c`` and a logit offset per class ``shift``."""

    name: str
    title: str
    sigma_c: float = SIGMA_BASELINE
    shift: tuple[float, float, float] = (0.0, 0.0, 0.0)


SCENARIOS = (
    Scenario("identical", "same model quality as the baseline (independent noise)"),
    Scenario(
        "worse_macro_f1", "class c under-predicted: macro_f1 about -0.03, past the 0.02 margin", shift=(0, 0, -1.2)
    ),
    Scenario("better", "less noise: macro_f1 about +0.02, log loss about -7 %", sigma_c=0.8),
)
BY_NAME = {s.name: s for s in SCENARIOS}


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def generate(sc: Scenario, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` labelled rows: the classes (0..2) and each model's class probabilities (n x 3)."""
    logits = rng.standard_normal((n, 3)) @ WEIGHTS + INTERCEPTS
    y = (rng.random(n)[:, None] > _softmax(logits).cumsum(axis=1)).sum(axis=1).clip(0, 2)
    z = rng.standard_normal((3, n, 3))
    seen = logits + SIGMA_SHARED * z[0]
    baseline = _softmax(seen + SIGMA_BASELINE * z[1])
    candidate = _softmax(seen + sc.sigma_c * z[2] + np.asarray(sc.shift))
    return y, baseline, candidate


def values(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """The gated metrics of one model: macro_f1, accuracy and log_loss."""
    m = multiclass_metrics(multiclass_confusion(y, p.argmax(axis=1), 3))
    log_loss = float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-15, 1)).mean())
    return {"macro_f1": float(m["macro_f1"]), "accuracy": float(m["accuracy"]), "log_loss": log_loss}


def truth(sc: Scenario, rows: int, seed: int) -> dict[str, Any]:
    """Both models' true values and the candidate's deltas on ``rows`` rows."""
    y, b, c = generate(sc, rows, np.random.default_rng([seed, zlib.crc32(sc.name.encode())]))
    vb, vc = values(y, b), values(y, c)
    return {"rows": rows, "baseline": vb, "delta": {k: vc[k] - vb[k] for k in vb}}


def violations(policy: Policy, t: dict) -> list[str]:
    """The policy's metric margins the true candidate violates."""
    out = []
    for g in policy.metrics:
        delta, base, up = t["delta"][g.metric], t["baseline"][g.metric], g.better_up
        for bound in (
            g.min_absolute_change,
            None if g.min_relative_change is None else abs(base) * g.min_relative_change,
        ):
            if bound is None:
                continue
            worst = bound if up else -bound
            if (delta < worst) if up else (delta > worst):
                out.append(f"{g.metric} {delta:+.4f} past {worst:+.4f}")
    return out


class _Sample(Sample):
    """A sample whose record citation skips the per-row label digest (nothing is signed here)."""

    def cite(self) -> dict[str, Any]:
        return {"runs": [], "rows": len(self), "labelled_rows": int(self.labelled().sum())}


def sample_of(y: np.ndarray, b: np.ndarray, c: np.ndarray) -> Sample:
    """The pair's growing sample as ``Sample.from_tables`` gathers a multi-class run's: per model the predicted
    class and the probability it gave the true class; one request every ``SECONDS_PER_ROW`` s."""
    n = len(y)
    rows = np.arange(n)
    base, cand = (np.column_stack([p.argmax(axis=1), p[rows, y]]).astype(np.float64) for p in (b, c))
    return _Sample(
        rows,
        T0 + rows * np.timedelta64(SECONDS_PER_ROW, "s"),
        y.astype(np.float64),
        base,
        cand,
        np.zeros(n, bool),
        np.zeros(n, bool),
        np.ones(n),
        np.ones(n),
        task=MULTICLASS,
        classes=CLASSES,
    )


def walk(policy: Policy, sc: Scenario, trial: int, looks: int, slice_rows: int, seed: int) -> list[dict]:
    """One trial's walk up the ramp: each look's verdict and weights."""
    rng = np.random.default_rng([seed, zlib.crc32(sc.name.encode()), trial])
    y, b, c = generate(sc, looks * slice_rows, rng)
    ramp, weight, steps = policy.ramp, 0, []
    earlier: dict | None = None
    for k in range(1, looks + 1):
        n = k * slice_rows
        evidence = build_evidence(sample_of(y[:n], b[:n], c[:n]), policy)
        rows = int(evidence["labeled_rows"])
        card = with_check(score(policy, evidence), new_evidence_check(rows, earlier))
        after = next_weight(card.verdict, weight, ramp)
        steps.append({"look": k, "rows": rows, "verdict": str(card.verdict), "before": weight, "after": after})
        if card.verdict == Verdict.PROMOTE and after > weight:
            earlier = {"decision_id": f"look {k}", "evidence": {"labelled_rows": rows}}
        weight = after
        if card.verdict == Verdict.ROLLBACK or weight == ramp[-1]:
            break
    return steps


def share(k: int, n: int) -> dict[str, Any]:
    lo, hi = stats.wilson(k, n, 0.95) or (None, None)
    return {"k": k, "n": n, "share": k / n if n else None, "ci_low": lo, "ci_high": hi}


def fmt(s: dict) -> str:
    return f"{s['share']:.1%} [{s['ci_low']:.1%}, {s['ci_high']:.1%}] ({s['k']}/{s['n']})"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=None, help="trials per scenario (default 200; 2 with --quick)")
    p.add_argument("--looks", type=int, default=16, help="slices of traffic, a decision after each")
    p.add_argument("--slice-rows", type=int, default=6_250, help="labelled rows per slice")
    p.add_argument("--truth-rows", type=int, default=None, help="rows of the truth sample (default 1,000,000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a few trials and a smaller truth sample: seconds, for CI")
    p.add_argument("--json", default=None, help="also write the results here")
    a = p.parse_args(argv)
    trials = a.trials or (2 if a.quick else 200)
    truth_rows = a.truth_rows or (200_000 if a.quick else 1_000_000)
    policy = load_policy(task=MULTICLASS)
    started = time.perf_counter()
    out: dict[str, Any] = {"policy": policy.name, "looks": a.looks, "slice_rows": a.slice_rows, "trials": trials}
    print(
        f"# Multi-class decision quality: policy {policy.name}, {trials} trials per scenario, {a.looks} looks of "
        f"{a.slice_rows:,} labelled rows\n"
    )
    print(
        "| scenario | true deltas (macro_f1, accuracy, log_loss) | margins violated | false promote | "
        "reached 100 % | ended HOLD | ended ROLLBACK | median rows at the end |"
    )
    print("|---|---|---|---|---|---|---|---|")
    out["scenarios"] = {}
    for sc in SCENARIOS:
        t = truth(sc, truth_rows, a.seed)
        bad = violations(policy, t)
        walks = [walk(policy, sc, i, a.looks, a.slice_rows, a.seed) for i in range(trials)]
        promoted = sum(any(s["after"] > s["before"] for s in w) for w in walks)
        full = sum(w[-1]["after"] == policy.ramp[-1] for w in walks)
        held = sum(w[-1]["verdict"] == Verdict.HOLD for w in walks)
        rolled = sum(w[-1]["verdict"] == Verdict.ROLLBACK for w in walks)
        rows = float(np.median([w[-1]["rows"] for w in walks]))
        r: dict[str, Any] = {
            "truth": t,
            "violations": bad,
            "false_promote": share(promoted, trials) if bad else None,
            "reached_100": share(full, trials),
            "held": share(held, trials),
            "rolled_back": share(rolled, trials),
            "median_rows": rows,
        }
        out["scenarios"][sc.name] = r
        d = t["delta"]
        print(
            f"| {sc.name} | {d['macro_f1']:+.4f}, {d['accuracy']:+.4f}, {d['log_loss']:+.4f} | "
            f"{'; '.join(bad) or 'none'} | {fmt(r['false_promote']) if bad else '-'} | {fmt(r['reached_100'])} | "
            f"{fmt(r['held'])} | {fmt(r['rolled_back'])} | {rows:,.0f} |"
        )
    fp, power = out["scenarios"]["worse_macro_f1"]["false_promote"], out["scenarios"]["better"]["reached_100"]
    out["targets"] = {
        "false promote <= 1 %": {"pass": fp is not None and fp["share"] <= 0.01, **(fp or {})},
        f"power >= 90 % within {a.looks * a.slice_rows:,} rows": {"pass": power["share"] >= 0.90, **power},
    }
    print("\n## Summary against the targets\n")
    for name, v in out["targets"].items():
        print(f"- {name}: {fmt(v)} -> {'pass' if v['pass'] else 'FAIL'}")
    out["machine"] = {"host": platform.node(), "cpus": os.cpu_count(), "load": os.getloadavg()}
    out["seconds"] = round(time.perf_counter() - started, 1)
    print(f"\n{out['seconds']} s on {platform.node()} ({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f})")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2, default=str))
    return out


if __name__ == "__main__":
    main()

"""The live SLO: per-arm sliding windows of request outcomes, and the judgement that rolls a candidate back.

Pure computation: the router feeds :class:`ArmWindow` with (time, latency, error) per answered request and
calls :func:`judge` every ``check_interval_s``; the thresholds come from the policy's ``[live]`` section
(:class:`workbench.decide.policy.LiveOptions`). Checks use the policy's vocabulary
(:class:`workbench.decide.scorecard.Check`) so a live rollback's record carries them like an offline scorecard.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import norm

from workbench.decide.policy import LiveOptions, Outcome, Verdict
from workbench.decide.scorecard import Check, Interval


def wilson(errors: int, n: int, confidence: float) -> tuple[float, float]:
    """Wilson score interval of a proportion (as statsmodels' ``proportion_confint(method="wilson")``)."""
    if n == 0:
        return 0.0, 1.0
    z = float(norm.ppf(1 - (1 - confidence) / 2))
    p = errors / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, float(centre - half)), min(1.0, float(centre + half))


@dataclass(frozen=True)
class ArmStats:
    """One arm's outcomes over the window (latency percentiles in ms; None without requests)."""

    arm: str
    requests: int
    errors: int
    error_rate: float | None
    error_ci_low: float | None
    error_ci_high: float | None
    p50_ms: float | None
    p99_ms: float | None

    def to_dict(self) -> dict:
        return asdict(self)


class ArmWindow:
    """Outcomes of one arm in the last ``window_s`` seconds (time from a monotonic clock)."""

    def __init__(self, arm: str, window_s: float):
        self.arm, self.window_s = arm, window_s
        self._events: deque[tuple[float, float, bool]] = deque()

    def add(self, t: float, latency_ms: float, error: bool) -> None:
        """Count an outcome at ``t``, forgetting those older than the window (bounded memory even when nothing
        reads the window: weight 0, or no automated rollback)."""
        ev = self._events
        ev.append((t, latency_ms, error))
        cutoff = t - self.window_s
        while ev[0][0] < cutoff:
            ev.popleft()

    def clear(self) -> None:
        self._events.clear()

    def trim(self, now: float) -> None:
        """Forget outcomes older than the window."""
        cutoff = now - self.window_s
        ev = self._events
        while ev and ev[0][0] < cutoff:
            ev.popleft()

    def stats(self, now: float, confidence: float) -> ArmStats:
        self.trim(now)
        n = len(self._events)
        if n == 0:
            return ArmStats(self.arm, 0, 0, None, None, None, None, None)
        lat = np.fromiter((e[1] for e in self._events), dtype=np.float64, count=n)
        errors = sum(1 for e in self._events if e[2])
        low, high = wilson(errors, n, confidence)
        p50, p99 = np.percentile(lat, [50, 99])
        return ArmStats(self.arm, n, errors, errors / n, low, high, float(p50), float(p99))


@dataclass(frozen=True)
class SloReport:
    """The judgement of one check: whether the candidate breached, the checks and the numbers behind it."""

    breached: bool
    reason: str
    checks: tuple[Check, ...]
    stats: dict[str, ArmStats]
    window_s: float

    def scorecard(self) -> dict:
        """The checks as a scorecard dict (as :meth:`workbench.decide.scorecard.Scorecard.to_dict`), for the signed
        record."""
        counts = {o: sum(c.outcome == o for c in self.checks) for o in Outcome}
        return {
            "verdict": Verdict.ROLLBACK if self.breached else Verdict.PROMOTE,
            "reason": self.reason,
            "counts": counts,
            "checks": [c.to_dict() for c in self.checks],
            "skipped": [],
            "live": {"window_s": self.window_s, "arms": {a: s.to_dict() for a, s in self.stats.items()}},
        }

    def to_dict(self) -> dict:
        return {
            "breached": self.breached,
            "reason": self.reason,
            "window_s": self.window_s,
            "checks": [c.to_dict() for c in self.checks],
            "arms": {a: s.to_dict() for a, s in self.stats.items()},
        }


def _ms(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f} ms"


def _p99_check(
    criterion: str,
    threshold: float,
    bound_ms: float,
    bound_text: str,
    base_p99: float | None,
    cand_p99: float,
    delta: Interval | None = None,
) -> Check:
    """The critical live latency check ``live.latency.p99.<criterion>``: the candidate's p99 fails above
    ``bound_ms`` (``bound_text`` in the reason)."""
    failed = cand_p99 > bound_ms
    return Check(
        gate=f"live.latency.p99.{criterion}",
        kind="latency",
        metric="latency_p99_ms",
        criterion=criterion,
        threshold=threshold,
        baseline=base_p99,
        candidate=cand_p99,
        delta=delta,
        outcome=Outcome.FAIL if failed else Outcome.PASS,
        critical=True,
        reason=f"candidate p99 {_ms(cand_p99)} {'>' if failed else '<='} {bound_text}",
    )


def judge(live: LiveOptions, stats: dict[str, ArmStats], confidence: float) -> SloReport:
    """Judge the candidate's window against the live SLO; too few requests is never a breach."""
    cand, base = stats["candidate"], stats["baseline"]
    if cand.requests < live.min_requests:
        return SloReport(
            False,
            f"candidate has {cand.requests} requests in the last {live.window_s:g} s, "
            f"fewer than min_requests {live.min_requests}: not judged",
            (),
            stats,
            live.window_s,
        )
    if cand.error_ci_low is None or cand.p99_ms is None:
        raise ValueError(f"candidate stats with {cand.requests} requests lack the error interval or p99 latency")
    checks = []
    rate = Interval(cand.error_rate, cand.error_ci_low, cand.error_ci_high)
    failed = cand.error_ci_low > live.max_error_rate
    checks.append(
        Check(
            gate="live.errors.max_rate",
            kind="errors",
            metric="error_rate",
            criterion="max_rate",
            threshold=live.max_error_rate,
            baseline=base.error_rate,
            candidate=cand.error_rate,
            delta=rate,
            outcome=Outcome.FAIL if failed else Outcome.PASS,
            critical=True,
            reason=f"candidate error rate {rate.text()} ({cand.errors} errors in {cand.requests} requests, "
            f"{confidence:.0%} Wilson) "
            + ("whole interval > " if failed else "not surely > ")
            + f"{live.max_error_rate:g}",
        )
    )
    if live.max_p99_ms is not None:
        checks.append(
            _p99_check("max_ms", live.max_p99_ms, live.max_p99_ms, f"{live.max_p99_ms:g} ms", base.p99_ms, cand.p99_ms)
        )
    if live.max_p99_ratio is not None and base.requests >= live.min_requests and base.p99_ms is not None:
        bound, text = live.max_p99_ratio * base.p99_ms, f"{live.max_p99_ratio:g}x baseline p99 {_ms(base.p99_ms)}"
        checks.append(
            _p99_check(
                "max_ratio",
                live.max_p99_ratio,
                bound,
                text,
                base.p99_ms,
                cand.p99_ms,
                Interval(cand.p99_ms - base.p99_ms),
            )
        )
    bad = [c for c in checks if c.outcome == Outcome.FAIL]
    head = f"over the last {live.window_s:g} s (candidate {cand.requests} requests, baseline {base.requests})"
    if bad:
        return SloReport(True, f"{'; '.join(c.reason for c in bad)} {head}", tuple(checks), stats, live.window_s)
    return SloReport(False, f"within the live SLO {head}", tuple(checks), stats, live.window_s)

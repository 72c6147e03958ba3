"""The value objects a scorecard is made of: an :class:`Interval`, a judged :class:`Check`, a :class:`Skipped` gate."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from workbench.decide.policy import Outcome


@dataclass(frozen=True)
class Interval:
    """A value and its bounds: ``ci_low``/``ci_high`` decide a pass, ``fail_low``/``fail_high`` (when set) a
    failure; a missing bound is unbounded on that side."""

    value: float | None
    ci_low: float | None = None
    ci_high: float | None = None
    fail_low: float | None = None
    fail_high: float | None = None

    @property
    def bounded(self) -> bool:
        return self.ci_low is not None or self.ci_high is not None

    def text(self, signed: bool = False) -> str:
        f = _sfmt if signed else _fmt
        if not self.bounded:
            return f(self.value)
        lo = "-inf" if self.ci_low is None else f(self.ci_low)
        hi = "+inf" if self.ci_high is None else f(self.ci_high)
        return f"{f(self.value)} [{lo}, {hi}]"


@dataclass(frozen=True)
class Check:
    """One judged criterion: the numbers behind it, its outcome and a one-line reason. ``rows``: the labelled
    (or scored) rows it judged; ``bound``: which bound (``"sequential"``: anytime-valid); ``settle_rows``: for
    an inconclusive check, about how many more labelled rows would settle it at the observed effect."""

    gate: str
    kind: str
    metric: str
    criterion: str
    threshold: float | None
    baseline: float | None
    candidate: float | None
    delta: Interval | None
    outcome: Outcome
    critical: bool
    reason: str
    segment: str | None = None
    rows: int | None = None
    bound: str | None = None
    settle_rows: int | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["delta"] = asdict(self.delta) if self.delta else None
        return d


@dataclass(frozen=True)
class Skipped:
    """A gate that was not judged, and why (no drift report, a segment too small, batch-amortized latency)."""

    gate: str
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def _fmt(x: float | None) -> str:
    return "undefined" if x is None else f"{x:.4g}"


def _sfmt(x: float | None) -> str:
    return "undefined" if x is None else f"{x:+.4g}"

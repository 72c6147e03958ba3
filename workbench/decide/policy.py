"""The decision policy: a strictly validated file of gates and the outcomes and verdicts they speak in.

Judging a policy on an evaluation (the scorecard and its verdict) lives in :mod:`workbench.decide.scorecard`.

Gates use MLflow's ``MetricThreshold`` vocabulary (``threshold``, ``min_absolute_change``,
``min_relative_change``, ``higher_is_better``) and are judged on interval bounds, not point estimates:
a gate passes when the whole confidence interval meets it, fails when the whole interval misses it,
and is inconclusive when the interval straddles the bound. As in Kayenta, a failing ``critical`` gate
forces ROLLBACK; any other failure or an inconclusive check holds the ramp; all passing promotes.

The scorecard reads these fields of the evaluation dict (``workbench evaluate --json``): ``labeled_rows``,
``confidence``, ``baseline``/``candidate``/``delta`` per metric, ``latency``, ``errors``, ``segments``;
and of the drift dict (``workbench drift --json``): ``share_drifted``, ``features.*.drifted``,
``prediction_drift`` (``drifted`` flags), ``concept_drift.detected``/``change_point``.
"""

from __future__ import annotations

import json
import tomllib
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from workbench import WorkbenchError
from workbench.decide.signing import content_hash
from workbench.evaluate.metrics import METRICS
from workbench.evaluate.multiclass import GATE_AVERAGES, GATE_PER_CLASS
from workbench.evaluate.multiclass import is_gate_metric as is_multiclass_gate
from workbench.evaluate.regression import GATE_METRICS, REGRESSION_METRICS, is_gate_metric
from workbench.evaluate.resources import DEFAULT_PRICES

DEFAULT_POLICY = "default_policy.toml"
DEFAULT_POLICIES = {
    "binary": DEFAULT_POLICY,
    "regression": "default_regression_policy.toml",
    "multiclass": "default_multiclass_policy.toml",
}  # shipped, per task


class Outcome(StrEnum):
    """A check's outcome; JSON, records and reports carry its value (``"pass"``, ``"fail"``, ``"inconclusive"``)."""

    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


class Verdict(StrEnum):
    """A decision's verdict; JSON, records and MLflow tags carry its value. PROMOTE moves the canary one ramp
    step up, HOLD keeps its weight, ROLLBACK sets it to 0 (:func:`workbench.decide.canary.next_weight`)."""

    PROMOTE = "PROMOTE"
    HOLD = "HOLD"
    ROLLBACK = "ROLLBACK"


# -- the policy file --------------------------------------------------------------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class MetricGate(_Strict):
    """A quality gate on one metric (MLflow ``MetricThreshold`` vocabulary).

    ``min_absolute_change``/``min_relative_change`` are the change the candidate must reach in the
    better direction; a negative value is the largest tolerated degradation (non-inferiority margin).
    A binary classifier's metric (accuracy, roc_auc, ...) gates binary runs; ``mae``, ``mse`` and ``rmse``
    (lower is better: ``min_relative_change = -0.02`` lets the MAE rise by at most 2 %) gate regression runs, and
    for models that predict quantiles ``pinball`` (the pinball loss averaged over the run's levels), ``pinball@q``
    (one level's, e.g. ``pinball@0.9``) and ``coverage`` (of the central interval the levels hold, e.g. 0.1 and 0.9;
    higher is better unless ``higher_is_better = false``: ``min_absolute_change = -0.02`` lets it drop by at most
    two points);
    ``accuracy``, ``log_loss``, ``macro_precision``, ``macro_recall``, ``macro_f1`` and one class's
    ``precision[CLASS]``, ``recall[CLASS]`` or ``f1[CLASS]`` (``recall[late]``: the recall of class ``late``)
    gate multi-class runs.
    """

    metric: str
    threshold: float | None = None
    min_absolute_change: float | None = None
    min_relative_change: float | None = None
    higher_is_better: bool | None = None
    critical: bool = False

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, v: str) -> str:
        if v not in METRICS and not is_gate_metric(v) and not is_multiclass_gate(v):
            known = [*METRICS, *GATE_METRICS, "pinball@q", *GATE_AVERAGES, *(f"{m}[CLASS]" for m in GATE_PER_CLASS)]
            raise ValueError(f"unknown metric {v!r} (known: {', '.join(dict.fromkeys(known))})")
        return v

    @model_validator(mode="after")
    def _has_criterion(self):
        if self.threshold is None and self.min_absolute_change is None and self.min_relative_change is None:
            raise ValueError("set at least one of threshold, min_absolute_change, min_relative_change")
        return self

    @property
    def better_up(self) -> bool:
        if self.higher_is_better is not None:
            return self.higher_is_better
        if is_gate_metric(self.metric):  # coverage has no direction of its own: too little coverage is the risk
            return REGRESSION_METRICS[self.metric.split("@")[0]].higher_is_better is not False
        if self.metric in METRICS:
            return METRICS[self.metric].higher_is_better
        return True  # the multi-class averages and per-class metrics

    @property
    def tasks(self) -> set[str]:
        """The tasks whose runs this gate's metric judges (accuracy and log loss: binary and multi-class runs)."""
        if is_gate_metric(self.metric):
            return {"regression"}
        return ({"binary"} if self.metric in METRICS else set()) | (
            {"multiclass"} if is_multiclass_gate(self.metric) else set()
        )


#: what a slice gate (a segment, the recent window, the rows after a change point) requires: ``"no_harm"``
#: blocks only when the slice is surely worse than the margin (a harm test, Bonferroni-corrected across
#: segments); ``"non_inferiority"`` also holds while the slice is not yet shown non-inferior.
SliceRule = Literal["no_harm", "non_inferiority"]


class SegmentGate(MetricGate):
    """A metric gate applied to every segment of ``column`` (``"*"``: every declared segment column)."""

    column: str = "*"
    require: SliceRule = "no_harm"


class LatencyGate(_Strict):
    """Candidate per-request latency at ``percentile``: at most ``max_ratio`` x the baseline's and/or ``max_ms``.

    Judged on anytime-valid bounds of each model's percentile, from online replays (one request at a time);
    a difference below ``min_ms_change`` never fails the ratio. Throughput replays amortize a batch's time over
    its rows, which says nothing about a request's latency: they are not judged unless ``judge_batch``.
    """

    percentile: Literal["p50", "p95", "p99"] = "p99"
    max_ratio: float | None = Field(default=None, gt=0)
    max_ms: float | None = Field(default=None, gt=0)
    min_ms_change: float = Field(default=1.0, ge=0)
    judge_batch: bool = False
    critical: bool = False

    @model_validator(mode="after")
    def _has_criterion(self):
        if self.max_ratio is None and self.max_ms is None:
            raise ValueError("set max_ratio and/or max_ms")
        return self


class ErrorGate(_Strict):
    """The candidate's error rate (exceptions, non-finite scores) must stay at or below ``max_rate``."""

    max_rate: float = Field(default=0.001, ge=0, le=1)
    critical: bool = True


class ResourceGate(_Strict):
    """What the candidate may cost to run, as the replays measured it (:mod:`workbench.replay.resources`): at most
    ``max_ratio`` x the baseline's ``metric`` (a difference of at most ``min_change`` never fails it) and/or at most
    ``max_value`` in the metric's unit. Judged on the pair's runs' measurements (the median over the runs that have
    them): a measurement, not a statistical bound. ``gpu_*`` gates are skipped when no model ran on a GPU."""

    metric: Literal[
        "load_s", "cold_start_s", "artifact_mb", "rss_mb", "cpu_s_per_1k", "gpu_peak_mb", "gpu_busy_share",
        "cost_per_million",
    ]  # fmt: skip
    max_ratio: float | None = Field(default=None, gt=0)
    max_value: float | None = Field(default=None, ge=0)
    min_change: float = Field(default=0.0, ge=0)
    critical: bool = False

    @model_validator(mode="after")
    def _has_criterion(self):
        if self.max_ratio is None and self.max_value is None:
            raise ValueError("set max_ratio and/or max_value")
        return self


class Prices(_Strict):
    """USD per CPU-hour, GPU-hour and GB-hour of memory: what turns the measured resources into a cost per million
    requests (:mod:`workbench.evaluate.resources`)."""

    cpu_hour: float = Field(default=DEFAULT_PRICES["cpu_hour"], ge=0)
    gpu_hour: float = Field(default=DEFAULT_PRICES["gpu_hour"], ge=0)
    memory_gb_hour: float = Field(default=DEFAULT_PRICES["memory_gb_hour"], ge=0)


_RETIRED_DRIFT_KEYS = ("max_share_drifted", "prediction_drift", "concept_drift")


class WhereMoved(_Strict):
    """Where the data moved: the metric gates are judged again on the most recent labelled time, after the
    latest change point the drift report found, and on the bins of each feature the report found drifted.
    Drift itself is context in the scorecard, never a failure.

    ``recent_share``: the latest share of the evidence's labelled time span (None: no recent-window gates);
    ``require``: what the recent-window gates demand (see :data:`SliceRule`); ``after_change_point``: judge
    the rows after the report's latest change point; ``drifted_slices``: judge each bin of every drifted
    feature (``slice_bins`` quantile bins of a numeric feature, each value of a categorical one);
    ``slices_require``: what the change-point and drifted-feature gates demand (those slices can be
    arbitrarily small, so the default is a harm test, Bonferroni-corrected across the bins judged);
    ``required``: hold while the run has no drift report.
    """

    required: bool = False
    recent_share: float | None = Field(default=0.2, gt=0, lt=1)
    require: SliceRule = "non_inferiority"
    after_change_point: bool = True
    drifted_slices: bool = True
    slice_bins: int = Field(default=4, ge=2, le=20)
    slices_require: SliceRule = "no_harm"

    @model_validator(mode="before")
    @classmethod
    def _retired(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in _RETIRED_DRIFT_KEYS:
                if key in data:
                    raise ValueError(
                        f"{key} is no longer a gate: drift that both models see is context in the scorecard; "
                        "the candidate is gated where the data moved (recent_share, after_change_point)"
                    )
        return data


class RegistryOptions(_Strict):
    experiment: str = Field(default="canary-decisions", min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")
    champion_alias: str = "champion"
    previous_alias: str = "previous"
    stage_transitions: bool = False


class LiveSegment(_Strict):
    """Live requests whose header (or body field) has one of ``values`` go to ``arm`` while the canary is live
    (e.g. internal users first); the first matching segment wins."""

    name: str
    header: str | None = None
    field: str | None = None
    values: tuple[str, ...] = Field(min_length=1)
    arm: Literal["candidate", "baseline"] = "candidate"

    @model_validator(mode="after")
    def _one_source(self):
        if (self.header is None) == (self.field is None):
            raise ValueError("set exactly one of header, field")
        return self


class LiveOptions(_Strict):
    """The live SLO the router watches per arm over a sliding window, and its segment rules.

    The candidate breaches when its window holds at least ``min_requests`` and its error rate is surely
    above ``max_error_rate`` (the Wilson interval's lower bound at the policy's confidence), or its P99
    latency exceeds ``max_p99_ms``, or ``max_p99_ratio`` x the baseline's P99 in the same window.
    """

    window_s: float = Field(default=30.0, gt=0)
    min_requests: int = Field(default=20, ge=1)
    max_error_rate: float = Field(default=0.01, ge=0, lt=1)
    max_p99_ms: float | None = Field(default=500.0, gt=0)
    max_p99_ratio: float | None = Field(default=None, gt=0)
    check_interval_s: float = Field(default=0.5, gt=0)
    segments: tuple[LiveSegment, ...] = ()


class Approvals(_Strict):
    """How many distinct approvers a PROMOTE that moves the weight needs, the signer of the decision included:
    ``quorum`` for every step, ``quorum_at`` for the steps that need another number (e.g. ``{100 = 2}``: the
    step to 100 % takes a second approver). Until the quorum has signed, the decision awaits approval and the
    weight stays."""

    quorum: int = Field(default=1, ge=1, le=20)
    quorum_at: dict[int, int] = Field(default_factory=dict)

    @field_validator("quorum_at")
    @classmethod
    def _valid_steps(cls, v: dict[int, int]) -> dict[int, int]:
        bad = [w for w in v if not 1 <= w <= 100]
        if bad:
            raise ValueError(f"quorum_at keys are weights in 1..100, not {bad[0]}")
        low = [n for n in v.values() if not 1 <= n <= 20]
        if low:
            raise ValueError(f"quorum_at values are approver counts in 1..20, not {low[0]}")
        return dict(sorted(v.items()))

    def quorum_for(self, weight: int) -> int:
        """The approvers a PROMOTE to ``weight`` percent needs."""
        return self.quorum_at.get(int(weight), self.quorum)


class Policy(_Strict):
    name: str = "default"
    confidence: float = Field(default=0.99, gt=0, lt=1)
    planned_rows: int = Field(default=100_000, ge=1)
    min_labeled_rows: int = Field(default=1000, ge=0)
    min_segment_rows: int = Field(default=1000, ge=1)
    segment_columns: tuple[str, ...] = ()
    max_age_hours: float = Field(default=24.0, gt=0, le=24 * 365)
    ramp: tuple[int, ...] = (1, 5, 25, 50, 100)
    metrics: tuple[MetricGate, ...] = ()
    segments: tuple[SegmentGate, ...] = ()
    latency: tuple[LatencyGate, ...] = ()
    resources: tuple[ResourceGate, ...] = ()
    prices: Prices | None = None  # optional: DEFAULT_PRICES when absent
    errors: ErrorGate = ErrorGate()
    drift: WhereMoved = WhereMoved()
    registry: RegistryOptions = RegistryOptions()
    live: LiveOptions | None = None  # optional: the router then uses LiveOptions' defaults
    approvals: Approvals = Approvals()

    @property
    def alpha(self) -> float:
        """The error rate each one-sided decision bound allows: 1 - ``confidence``."""
        return 1.0 - self.confidence

    @model_validator(mode="after")
    def _one_task(self):
        if not self.tasks:
            raise ValueError(
                "metric and segment gates name metrics of different tasks (binary classifiers, regression "
                "models, multi-class classifiers): a policy judges runs of one task"
            )
        return self

    @property
    def tasks(self) -> set[str]:
        """The tasks whose runs every metric and segment gate can judge (all three when it has none)."""
        out = {"binary", "regression", "multiclass"}
        for g in (*self.metrics, *self.segments):
            out &= g.tasks
        return out

    def check_task(self, task: str, run_id: str) -> None:
        """Refuse to judge a run of ``task`` with gates on another task's metrics."""
        if task not in self.tasks:
            names = ", ".join(dict.fromkeys(g.metric for g in (*self.metrics, *self.segments)))
            raise WorkbenchError(
                f"policy {self.name!r} gates {' or '.join(sorted(self.tasks))} metrics ({names}) but run {run_id} "
                f"is a {task} run: "
                f"decide it under a policy with {task} gates, e.g. the shipped {DEFAULT_POLICIES.get(task, '?')} "
                "(the default for such runs without --policy)"
            )

    @field_validator("ramp")
    @classmethod
    def _valid_ramp(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or any(not 1 <= w <= 100 for w in v) or list(v) != sorted(set(v)) or v[-1] != 100:
            raise ValueError(
                "ramp must be strictly increasing percents in 1..100 ending at 100, e.g. [1, 5, 25, 50, 100]"
            )
        return v

    @model_validator(mode="after")
    def _quorum_on_the_ramp(self):
        off = [w for w in self.approvals.quorum_at if w not in self.ramp]
        if off:
            raise ValueError(
                f"approvals.quorum_at names weight {off[0]}, which is not a step of the ramp {list(self.ramp)}"
            )
        return self

    def to_dict(self) -> dict:
        d = self.model_dump(mode="json")
        # a policy without the optional sections hashes as it did before the sections existed
        for key in ("live", "prices"):
            if getattr(self, key) is None:
                del d[key]
        if not self.resources:
            del d["resources"]
        if self.approvals == Approvals():
            del d["approvals"]
        return d

    @property
    def price_list(self) -> dict[str, float]:
        """The prices resource costs are computed with (the defaults when the policy has no ``[prices]``)."""
        return (self.prices or Prices()).model_dump()

    @property
    def live_options(self) -> LiveOptions:
        """The live SLO and segment rules (the defaults when the policy has no ``[live]`` section)."""
        return self.live or LiveOptions()

    @property
    def hash(self) -> str:
        """SHA-256 of the canonical JSON of the validated policy (comments and layout do not count)."""
        return content_hash(self.to_dict())


def _format_errors(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p)) for i, p in enumerate(err["loc"]))
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


MAX_DEPTH = 8  # a policy is a few levels deep (live.segments[0].values[0]): anything deeper is not a policy
MAX_INT = 2**53  # integers beyond a float's exact range are no sensible count, weight or hour


def _check_values(data: Any, where: str = "", depth: int = 0) -> None:
    """Refuse what the models would choke on before they see it, naming the key: deep nesting, huge integers."""
    if depth > MAX_DEPTH:
        raise WorkbenchError(f"{where or 'policy'}: nested more than {MAX_DEPTH} levels deep")
    if isinstance(data, dict):
        for k, v in data.items():
            _check_values(v, f"{where}.{k}" if where else str(k), depth + 1)
    elif isinstance(data, list):
        for i, v in enumerate(data):
            _check_values(v, f"{where}[{i}]", depth + 1)
    elif isinstance(data, int) and not isinstance(data, bool) and abs(data) > MAX_INT:
        raise WorkbenchError(f"{where}: {str(data)[:20]}... is too large a number")


def parse_policy(data: Any, source: str = "policy") -> Policy:
    """Validate a policy mapping; an unknown key or a bad value is an error naming it."""
    if not isinstance(data, dict):
        raise WorkbenchError(f"{source}: a policy must be a mapping of keys to values")
    try:
        _check_values(data)
    except WorkbenchError as e:
        raise WorkbenchError(f"{source}: {e}") from None
    try:
        return Policy.model_validate(data)
    except ValidationError as e:
        raise WorkbenchError(f"{source}: {_format_errors(e)}") from None


def load_policy(path: str | Path | None = None, task: str = "binary") -> Policy:
    """Read a TOML, YAML or JSON policy file; None loads the policy shipped with the package for runs of
    ``task`` (:data:`DEFAULT_POLICIES`)."""
    if path is None:
        if task not in DEFAULT_POLICIES:
            raise WorkbenchError(f"no shipped policy for {task} runs (shipped: {', '.join(DEFAULT_POLICIES)})")
        name = DEFAULT_POLICIES[task]
        text = resources.files("workbench.decide").joinpath(name).read_text("utf-8")
        return parse_policy(tomllib.loads(text), f"shipped {name}")
    p = Path(path)
    try:
        text = p.read_text("utf-8")
    except OSError as e:
        raise WorkbenchError(f"cannot read policy {p}: {e.strerror or e}") from None
    suffix = p.suffix.lower()
    try:
        if suffix == ".toml":
            data = tomllib.loads(text)  # TOML itself refuses a key given twice
        elif suffix in (".yaml", ".yml"):
            data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
        elif suffix == ".json":
            data = json.loads(text, object_pairs_hook=_unique_pairs)
        else:
            raise WorkbenchError(f"policy {p}: use a .toml, .yaml/.yml or .json file")
    except (tomllib.TOMLDecodeError, yaml.YAMLError, json.JSONDecodeError, ValueError) as e:
        raise WorkbenchError(f"policy {p} is not valid {suffix[1:].upper()}: {str(e).splitlines()[0]}") from None
    except RecursionError:
        raise WorkbenchError(f"policy {p}: nested too deeply to be a policy") from None
    return parse_policy(data, f"policy {p}")


def policy_for_run(path: str | Path | None, run: dict) -> Policy:
    """The policy a run is decided under: the file at ``path``, else the shipped default for the run's task."""
    from workbench.tasks import run_task

    return load_policy(path, run_task(run))


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict:
    keys = [k for k, _ in pairs]
    dup = next((k for k in keys if keys.count(k) > 1), None)
    if dup is not None:
        raise ValueError(f"the key {dup!r} is given twice")
    return dict(pairs)


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                where = key_node.start_mark
                raise yaml.constructor.ConstructorError(None, None, f"the key {key!r} is given twice", where)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)

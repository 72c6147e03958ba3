"""The flow: ingest -> replay -> evaluate -> drift -> decide, composed once.

The CLI, the job runner, the app's background jobs and the demo all run a :class:`Flow` through
:func:`run_flow`; none of them strings the stages together itself. A caller chooses which stages run
(a stage that is off is reported as skipped with its reason), how the store is opened (one store for the
whole flow, or a fresh one per stage so other processes get their turn), and hears about each stage
through :class:`FlowEvents` (begin, progress, end, skip), which is where jobs persist their stage state and
the CLI draws progress bars.

Each stage returns a small JSON-able summary (what jobs store and logs show); :class:`FlowResult` also keeps
each stage's full result for callers that show more (the demo, the CLI).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from workbench import WorkbenchError
from workbench.config import Settings
from workbench.decide.signing import KeyRing
from workbench.ops.events import FlowEvents
from workbench.replay.pipeline import ReplayOptions
from workbench.store import Store

STAGES = ("ingest", "replay", "evaluate", "drift", "decide")
StoreOpener = Callable[[], AbstractContextManager[Store]]
Loader = Callable[[str, str], Any]


@dataclass(frozen=True)
class TrafficSource:
    """Traffic files to ingest as the flow's traffic set, and the labels of their requests.

    ``if_exists`` says what happens when the traffic set is already stored: ``"append"`` ingests the files
    into it (the ``replay --source`` command), ``"reuse"`` keeps it and still refreshes the labels (a job
    resumed after its ingest), ``"check"`` keeps it only when it was ingested from these very files (the
    demo) and refuses other data.
    """

    paths: str | Path | None = None  # a file or glob; None: the traffic set is already stored
    id_col: str = "request_id"
    time_col: str = "event_time"
    entity_col: str | None = None
    nullable: tuple[str, ...] = ()
    segments: tuple[str, ...] = ()  # columns declared as segments: decisions gate the candidate on each value
    labels: str | Path | None = None
    label_id_col: str = "request_id"
    label_col: str = "label"
    label_time_col: str | None = "label_time"
    label_task: str = "binary"  # what the label column holds: 0/1, numbers ("regression"), classes ("multiclass")
    if_exists: Literal["append", "reuse", "check"] = "append"

    @contextmanager
    def files(self) -> Iterator[tuple[Any, Any]]:
        """The traffic and labels files to read (a job's source cuts them to its window first)."""
        yield self.paths, self.labels


@dataclass(frozen=True)
class Flow:
    """What one run of the flow does: which models replay which traffic, and which stages run."""

    traffic: str
    baseline: str  # model URIs (models:/name@alias, models:/name/3, a folder, ...)
    candidate: str
    run_id: str
    source: TrafficSource | None = None  # None: no ingest, the traffic set is already stored
    replay: ReplayOptions = ReplayOptions()
    device: str = "auto"
    executor: Any = None  # None: the local executor; a RayExecutor spreads the replay
    evaluate: bool = True
    drift: bool = True
    drift_reference: str | None = None
    drift_html: Path | None = None
    decide: Literal["off", "sign", "apply"] = "off"
    policy: str | Path | None = None  # a policy file; None: the shipped default
    justification: str | None = None  # signed into the decision; None: says the flow signed the policy's verdict

    def reason_off(self, stage: str) -> str | None:
        """Why ``stage`` does not run in this flow (None when it runs)."""
        return {
            "ingest": None if self.source else "no traffic files to ingest: the traffic set is stored",
            "replay": None,
            "evaluate": None if self.evaluate else "evaluation is off",
            "drift": None if self.drift else "drift is disabled",
            "decide": None if self.decide != "off" else "deciding is off",
        }[stage]


@dataclass
class FlowResult:
    """Each stage's summary (JSON-able), full result, and the stages skipped with their reasons."""

    run_id: str
    summaries: dict[str, dict] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    stopped: str | None = None  # why the flow ended early (a stage found nothing to do)


class StageSkipped(WorkbenchError):
    """A stage found nothing to do (no traffic in a job's window): the flow records why and ends there."""


@dataclass
class _Ctx:
    settings: Settings
    flow: Flow
    store: StoreOpener
    events: FlowEvents
    result: FlowResult
    keys: KeyRing | None
    models: tuple[Any, Any] = (None, None)


def run_flow(
    settings: Settings,
    flow: Flow,
    *,
    store: StoreOpener,
    load: Loader | None = None,
    keys: KeyRing | None = None,
    events: FlowEvents | None = None,
    done: tuple[str, ...] | frozenset = (),
) -> FlowResult:
    """Run the flow's stages in order and return what each produced.

    ``store()`` opens the store for a stage (a context manager); ``load(uri, device)`` loads a model
    (default: through MLflow), both before the first stage; ``keys`` is the key ring that signs and trusts
    decisions (default: the home's, read when the decide stage starts); stages named in ``done`` finished
    earlier (a resumed job) and are not redone.
    A stage that is off is skipped with its reason and the flow goes on; a stage that finds nothing to do
    (:class:`StageSkipped`) ends the flow there (``FlowResult.stopped``); a stage that raises anything else
    stops the flow and the exception propagates.
    """
    ctx = _Ctx(settings, flow, store, events or FlowEvents(), FlowResult(flow.run_id), keys)
    if "replay" not in done:  # models load first: one that does not load fails the flow before any ingest
        load = load or _load_with_mlflow(settings)
        ctx.models = (load(flow.baseline, flow.device), load(flow.candidate, flow.device))
    for stage in STAGES:
        if stage in done:
            continue
        reason = flow.reason_off(stage)
        if reason is not None:
            ctx.result.skipped[stage] = reason
            ctx.events.skip(stage, reason)
            continue
        ctx.events.begin(stage)
        t0 = time.monotonic()
        try:
            summary = STAGE_FUNCS[stage](ctx)
        except StageSkipped as e:
            ctx.result.skipped[stage] = ctx.result.stopped = str(e)
            ctx.events.skip(stage, str(e))
            return ctx.result
        seconds = time.monotonic() - t0
        ctx.result.summaries[stage], ctx.result.seconds[stage] = summary, seconds
        ctx.events.end(stage, summary, seconds)
    return ctx.result


def _load_with_mlflow(settings: Settings) -> Loader:
    def load(uri: str, device: str):
        import mlflow

        from workbench.replay.models import load_predictor

        mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
        return load_predictor(uri, device)

    return load


def _ingest(ctx: _Ctx) -> dict:
    from workbench.ingest.traffic import files_fingerprint, ingest, ingest_labels

    src, name = ctx.flow.source, ctx.flow.traffic
    assert src is not None  # reason_off("ingest") keeps this stage off without a source
    out: dict[str, Any] = {"traffic": name}
    with src.files() as (traffic_files, labels_file), ctx.store() as store:
        info = store.traffic_info(name)
        refresh_labels = True
        if traffic_files is None:
            out["rows"] = store.require_traffic(name)["rows"]
        elif info is not None and src.if_exists != "append":
            if src.if_exists == "check" and info["fingerprint"] != files_fingerprint(traffic_files):
                raise WorkbenchError(
                    f"traffic {name!r} in this home holds other data than {traffic_files}; "
                    "use a fresh WORKBENCH_HOME or another traffic name"
                )
            out.update(
                rows=info["rows"], quarantined=info["quarantined"], reasons=store.quarantine_summary(name), reused=True
            )
            refresh_labels = src.if_exists == "reuse"
        else:
            res = ingest(
                store,
                traffic_files,
                name,
                id_col=src.id_col,
                time_col=src.time_col,
                entity_col=src.entity_col,
                nullable=src.nullable,
                progress=lambda n: ctx.events.progress("ingest", n, None),
            )
            ctx.result.outputs["ingest"] = res
            out.update(rows=res.rows, quarantined=res.quarantined, rows_read=res.rows_read, reasons=res.reasons)
        if src.segments:
            store.declare_segments(name, src.segments)
            out["segments"] = store.declared_segments(name)
        if labels_file is not None and refresh_labels:
            lab = ingest_labels(
                store,
                labels_file,
                name,
                id_col=src.label_id_col,
                label_col=src.label_col,
                time_col=src.label_time_col,
                task=src.label_task,
            )
            ctx.result.outputs["labels"] = lab
            out["labels"] = lab.labels
    return out


def _replay(ctx: _Ctx) -> dict:
    from workbench.replay.pipeline import replay

    f = ctx.flow
    baseline, candidate = ctx.models
    with ctx.store() as store:
        res = replay(
            store,
            f.traffic,
            baseline,
            candidate,
            run_id=f.run_id,
            options=f.replay,
            progress=lambda done, total: ctx.events.progress("replay", done, total),
            executor=f.executor,
        )
    ctx.result.outputs["replay"] = res
    out = res.to_dict()
    out["rows_per_s"] = round(res.rows / res.seconds, 1) if res.seconds > 0 else None
    return out


def _evaluate(ctx: _Ctx) -> dict:
    from workbench.evaluate.evaluation import evaluate_run
    from workbench.ops.summaries import min_rows, precompute

    with ctx.store() as store:
        ev = evaluate_run(store, ctx.flow.run_id, prices=ctx.settings.prices).to_dict()
        # what the pages show of a large run, stored now so that no first visit aggregates it; the decision's
        # evidence after the drift report when one follows
        precompute(store, ctx.flow.run_id, evidence=not ctx.flow.drift, at_least=min_rows())
    ctx.result.outputs["evaluate"] = ev
    return {"labeled_rows": ev["labeled_rows"], "label_coverage": ev["label_coverage"]}


def _drift(ctx: _Ctx) -> dict:
    from workbench.drift.report import drift_run
    from workbench.ops.summaries import min_rows, precompute

    f = ctx.flow
    if f.drift_html is not None:
        f.drift_html.parent.mkdir(parents=True, exist_ok=True)
    with ctx.store() as store:
        d = drift_run(store, f.run_id, f.drift_reference, html=f.drift_html).to_dict()
        precompute(store, f.run_id, at_least=min_rows())  # the decision's evidence rests on the drift report
    ctx.result.outputs["drift"] = d
    out = {
        "dataset_drift": d["dataset_drift"],
        "share_drifted": d["share_drifted"],
        "concept_drift": d["concept_drift"]["detected"],
    }
    if f.drift_html is not None:
        out["html"] = str(f.drift_html)
    return out


def _decide(ctx: _Ctx) -> dict:
    """Judge the run under the policy and sign the record; with ``decide="apply"`` also move the weight and
    publish to MLflow. A record this run already has is reused: the ramp moves only on new evidence."""
    from workbench.decide.canary import apply_decision, build_decision, load_signed
    from workbench.decide.decisions import publish, witnesses
    from workbench.decide.policy import policy_for_run
    from workbench.decide.signoff import quorum_of

    s, f = ctx.settings, ctx.flow
    keys = ctx.keys or KeyRing.from_settings(s, sign=True)
    with ctx.store() as store:
        # the run's own decisions, however many other runs were decided since
        mine = [d for d in store.list_decisions(run_id=f.run_id) if d["kind"] == "decision"]
        if mine:
            signed = load_signed(store, mine[0]["decision_id"])
            applied = mine[0]["applied_sequence"] is not None
        else:
            why = f.justification or f"automated: the flow signed the policy's verdict on run {f.run_id} unreviewed"
            policy = policy_for_run(f.policy, store.require_run(f.run_id))
            signed, _ = build_decision(store, f.run_id, policy, keys.signer, justification=why)
            applied = False
        r = signed.record
        out = {
            "decision_id": signed.decision_id,
            "verdict": r["verdict"],
            "reason": r["reason"],
            "weight_before": r["weight_before"],
            "weight_after": r["weight_after"],
            "applied": applied,
        }
        if mine:
            out["reused"] = True
        if quorum_of(r) > 1 and not applied:  # a person's approval moves it: `workbench decision approve`
            out["awaiting_approval"] = True
        elif f.decide == "apply" and not applied:
            apply_decision(store, signed, keys.trusted, witnesses=witnesses(s, mlflow=True))
            out["applied"] = True
            out.update(publish(s, store, signed))
    ctx.result.outputs["decide"] = signed
    return out


STAGE_FUNCS: dict[str, Callable[[_Ctx], dict]] = {
    "ingest": _ingest,
    "replay": _replay,
    "evaluate": _evaluate,
    "drift": _drift,
    "decide": _decide,
}

"""Cached access to the workbench for the pages (the one place that caches).

Reads go through one :class:`~workbench.ops.background.SharedDatabase` per home: a short read-only connection
per read (nothing is held between reruns), or the shared read-write store while a job of this process
writes. When another process holds the write lock, a read falls back to the last value read for the same
question, and :func:`busy_since` tells the page to say so. Every cached function takes the home as its
first argument, so two homes never share entries. Run aggregates are keyed by a token that changes when
the run or its traffic's labels do (:func:`~workbench.store.app.run_token`), so they are computed once per
state of a run.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import streamlit as st

from workbench import WorkbenchError
from workbench.config import Settings, load_settings
from workbench.ops import summaries
from workbench.ops.background import BackgroundJobs, DatabaseBusy, SharedDatabase
from workbench.ops.summaries import LATENCY_PER_DECADE as LATENCY_PER_DECADE
from workbench.ops.summaries import LATENCY_PROBS as LATENCY_PROBS
from workbench.ops.summaries import SCORE_BINS as SCORE_BINS
from workbench.store.app import run_token

log = logging.getLogger(__name__)

REGRESSION_BINS = 40  # predicted-vs-actual heat map: bins per axis
CALIBRATION_BINS = 10
SHORT_TTL = 3  # seconds: lists that change while jobs run
RUN_TTL = 3600  # aggregates keyed by a run token
AGGREGATING = "Aggregating the run in DuckDB (once per run state)…"
READ_MEMORY_LIMIT = "2GB"  # DuckDB buffer of the app's read-only connections (WORKBENCH_APP_READ_MEMORY_LIMIT)


@dataclass(frozen=True)
class Fetched:
    value: Any
    at: datetime


def _now() -> datetime:
    return datetime.now(UTC)


def settings() -> Settings:
    return load_settings()


def home() -> str:
    return str(settings().home)


# -- process-wide objects (one per home) --------------------------------------------------------------------
@st.cache_resource(show_spinner=False)
def _database(home_: str) -> SharedDatabase:
    return SharedDatabase(
        load_settings(home_).db_path,
        read_memory_limit=os.environ.get("WORKBENCH_APP_READ_MEMORY_LIMIT", READ_MEMORY_LIMIT),
    )


@st.cache_resource(show_spinner=False)
def _jobs(home_: str) -> BackgroundJobs:
    s = load_settings(home_)
    return BackgroundJobs(s, _database(home_))


@st.cache_resource(show_spinner=False)
def _last_good(home_: str) -> tuple[OrderedDict, threading.Lock]:
    return OrderedDict(), threading.Lock()


def database() -> SharedDatabase:
    return _database(home())


def jobs() -> BackgroundJobs:
    return _jobs(home())


def _get(fn: Callable[..., Fetched], *args, default: Any = None) -> Any:
    """``fn(home, *args).value``; when the database is busy, the last value read for the same call."""
    h = home()
    key = (fn.__name__, args)
    memo, lock = _last_good(h)
    try:
        fetched = fn(h, *args)
    except DatabaseBusy:
        with lock:
            last = memo.get(key)
        _mark_busy(last.at if last else None)
        return last.value if last else default
    with lock:
        memo[key] = fetched
        memo.move_to_end(key)
        while len(memo) > 256:
            memo.popitem(last=False)
    return fetched.value


def _mark_busy(at: datetime | None) -> None:
    """Say on the page (in the slot :func:`start_run` keeps) that the database is busy: from when the oldest
    data shown is, and whether some part had never been read (and so is empty)."""
    oldest, missing = st.session_state.get("_wb_busy") or (None, False)
    if at is None:
        missing = True
    elif oldest is None or at < oldest:
        oldest = at
    st.session_state["_wb_busy"] = (oldest, missing)
    text = "Database busy (another process is writing to it)"
    if oldest is not None:
        text += f": showing data from {oldest.astimezone():%H:%M:%S}"
    if missing:
        text += (
            "; parts never read before stay empty"
            if oldest is not None
            else ", and nothing was read before: this page fills in when the writer has finished"
        )
    slot = st.session_state.get("_wb_slot")
    (slot or st).warning(text + ".", icon=":material/hourglass_top:")


def start_run(slot) -> None:
    """At the start of each run of the app: forget the busy state, keep ``slot`` for the busy note."""
    st.session_state["_wb_busy"] = None
    st.session_state["_wb_slot"] = slot


def busy() -> bool:
    """Whether this run showed cached data because the database was busy."""
    return st.session_state.get("_wb_busy") is not None


def _read(home_: str, fn: Callable) -> Fetched:
    db = _database(home_)
    if not db.exists:
        raise WorkbenchError("no workbench database yet")
    with db.read() as store:
        return Fetched(fn(store), _now())


def _stored(home_: str, run_id: str, name: str, arg: Any = None) -> Fetched:
    """A run summary (:mod:`workbench.ops.summaries`): the copy stored for the run's data as it is, else computed
    here and stored when the database takes a write at once (otherwise the next visit computes it again)."""
    fetched = _read(home_, lambda s: summaries.look_up(s, run_id, name, arg))
    _keep(home_, run_id, name, arg, fetched.value)
    return Fetched(fetched.value.value, fetched.at)


def _keep(home_: str, run_id: str, name: str, arg: Any, looked: summaries.Looked) -> None:
    if looked.stored:
        return
    try:
        with _database(home_).write(wait_s=0) as store:
            summaries.save(store, run_id, name, arg, looked)
    except WorkbenchError as e:  # a writer holds the lake: keep it in this process's cache only
        log.info("run %s: summary %s not stored (%s)", run_id, name, e)


# -- runs, traffic, progress ------------------------------------------------------------------------------------
@st.cache_data(ttl=SHORT_TTL, show_spinner=False)
def _runs(home_: str) -> Fetched:
    if not _database(home_).exists:
        return Fetched([], _now())
    return _read(home_, lambda s: s.app_runs())


def runs() -> list[dict]:
    return _get(_runs, default=[])


def run(run_id: str) -> dict | None:
    return next((r for r in runs() if r["run_id"] == run_id), None)


@st.cache_data(ttl=10, show_spinner=False)
def _traffic_sets(home_: str) -> Fetched:
    if not _database(home_).exists:
        return Fetched([], _now())
    return _read(home_, lambda s: s.list_traffic())


def traffic_sets() -> list[dict]:
    return _get(_traffic_sets, default=[])


def progress() -> list:
    """Progress files of every replay job (this app's and other processes'); read without DuckDB."""
    from workbench.ops.progress import read_progress

    return read_progress(settings().home)


# -- one run ---------------------------------------------------------------------------------------------------
@st.cache_data(ttl=10, show_spinner=False)
def _evaluation(home_: str, run_id: str) -> Fetched:
    def read(s) -> dict | None:
        from workbench.evaluate.stored import evaluation_is_current

        ev = s.latest_evaluation(run_id)
        return None if ev is None else ev | {"stale": evaluation_is_current(s, ev)}

    return _read(home_, read)


def evaluation(run_id: str) -> dict | None:
    """The run's latest evaluation, with ``stale``: why it no longer covers the run as it is now, or None."""
    return _get(_evaluation, run_id)


@st.cache_data(ttl=10, show_spinner=False)
def _drift(home_: str, run_id: str) -> Fetched:
    return _read(home_, lambda s: s.latest_drift(run_id))


def drift(run_id: str) -> dict | None:
    return _get(_drift, run_id)


@st.cache_data(ttl=RUN_TTL, max_entries=32, show_spinner=AGGREGATING)
def _summary(home_: str, run_id: str, token: str) -> Fetched:
    return _stored(home_, run_id, "scores")


def summary(r: dict) -> dict | None:
    """Score histograms per label, confusion and pairing counts, latency histograms of a run."""
    return _get(_summary, r["run_id"], run_token(r))


@st.cache_data(ttl=RUN_TTL, max_entries=32, show_spinner=AGGREGATING)
def _latency_quantiles(home_: str, run_id: str, token: str) -> Fetched:
    return _stored(home_, run_id, "latency_quantiles")


def latency_quantiles(r: dict) -> dict | None:
    return _get(_latency_quantiles, r["run_id"], run_token(r))


@st.cache_data(ttl=RUN_TTL, max_entries=32, show_spinner=False)
def _segment_columns(home_: str, run_id: str, token: str) -> Fetched:
    return _stored(home_, run_id, "segment_columns")


def segment_columns(r: dict) -> list[str]:
    return _get(_segment_columns, r["run_id"], run_token(r), default=[])


@st.cache_data(ttl=RUN_TTL, max_entries=32, show_spinner=AGGREGATING)
def _breakdowns(home_: str, run_id: str, token: str, columns: tuple[str, ...]) -> Fetched:
    return _stored(home_, run_id, "breakdowns", columns)


def breakdowns(r: dict) -> dict | None:
    """Sums per event-time day and per value of every segment column, computed in one pass."""
    return _get(_breakdowns, r["run_id"], run_token(r), tuple(segment_columns(r)))


@st.cache_data(ttl=RUN_TTL, max_entries=32, show_spinner=AGGREGATING)
def _class_counts(home_: str, run_id: str, token: str) -> Fetched:
    return _read(home_, lambda s: s.app_class_counts(run_id))


def class_counts(r: dict) -> dict | None:
    """A multi-class run's predicted classes per model and event-time day, counted in DuckDB."""
    return _get(_class_counts, r["run_id"], run_token(r))


@st.cache_data(ttl=RUN_TTL, max_entries=32, show_spinner=AGGREGATING)
def _regression_summary(home_: str, run_id: str, token: str, columns: tuple[str, ...]) -> Fetched:
    return _read(home_, lambda s: s.app_regression_summary(run_id, REGRESSION_BINS, list(columns)))


def regression_summary(r: dict) -> dict | None:
    """A regression run's predicted-vs-actual counts and residual sums per segment value, computed in DuckDB."""
    return _get(_regression_summary, r["run_id"], run_token(r), tuple(segment_columns(r)))


@st.cache_data(ttl=RUN_TTL, max_entries=32, show_spinner=AGGREGATING)
def _disagreements(home_: str, run_id: str, token: str, limit: int) -> Fetched:
    return _read(home_, lambda s: s.app_disagreements(run_id, limit).to_pandas())


def disagreements(r: dict, limit: int):
    return _get(_disagreements, r["run_id"], run_token(r), limit)


# -- decisions and the canary --------------------------------------------------------------------------------------
@st.cache_data(ttl=SHORT_TTL, show_spinner=False)
def _canary(home_: str) -> Fetched:
    """Every model's canary state with its verification (``workbench canary status``) and the ramp of the
    decision that set it."""
    if not _database(home_).exists:
        return Fetched([], _now())
    return _read(home_, lambda s: canary_states_of(s, load_settings(home_)))


def canary_states_of(store, settings_: Settings) -> list[dict]:
    """Each model's canary from its verified chain (never from the ``canary_state`` cache's columns)."""
    from workbench.decide.chain import live_view
    from workbench.decide.decisions import witnesses
    from workbench.decide.signing import KeyRing

    keys = KeyRing.from_settings(settings_).trusted
    witness = witnesses(settings_)
    return [live_view(store, model, keys, witness) for model in store.chain_models()]


def canary() -> list[dict]:
    return _get(_canary, default=[])


@st.cache_data(ttl=SHORT_TTL, show_spinner="Judging the run (once per state of its data)…")
def _preview(home_: str, run_id: str, policy_path: str | None, token: str):
    from workbench.decide.canary import preview_decision
    from workbench.decide.policy import policy_for_run

    looked: list[tuple[Any, summaries.Looked]] = []

    def read(s):
        policy = policy_for_run(policy_path, s.require_run(run_id))

        def evidence(run: dict, drift: dict | None) -> dict:
            looked.append((policy, summaries.look_up(s, run_id, "evidence", policy)))
            return looked[-1][1].value

        return preview_decision(s, run_id, policy, evidence)

    fetched = _read(home_, read)
    for policy, found in looked:
        _keep(home_, run_id, "evidence", policy, found)
    return fetched


def preview(r: dict, policy_path: str | None):
    """The decision the policy would make on a run now (nothing signed)."""
    return _get(_preview, r["run_id"], policy_path, run_token(r))


@st.cache_data(ttl=SHORT_TTL, show_spinner=False)
def _decided_models(home_: str) -> Fetched:
    if not _database(home_).exists:
        return Fetched([], _now())
    return _read(home_, lambda s: s.app_decided_models())


def decided_models() -> list[str]:
    return _get(_decided_models, default=[])


@st.cache_data(ttl=SHORT_TTL, show_spinner=False)
def _audit(home_: str, model: str) -> Fetched:
    from workbench.decide.decisions import audit
    from workbench.decide.signing import KeyRing

    keys = KeyRing.from_settings(load_settings(home_)).trusted
    return _read(home_, lambda s: [e.to_dict() for e in audit(s, model, keys)])


def audit(model: str) -> list[dict]:
    return _get(_audit, model, default=[])


@st.cache_data(ttl=SHORT_TTL, show_spinner=False)
def _awaiting(home_: str, model: str) -> Fetched:
    from workbench.decide.approvals import awaiting
    from workbench.decide.signing import KeyRing

    if not _database(home_).exists:
        return Fetched([], _now())
    keys = KeyRing.from_settings(load_settings(home_)).trusted
    return _read(home_, lambda s: awaiting(s, model, keys))


def awaiting(model: str) -> list[dict]:
    """The decisions of ``model`` that await approval (``canary status``'s ``awaiting_approval``)."""
    return _get(_awaiting, model, default=[])


@st.cache_data(ttl=SHORT_TTL, show_spinner=False)
def _sign_offs(home_: str, run_id: str) -> Fetched:
    from workbench.decide.approvals import sign_offs
    from workbench.decide.signing import KeyRing

    keys = KeyRing.from_settings(load_settings(home_)).trusted
    return _read(home_, lambda s: [o.to_dict() for o in sign_offs(s, keys, run_id=run_id)])


def sign_offs(run_id: str) -> list[dict]:
    """The run's decision records, newest first, with who signed them off and whether they await approval."""
    return _get(_sign_offs, run_id, default=[])


# -- the live canary ------------------------------------------------------------------------------------------------
@st.cache_data(ttl=RUN_TTL, max_entries=16, show_spinner=False)
def _live_window(home_: str, model: str, window_s: float, token: tuple) -> dict:
    from workbench.live.window import live_window, log_dir, read_log

    return live_window(read_log(log_dir(load_settings(home_).home, model), window_s), window_s).to_dict()


def live_window(model: str, window_s: float) -> tuple[dict, str]:
    """Per-arm rates over the last ``window_s`` seconds of the router's traffic log of ``model``, and the log's
    folder (computed once per state of the log's complete files)."""
    from workbench.live.window import log_dir, log_token

    folder = log_dir(settings().home, model)
    return _live_window(home(), model, window_s, log_token(folder)), str(folder)


# -- MLflow ------------------------------------------------------------------------------------------------------
@st.cache_data(ttl=10, show_spinner=False)
def _registered_models(home_: str) -> list[dict]:
    from workbench.decide.registry import Registry

    return Registry(load_settings(home_).mlflow_tracking_uri).list_models()


def registered_models() -> tuple[list[dict], str | None]:
    """Registered models from MLflow, and an error message when MLflow could not be read."""
    try:
        return _registered_models(home()), None
    except Exception as e:  # MLflow down, misconfigured or refusing: the pages still show DuckDB's side
        return [], f"MLflow at {settings().mlflow_tracking_uri} could not be read: {type(e).__name__}: {e}"


@st.cache_data(ttl=300, show_spinner=False)
def _run_experiments(home_: str, run_ids: tuple[str, ...]) -> dict[str, str]:
    from workbench.decide.registry import Registry

    return Registry(load_settings(home_).mlflow_tracking_uri).run_experiments(list(run_ids))


def mlflow_ui() -> str | None:
    """The MLflow UI's address for links (``workbench app``/``demo`` serve one over a local store), or None."""
    from workbench.decide.registry import mlflow_ui_base

    return mlflow_ui_base(settings().mlflow_tracking_uri)


def run_experiments(run_ids: list[str]) -> dict[str, str]:
    try:
        return _run_experiments(home(), tuple(sorted(set(run_ids))))
    except Exception:  # links are a convenience: without MLflow the ids are still shown
        return {}


def refresh() -> None:
    """Forget cached lists and states after this app wrote something (a decision, a finished job)."""
    for fn in (
        _runs,
        _evaluation,
        _drift,
        _canary,
        _preview,
        _decided_models,
        _audit,
        _awaiting,
        _sign_offs,
        _registered_models,
    ):
        fn.clear()

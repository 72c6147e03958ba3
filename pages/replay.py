"""Replay: start a shadow replay of logged traffic through a baseline and a candidate, watch it, see past jobs.

Jobs run in threads of the app's process (they share its database connection, so every page keeps working
while they write); progress, rows/s and ETA come from the progress files that every replay writes, also
replays started from the command line or a scheduled job in another process. Starting one takes an operator or
an approver (the library refuses a viewer); every run links to its evidence.
"""

from datetime import timedelta

import pandas as pd
import streamlit as st

from pages import data, ui
from workbench import WorkbenchError
from workbench.ops.background import ReplayJob
from workbench.ops.progress import RUNNING
from workbench.replay.pipeline import ReplayOptions

ui.ensure_navigation()
st.title("Replay")
models, mlflow_error = data.registered_models()
traffic = [t["name"] for t in data.traffic_sets()]


def model_refs(m: dict) -> list[str]:
    refs = [f"models:/{m['name']}@{a}" for a in sorted(m["aliases"])]
    return refs + [f"models:/{m['name']}/{v['version']}" for v in m["versions"]]


def ref_label(ref: str, m: dict | None) -> str:
    alias = ref.partition("@")[2]
    return f"{ref}  (v{m['aliases'][alias]})" if alias and m else ref


with st.container(border=True):
    st.subheader("New replay")
    if mlflow_error:
        st.warning(mlflow_error)
    if not traffic:
        st.info("No traffic ingested yet: `workbench ingest PATH --name NAME` (or `workbench demo`).")
    names = [m["name"] for m in models]
    c1, c2, c3 = st.columns(3)
    name = c1.selectbox("Registered model", names, disabled=not names) if names else None
    m = next((x for x in models if x["name"] == name), None)
    refs = model_refs(m) if m else []

    def default(alias: str, fallback: int) -> int:
        want = f"models:/{name}@{alias}"
        return refs.index(want) if want in refs else min(fallback, max(0, len(refs) - 1))

    baseline = c2.selectbox(
        "Baseline (alias or version)",
        refs,
        index=default("champion", 0),
        format_func=lambda r: ref_label(r, m),
        disabled=not refs,
    )
    candidate = c3.selectbox(
        "Candidate (alias or version)",
        refs,
        index=default("challenger", 1),
        format_func=lambda r: ref_label(r, m),
        disabled=not refs,
    )
    with st.expander("Other model URIs (runs:/..., a model folder)"):
        u1, u2 = st.columns(2)
        baseline = u1.text_input("Baseline URI", value="") or baseline
        candidate = u2.text_input("Candidate URI", value="") or candidate
    o1, o2, o3, o4 = st.columns(4)
    source = o1.selectbox("Traffic", traffic, disabled=not traffic)
    batch = o2.number_input("Batch size", min_value=1, max_value=1 << 22, value=8192, step=1024)
    mode = o3.radio(
        "Timing",
        ["throughput", "online"],
        horizontal=True,
        help="online: one request at a time, as a server would see them",
    )
    device = o4.selectbox("Device", ["auto", "cpu", "cuda"])
    p1, p2, p3, p4 = st.columns(4)
    run_id = p1.text_input(
        "Run id (optional)",
        help="letters, digits and _; a new id is made when empty; an interrupted run's id resumes it",
    )
    timeout = p2.number_input("Model timeout (s, 0: none)", min_value=0.0, value=0.0, step=1.0)
    evaluate = p3.checkbox("Evaluate when done", value=True)
    drift = p4.checkbox("Drift report when done (with Evidently HTML)", value=True)
    clicked = st.button("Start replay", type="primary", disabled=not (baseline and candidate and source))
    if ui.identity() is None:
        st.caption("Starting a replay takes an operator or an approver: sign in from the sidebar.")
    if clicked and baseline and candidate and source:  # (a disabled button is never clicked)
        try:
            job = data.jobs().submit_replay(
                ReplayJob(
                    traffic=source,
                    baseline=baseline,
                    candidate=candidate,
                    run_id=run_id.strip() or None,
                    options=ReplayOptions(batch_size=int(batch), mode=mode, model_timeout=timeout or None),
                    device=device,
                    evaluate=evaluate,
                    drift=drift,
                    drift_html=drift,
                ),
                by=ui.identity(),
            )
            st.session_state["_wb_started"] = job.run_id
            st.success(f"Started run **{job.run_id}** in the background.")
        except WorkbenchError as e:
            st.error(str(e))
    started = next((r for r in data.runs() if r["run_id"] == st.session_state.get("_wb_started")), None)
    if started is not None and started["status"] == "finished":
        st.markdown(f"Run **{started['run_id']}**, started here, has finished: its evidence")
        ui.run_links(started["run_id"])


def fmt_eta(seconds) -> str:
    return "–" if seconds is None else str(timedelta(seconds=round(seconds)))


any_running = any(p.status == RUNNING for p in data.progress())


@st.fragment(run_every=1.0 if any_running else None)
def live() -> None:
    running = [p for p in data.progress() if p.status == RUNNING]
    st.subheader("Running")
    if not running:
        st.caption("No replay is running.")
        if st.session_state.pop("_wb_was_running", False):
            data.refresh()
            st.rerun()
        return
    st.session_state["_wb_was_running"] = True
    for p in running:
        with st.container(border=True):
            total = f"{p.rows_total:,}" if p.rows_total else "?"
            st.progress(p.fraction, text=f"**{p.run_id}** · {p.stage} · {p.rows_done:,} / {total} rows")
            a, b, c, d = st.columns(4)
            a.metric("Rows/s", f"{p.rows_per_s:,.0f}" if p.rows_per_s else "–")
            b.metric("ETA", fmt_eta(p.eta_s))
            c.metric("Done", f"{p.fraction:.0%}")
            d.caption(
                f"{p.baseline or ''} vs {p.candidate or ''}  \ntraffic {p.traffic or '?'} · {p.source} "
                f"(pid {p.pid} on {p.host}) · started {p.started_at}"
            )


live()

st.subheader("Past jobs")
progress = {p.run_id: p for p in data.progress()}
rows = []
for r in data.runs():
    p = progress.pop(r["run_id"], None)
    rows.append(
        {
            "run": r["run_id"],
            "evidence": ui.run_url(r["run_id"]),
            "status": p.status if p and p.status != "finished" else r["status"],
            "traffic": r["traffic"],
            "baseline": r["baseline"].get("uri"),
            "candidate": r["candidate"].get("uri"),
            "rows": r["rows_done"],
            "of": r["rows_total"],
            "started": r["started_at"],
            "finished": r["finished_at"],
            "rows/s": round(p.rows_per_s) if p and p.rows_per_s else None,
            "source": p.source if p else None,
            "error": p.error if p else None,
        }
    )
for p in progress.values():  # jobs that failed before their run existed (e.g. a model that would not load)
    if p.status != RUNNING:
        rows.append(
            {
                "run": p.run_id,
                "evidence": None,
                "status": p.status,
                "traffic": p.traffic,
                "baseline": p.baseline,
                "candidate": p.candidate,
                "rows": p.rows_done,
                "of": p.rows_total,
                "started": p.started_at,
                "finished": p.updated_at,
                "rows/s": None,
                "source": p.source,
                "error": p.error,
            }
        )
if rows:
    st.dataframe(
        pd.DataFrame(rows),
        hide_index=True,
        column_config={"evidence": st.column_config.LinkColumn(display_text="compare, drift, decide")},
    )
else:
    st.caption("No replay yet.")

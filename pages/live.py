"""Live canary: a model's canary as its router sees it. Per-arm request rate, error rate and P50/P99 latency over
the recent window of the router's traffic log, the weight over time from the signed chain, and for approvers
Pause (hold at the weight) and Abort (the kill switch). ``?model=`` in the address picks the model."""

from datetime import UTC, datetime

import pandas as pd
import streamlit as st

from pages import charts, data, ui
from workbench import WorkbenchError
from workbench.decide.signing import KeyRing
from workbench.ops.canary_control import control_canary
from workbench.views import live_rows, weight_history

WINDOWS = {"30 s": 30.0, "1 min": 60.0, "5 min": 300.0, "15 min": 900.0, "1 h": 3600.0}


def action_form(model: str, action: str, label: str, help_text: str) -> None:
    """A reason and a button; the library call refuses anyone but an approver and a blank reason."""
    with st.form(f"wb_live_{action}", clear_on_submit=True):
        reason = st.text_input(f"{label}: reason (signed into the record)", key=f"wb_live_{action}_reason")
        if st.form_submit_button(label, help=help_text, type="primary" if action == "abort" else "secondary"):
            settings = data.settings()
            try:
                keys = KeyRing.from_settings(settings)
                with data.database().write() as store:
                    out = control_canary(settings, store, keys, ui.identity(), model, action, reason)
            except WorkbenchError as e:
                st.error(str(e))
            else:
                st.session_state["_wb_live_done"] = (
                    f"{label}: weight {out['weight']}% (decision `{out['decision_id']}`)"
                )
                data.refresh()
                st.rerun()


ui.ensure_navigation()
st.title("Live canary")
states = {s["model"]: s for s in data.canary()}
if not states:
    st.info("No canary yet: decide on a replay run of a registered model (Decide page), then route it.")
    st.stop()
model = ui.pick_model(sorted(states))
s = states[model]
held = " · **killed**" if s.get("killed") else " · **paused**" if s.get("paused") else ""
a, b = st.columns([1, 3])
a.metric("Canary weight", f"{s['weight']}%", help="percent of live traffic the router sends to the candidate")
b.markdown(
    f"Candidate v{s['candidate_version']} against baseline v{s['baseline_version']}{held}  \n"
    + (":material/verified: chain verified" if s["verified"] else f":material/error: NOT verified: {s.get('problem')}")
    + f" · decision `{s['decision_id']}`"
)
if done := st.session_state.pop("_wb_live_done", None):
    st.success(done, icon=":material/check_circle:")

st.subheader("Live traffic")
label = st.segmented_control("Window", list(WINDOWS), default="5 min", key="wb_live_window") or "5 min"
window, folder = data.live_window(model, WINDOWS[label])
if window["end"] is None:
    st.info(
        f"No traffic log under `{folder}` yet: `workbench route {model} --baseline URL --candidate URL` writes "
        "one there (complete files appear when the router rotates them, every `--rotate-s`, or stops)."
    )
else:
    end = window["end"]
    age = (datetime.now(UTC) - end).total_seconds()
    st.caption(
        f"The last {label} of the router's traffic log in `{folder}`, up to its latest complete request at "
        f"{end:%Y-%m-%d %H:%M:%S} UTC ({age:,.0f} s ago; the router closes a log file every `--rotate-s`). "
        "Errors as the router's live SLO counts them: no answer or a non-2xx, but not a 4xx both arms gave."
    )
    st.dataframe(pd.DataFrame(live_rows(window["arms"])), hide_index=True, key="wb_live_arms")
    st.plotly_chart(charts.live_series(window["series"]), key="wb_live_series")

st.subheader("Weight history")
history = weight_history(data.audit(model))
if history:
    st.plotly_chart(charts.weight_history(history, datetime.now(UTC)), key="wb_weight_history")
    st.caption(f"{len(history)} signed records applied; the full chain is on the Audit page.")
st.page_link("pages/audit.py", label="Audit trail", icon=":material/verified:", query_params={"model": model})

st.subheader("Actions")
who = ui.identity()
if who is None or not who.can_approve:
    st.caption(f"Only an approver can pause or abort the canary. {ui.lock_note(who)}")
elif not s["verified"]:
    st.warning("The chain does not verify: nothing can be signed on top of it.")
else:
    pause_col, abort_col = st.columns(2)
    with pause_col:
        if s.get("paused"):
            action_form(model, "resume", "Resume", "release the pause: decisions move the weight again")
        elif s.get("killed"):
            st.caption("Killed: held at 0%.")
        else:
            action_form(model, "pause", "Pause", f"hold the canary at {s['weight']}%: decisions no longer move it up")
    with abort_col:
        if s.get("killed"):
            st.caption(f"v{s['candidate_version']} is killed: resume it on the Candidates page.")
        else:
            action_form(model, "abort", "Abort", "the kill switch: weight 0 at once, the version held there")

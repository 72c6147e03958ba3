"""Home: the replay runs in this workbench and the latest evaluation of the chosen run."""
import plotly.graph_objects as go
import streamlit as st

from pages import data

st.title("canary-workbench")
runs = data.runs()
if not runs:
    st.info("No replay run yet. Run `workbench demo` or `workbench replay ...` first.")
    st.stop()

run_id = st.selectbox("Replay run", [r["run_id"] for r in runs])
run = next(r for r in runs if r["run_id"] == run_id)
c1, c2, c3 = st.columns(3)
c1.metric("Rows replayed", f"{run['rows_done']:,}")
c2.metric("Status", run["status"])
c3.metric("Device", run["device"])

ev = data.evaluation(run_id)
if ev is None:
    st.info("This run has not been evaluated yet: `workbench evaluate RUN_ID`.")
    st.stop()
st.subheader(f"Evaluation on {ev['labeled_rows']:,} labelled rows (coverage {ev['label_coverage']:.1%})")
metrics = list(ev["baseline"])
table = [{"metric": m, "baseline": ev["baseline"][m], "candidate": ev["candidate"][m]} for m in metrics]
st.dataframe(table, hide_index=True, width="stretch")
fig = go.Figure([go.Bar(name=role, x=metrics, y=[ev[role][m] for m in metrics]) for role in ("baseline", "candidate")])
fig.update_layout(barmode="group", height=360, margin=dict(t=20, b=20))
st.plotly_chart(fig, width="stretch")

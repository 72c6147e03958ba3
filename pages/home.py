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
level = f"{ev.get('confidence', 0.95):.0%}"
st.subheader(f"Evaluation on {ev['labeled_rows']:,} labelled rows (coverage {ev['label_coverage']:.1%})")
st.caption(f"{level} intervals; delta = candidate - baseline on the rows both models scored; "
           "p: McNemar for accuracy, paired bootstrap otherwise; mde: smallest delta detectable with 80% power.")


def _interval(e: dict) -> str:
    return "" if e.get("ci_low") is None else f"[{e['ci_low']:.4f}, {e['ci_high']:.4f}]"


metrics = list(ev["baseline"])
table = [{"metric": m,
          "baseline": ev["baseline"][m]["value"], "baseline interval": _interval(ev["baseline"][m]),
          "candidate": ev["candidate"][m]["value"], "candidate interval": _interval(ev["candidate"][m]),
          "delta": ev["delta"][m]["value"], "delta interval": _interval(ev["delta"][m]),
          "p": ev["delta"][m]["p_value"], "mde": ev["delta"][m]["mde"]} for m in metrics]
st.dataframe(table, hide_index=True, width="stretch")


def _bar(role: str) -> go.Bar:
    vals = [ev[role][m]["value"] for m in metrics]
    plus = [None if v is None or ev[role][m]["ci_high"] is None else ev[role][m]["ci_high"] - v
            for m, v in zip(metrics, vals)]
    minus = [None if v is None or ev[role][m]["ci_low"] is None else v - ev[role][m]["ci_low"]
             for m, v in zip(metrics, vals)]
    return go.Bar(name=role, x=metrics, y=vals, error_y=dict(type="data", array=plus, arrayminus=minus))


fig = go.Figure([_bar("baseline"), _bar("candidate")])
fig.update_layout(barmode="group", height=360, margin=dict(t=20, b=20))
st.plotly_chart(fig, width="stretch")
if ev.get("undefined"):
    st.caption("Undefined: " + "; ".join(f"{k}: {v}" for k, v in ev["undefined"].items()))

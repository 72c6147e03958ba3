"""Candidates: registered models, their versions and aliases (MLflow), each model's live canary weight, and
links to its runs' evidence and its audit trail. ``?model=`` in the address shows one model."""

import pandas as pd
import streamlit as st

from pages import charts, data, ui
from workbench import WorkbenchError
from workbench.decide.canary import build_resume
from workbench.decide.decisions import apply_and_publish
from workbench.decide.policy import load_policy
from workbench.decide.registry import model_version_url, run_url
from workbench.decide.signing import KeyRing
from workbench.ops.access import signer_for
from workbench.views import ramp_position, runs_of_model

SHOWN_RUNS = 5  # the latest runs of a model linked from its card


def resume_form(model: str, version: str) -> None:
    """Release a killed candidate version: a signed ``resume`` record, for approvers only (as signing)."""
    who = ui.identity()
    if who is None or not who.can_approve:
        st.caption(f"v{version} is held at 0 by the kill switch; only an approver can resume it.")
        return
    with st.form(f"wb_resume_{model}", clear_on_submit=True):
        reason = st.text_input(f"Resume v{version} (signed as {who.signer}): reason", key=f"wb_resume_reason_{model}")
        if st.form_submit_button("Resume (weight stays 0)"):
            settings = data.settings()
            try:
                keys = KeyRing.from_settings(settings)
                with data.database().write() as store:
                    signer = signer_for(who, keys, "resume a killed version")
                    signed = build_resume(store, model, version, reason, signer, load_policy())
                    apply_and_publish(settings, store, keys, signed)
            except WorkbenchError as e:
                st.error(str(e))
            else:
                data.refresh()
                st.rerun()


ui.ensure_navigation()
st.title("Candidates")
models, mlflow_error = data.registered_models()
states = {s["model"]: s for s in data.canary()}
if mlflow_error:
    st.warning(mlflow_error)
names = sorted({m["name"] for m in models} | set(states))
if not names:
    st.info("No registered model and no canary yet. Register models in MLflow (`workbench demo` registers two).")
default_ramp = load_policy().ramp
by_name = {m["name"]: m for m in models}
wanted = st.query_params.get("model")
if wanted in names:
    names = [wanted]
    st.page_link("pages/candidates.py", label="All models", icon=":material/arrow_back:")
runs = data.runs()
for name in names:
    m, s = by_name.get(name), states.get(name)
    with st.container(border=True):
        head, weight_col = st.columns([3, 2])
        head.subheader(name)
        if m:
            aliases = " ".join(f"`@{a}` → v{v}" for a, v in sorted(m["aliases"].items())) or "no aliases"
            head.markdown(f"Aliases: {aliases}")
            if m.get("description"):
                head.caption(m["description"])
        if s:
            pos = ramp_position(int(s["weight"]), s.get("ramp") or default_ramp)
            weight_col.metric(
                "Canary weight",
                f"{s['weight']}%",
                help="percent of live traffic on the candidate, moved only by signed decisions",
            )
            weight_col.progress(
                int(s["weight"]) / 100,
                text=f"candidate v{s['candidate_version']} vs baseline v{s['baseline_version']}: "
                f"step {pos['step']} of {pos['steps']}"
                + (f", next {pos['next']}%" if pos["next"] else " (fully rolled out)"),
            )
            weight_col.plotly_chart(charts.ramp(pos), key=f"ramp_{name}", config={"displayModeBar": False})
            verified = (
                ":material/verified: chain verified"
                if s["verified"]
                else f":material/error: NOT verified: {s.get('problem')}"
            )
            weight_col.caption(
                f"{verified} · decision `{s['decision_id']}`" + (" · **killed**" if s.get("killed") else "")
            )
            if s.get("killed") and s["verified"]:
                resume_form(name, str(s["candidate_version"]))
        else:
            weight_col.metric("Canary weight", "0%", help="no decision has been applied to this model")
            weight_col.caption("No canary yet: decide on a replay run of this model.")
        for a in data.awaiting(name):
            weight_col.warning(
                f"Decision `{a['decision_id']}` ({a['verdict']} to {a['weight_after']}%) awaits approval: "
                f"{len(a['signed_by'])} of {a['quorum']} approvers signed ({', '.join(a['signed_by'])}).",
                icon=":material/how_to_reg:",
            )
        if m and m["versions"]:
            ui_base = data.mlflow_ui()
            experiments = data.run_experiments([v["run_id"] for v in m["versions"] if v["run_id"]]) if ui_base else {}
            rows = [
                {
                    "version": v["version"],
                    "in MLflow": model_version_url(ui_base, name, v["version"]),
                    "aliases": ", ".join(v["aliases"]),
                    "status": v["status"],
                    "created": pd.to_datetime(v["created_at"], unit="ms", utc=True) if v["created_at"] else None,
                    "canary verdict": v["tags"].get("canary.verdict"),
                    "canary weight": v["tags"].get("canary.weight"),
                    "decision": v["tags"].get("canary.decision_id"),
                    "training run": run_url(ui_base, experiments.get(v["run_id"]), v["run_id"]) or v["run_id"]
                    if v["run_id"]
                    else None,
                }
                for v in m["versions"]
            ]
            st.dataframe(
                pd.DataFrame(rows).drop(columns=[] if ui_base else ["in MLflow"]),
                hide_index=True,
                placeholder="",
                key=f"versions_{name}",
                column_config={
                    "in MLflow": st.column_config.LinkColumn(display_text=r"versions/(\d+)$"),
                    "training run": st.column_config.LinkColumn(display_text=r"([0-9a-f]{32})$")
                    if ui_base
                    else st.column_config.TextColumn(),
                },
            )
            if not ui_base:
                st.caption(
                    "No MLflow UI address (WORKBENCH_MLFLOW_UI): `workbench app` serves one beside the app over "
                    "a local tracking store."
                )
        links, here = st.container(horizontal=True), {"model": name}
        links.page_link("pages/candidates.py", label="Link to this model", icon=":material/link:", query_params=here)
        links.page_link("pages/audit.py", label="Audit trail", icon=":material/verified:", query_params=here)
        if s:
            links.page_link("pages/live.py", label="Live canary", icon=":material/monitor_heart:", query_params=here)
        model_runs = runs_of_model(runs, name)
        for r in model_runs[:SHOWN_RUNS]:
            b, c = r["baseline"].get("uri"), r["candidate"].get("uri")
            st.caption(f"Run **{r['run_id']}** · {b} vs {c} · {r['status']}")
            ui.run_links(r["run_id"], ("compare", "decide"))
        if len(model_runs) > SHOWN_RUNS:
            st.caption(f"{len(model_runs) - SHOWN_RUNS} older runs: pick them on the Compare page.")

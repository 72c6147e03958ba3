"""Audit: every signed decision on a model, the applied ones in chain order, each with its verification
status (stored bytes, hash, link to the previous record, signature by a trusted key, approvals), who signed it
off with which justification, overrides of the policy's verdict, its replay run's evidence and its MLflow run.
``?model=`` in the address picks the model."""

import json

import pandas as pd
import streamlit as st

from pages import data, ui
from workbench.decide.registry import run_url

ui.ensure_navigation()
st.title("Audit")
models = sorted(set(data.decided_models()) | {s["model"] for s in data.canary()})
if not models:
    st.info("No decision has been signed yet.")
else:
    model = ui.pick_model(models)
    entries = data.audit(model)
    chained = [e for e in entries if e["sequence"] is not None]
    broken = [e for e in chained if not e["verified"]]
    a, b, c = st.columns(3)
    a.metric("Applied records", len(chained))
    b.metric("Signed, not applied", len(entries) - len(chained))
    c.metric("Chain", "verified" if not broken else f"{len(broken)} broken")
    if broken:
        st.error(f"The chain of {model} does not verify: {broken[-1]['problem']}", icon=":material/gpp_bad:")
    elif chained:
        st.success(
            f"All {len(chained)} applied records of {model} verify: signatures by trusted keys, stored bytes "
            "unaltered, each linked to the one before.",
            icon=":material/verified_user:",
        )
    ui_base = data.mlflow_ui()
    experiments = data.run_experiments([e["mlflow_run_id"] for e in entries if e["mlflow_run_id"]]) if ui_base else {}
    rows = [
        {
            "seq": e["sequence"],
            "status": "verified" if e["verified"] else "NOT VERIFIED",
            "decision": e["decision_id"],
            "kind": e["kind"],
            "verdict": e["verdict"] + (f" (override of {e['override_of']})" if e.get("override_of") else ""),
            "weight": f"{e['weight_before']}% → {e['weight_after']}%",
            "signer": e["signer"],
            "signed off by": ", ".join(e.get("signed_by") or ())
            + f" ({len(e.get('signed_by') or ())} of {e['quorum']})",
            "justification": e.get("justification"),
            "created": e["created_at"],
            "replay run": ui.run_url(e["run_id"]) if e["run_id"] else None,
            "MLflow run": run_url(ui_base, experiments.get(e["mlflow_run_id"]), e["mlflow_run_id"])
            if e["mlflow_run_id"]
            else None,
            "MLflow run id": e["mlflow_run_id"] or ("pending sync" if e["pending_sync"] else None),
            "problem": e["problem"],
        }
        for e in entries
    ]
    st.dataframe(
        pd.DataFrame(rows),
        hide_index=True,
        placeholder="",
        column_config={
            "replay run": st.column_config.LinkColumn(display_text=r"run=(.*)$"),
            "MLflow run": st.column_config.LinkColumn(display_text="open in MLflow"),
        },
    )
    if not ui_base:
        st.caption(
            f"MLflow runs are in the local store {data.settings().mlflow_tracking_uri}: `workbench app` serves "
            "the MLflow UI beside the app, or set WORKBENCH_MLFLOW_UI to its address for links."
        )
    for e in entries:
        override = f" · override of {e['override_of']}" if e.get("override_of") else ""
        with st.expander(
            f"{e['decision_id']} · {e['verdict']}{override} · " + ("verified" if e["verified"] else "NOT VERIFIED")
        ):
            if e["problem"]:
                st.error(e["problem"])
            if override:
                st.warning(
                    f"Override: the policy said {e['override_of']}, {e['signer']} signed {e['verdict']}: "
                    f"{e['record']['override']['reason']}"
                )
            if (e["record"].get("scorecard") or {}).get("checks"):
                ui.checks(e["record"]["scorecard"])
            st.caption(f"key {e['key_fingerprint']} · signature {e['signature']}")
            st.code(json.dumps(e["record"], indent=2, ensure_ascii=False), language="json")

"""Decide: the policy, the verdict it gives this run with every check's numbers, and the ramp step it moves
to. Only an approver may sign and record the decision (the library refuses anyone else); the key stays on the
server (the library signs)."""

from pathlib import Path

import streamlit as st

from pages import charts, data, ui
from workbench import WorkbenchError
from workbench.decide.decisions import decide
from workbench.decide.policy import Verdict, load_policy
from workbench.decide.signing import KeyRing
from workbench.ops.access import signer_for
from workbench.views import ramp_position

VERDICT_ICONS = {
    Verdict.PROMOTE: ":material/trending_up:",
    Verdict.HOLD: ":material/pause_circle:",
    Verdict.ROLLBACK: ":material/undo:",
}

ui.ensure_navigation()
st.title("Decide")
run = ui.pick_run(finished_only=True)
if run is not None:
    ui.run_caption(run)
    home = data.settings().home
    files = (
        sorted(p for p in (home / "policies").glob("*") if p.suffix in (".toml", ".yaml", ".yml", ".json"))
        if (home / "policies").is_dir()
        else []
    )
    options = [None] + [str(p) for p in files]
    policy_path = st.selectbox(
        "Policy",
        options,
        format_func=lambda p: "shipped default policy" if p is None else Path(p).name,
        key="wb_policy",
        help=f"policy files live in {home / 'policies'} (TOML, YAML or JSON)",
    )
    try:
        policy = load_policy(policy_path, run.get("task") or "binary")
        with st.expander(f"Policy **{policy.name}** · sha256 {policy.hash[:12]}…"):
            st.json(policy.to_dict())
        preview = data.preview(run, policy_path)
    except WorkbenchError as e:
        st.error(str(e))
        preview = None
    if preview is not None:
        card = preview.scorecard
        pos = ramp_position(preview.weight_after, policy.ramp)
        v1, v2, v3 = st.columns([1, 1, 2])
        v1.metric("Verdict", preview.verdict)
        moved = preview.weight_after - preview.weight_before
        v2.metric(
            "Canary weight",
            f"{preview.weight_after}%",
            delta=f"{moved:+d} pts from {preview.weight_before}%" if moved else None,
            help=f"now {preview.weight_before}%; a signed decision moves it to {preview.weight_after}%",
        )
        v3.markdown(
            f"{VERDICT_ICONS.get(preview.verdict, '')} **{preview.reason}**  \n{preview.model}: candidate "
            f"v{preview.candidate['version']} against baseline v{preview.baseline['version']}; ramp step "
            f"{pos['step']} of {pos['steps']}"
        )
        v3.plotly_chart(charts.ramp(pos), key="decide_ramp", config={"displayModeBar": False})
        cited = preview.evidence.get("evidence") or {}
        ui.checks(
            card.to_dict(),
            f"Judged on {cited.get('labelled_rows', 0):,} labelled rows of {len(cited.get('runs') or [])} run(s) "
            f"of this pair ({cited.get('first_event')} to {cited.get('last_event')}), with anytime-valid bounds "
            f"at {policy.confidence:.0%}.",
        )

        st.subheader("Sign and record")
        out = st.session_state.get("_wb_signed")
        if out and out["record"]["run_id"] == run["run_id"]:
            st.success(
                f"Signed decision **{out['decision_id']}**: {out['verdict']}, weight "
                f"{out['weight_before']}% → {out['weight_after']}%"
                + (
                    f"; MLflow run `{out['mlflow_run_id']}`."
                    if out.get("mlflow_run_id")
                    else f"; not yet in MLflow ({out.get('sync_error')}), stored locally."
                ),
                icon=":material/check:",
            )
        who = ui.identity()
        if who is None or not who.can_approve:
            st.info(
                "Only an approver can sign decisions. " + ui.lock_note(who),
                icon=":material/lock:",
            )
        else:
            with st.form("wb_sign", clear_on_submit=True):
                st.markdown(
                    f"Sign as **{who.signer}** with the workbench key: verdict **{preview.verdict}**, "
                    f"weight {preview.weight_before}% → {preview.weight_after}%. The record is chained, "
                    "applied to the canary weight and published to MLflow."
                )
                confirmed = st.checkbox("I have reviewed the evidence", key="wb_confirm")
                if st.form_submit_button("Sign and apply", type="primary"):
                    if not confirmed:
                        st.warning("Tick the box first.")
                    else:
                        settings = data.settings()
                        try:
                            keys = KeyRing.from_settings(settings)
                            signer = signer_for(who, keys, "sign a decision")
                            with data.database().write() as store:
                                out = decide(settings, store, keys, run["run_id"], policy, signer)
                        except WorkbenchError as e:
                            st.error(str(e))
                        else:
                            st.session_state["_wb_signed"] = out
                            data.refresh()
                            st.rerun()

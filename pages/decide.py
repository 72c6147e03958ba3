"""Decide: the policy, the verdict it gives this run with every check's numbers, and the ramp step it moves
to. Only an approver may sign and record the decision, with a justification and optionally an override of the
verdict (the library refuses anyone else); a decision awaiting approval takes another approver's signed approval.
Once you have signed a record of this run, the page shows what was signed instead of the form. The key stays on
the server (the library signs)."""

from pathlib import Path

import pandas as pd
import streamlit as st

from pages import charts, data, ui
from workbench import WorkbenchError
from workbench.decide.decisions import approve, decide
from workbench.decide.policy import Verdict, load_policy
from workbench.decide.signing import KeyRing
from workbench.ops.access import signer_for
from workbench.views import ramp_position

VERDICT_ICONS = {
    Verdict.PROMOTE: ":material/trending_up:",
    Verdict.HOLD: ":material/pause_circle:",
    Verdict.ROLLBACK: ":material/undo:",
}


def signed_summary(d: dict, state: str, me: str | None = None) -> None:
    """What was signed on a record: who, when, the justification and the verdict (an override named)."""
    with st.container(border=True):
        verdict = d["verdict"] + (f" (override of {d['override']['verdict']})" if d.get("override") else "")
        st.markdown(
            f"Decision **{d['decision_id']}** {state}: **{verdict}**, weight {d['weight_before']}% → "
            f"{d['weight_after']}%; {len(d.get('signed_by', []))} of {d.get('quorum', 1)} approvers signed."
        )
        rows = [{"who": d["signer"], "when": d["created_at"], "justification": d.get("justification"), "as": "signer"}]
        rows += [
            {"who": a["approver"], "when": a["created_at"], "justification": a["justification"], "as": "approver"}
            for a in d.get("approvals", [])
        ]
        st.dataframe(pd.DataFrame(rows), hide_index=True, key=f"signed_{d['decision_id']}")
        if d.get("override"):
            st.caption(f"Override reason: {d['override']['reason']}")
        if me is not None:
            st.caption(f"You ({me}) have signed this record; a second signature by you would not count.")


def approve_form(who, d: dict) -> None:
    """Sign an approval of a decision that awaits approval (its quorum reached, it applies)."""
    with st.form("wb_approve", clear_on_submit=True):
        st.markdown(
            f"Approve decision **{d['decision_id']}** as **{who.signer}**: your approval is a signed statement over "
            "the record's hash; the last one its quorum needs moves the weight."
        )
        why = st.text_area("Justification (required, signed)", key="wb_approve_justification")
        if st.form_submit_button("Approve", type="primary"):
            settings = data.settings()
            try:
                keys = KeyRing.from_settings(settings)
                signer = signer_for(who, keys, "approve a decision")
                with data.database().write() as store:
                    approve(settings, store, keys, d["decision_id"], why, signer)
            except WorkbenchError as e:
                st.error(str(e))
            else:
                data.refresh()
                st.rerun()


def sign_form(who, preview, policy) -> None:
    """Sign the decision with a justification, the policy's verdict or an override with its reason."""
    with st.form("wb_sign", clear_on_submit=True):
        st.markdown(
            f"Sign as **{who.signer}** with the workbench key: verdict **{preview.verdict}**, "
            f"weight {preview.weight_before}% → {preview.weight_after}%. The record is chained, "
            "applied to the canary weight (once the policy's quorum of approvers has signed) and published to MLflow."
        )
        why = st.text_area("Justification (required, signed into the record)", key="wb_justification")
        choices = [None] + [v for v in Verdict if v != preview.verdict]
        override = st.selectbox(
            "Verdict to sign",
            choices,
            format_func=lambda v: f"the policy's: {preview.verdict}" if v is None else f"override: {v}",
            key="wb_override",
        )
        reason = st.text_input("Reason for the override (required with one)", key="wb_override_reason")
        confirmed = st.checkbox("I have reviewed the evidence", key="wb_confirm")
        if st.form_submit_button("Sign and apply", type="primary"):
            if not confirmed:
                st.warning("Tick the box first.")
                return
            settings = data.settings()
            try:
                keys = KeyRing.from_settings(settings)
                signer = signer_for(who, keys, "sign a decision")
                with data.database().write() as store:
                    out = decide(
                        settings,
                        store,
                        keys,
                        preview.run["run_id"],
                        policy,
                        signer,
                        justification=why,
                        override=override,
                        override_reason=reason if override is not None else None,
                    )
            except WorkbenchError as e:
                st.error(str(e))
            else:
                st.session_state["_wb_signed"] = out
                data.refresh()
                st.rerun()


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
                    else (
                        "; awaiting approval."
                        if out.get("awaiting_approval")
                        else f"; not yet in MLflow ({out.get('sync_error')}), stored locally."
                    )
                ),
                icon=":material/check:",
            )
        who = ui.identity()
        records = data.sign_offs(run["run_id"])
        mine = next((d for d in records if who is not None and who.signer in d.get("signed_by", [])), None)
        waiting = next((d for d in records if d["awaiting_approval"]), None)
        if waiting is not None and waiting is not mine:
            signed_summary(waiting, "awaits approval")
        if who is None or not who.can_approve:
            st.info(
                "Only an approver can sign decisions. " + ui.lock_note(who),
                icon=":material/lock:",
            )
        elif mine is not None:
            signed_summary(mine, "awaits approval" if mine["awaiting_approval"] else "signed", who.signer)
        elif waiting is not None:
            approve_form(who, waiting)
        else:
            sign_form(who, preview, policy)

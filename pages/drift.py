"""Drift: per-feature data drift, prediction drift (a multi-class run's on its predicted-class distribution, drawn
per window), the concept drift timeline with its change point, data quality, and Evidently's own HTML report of
the same rows (from `workbench drift --html`)."""

from pathlib import Path

import pandas as pd
import streamlit as st
import streamlit.components.v1 as components

from pages import charts, data, ui
from workbench import WorkbenchError, views
from workbench.tasks import MULTICLASS

ui.ensure_navigation()
st.title("Drift")
run = ui.pick_run(finished_only=True)
if run is not None:
    ui.run_caption(run)
    report = data.drift(run["run_id"])
    if st.button(
        "Compute the drift report" if report is None else "Recompute",
        key="wb_drift_run",
        help="default reference: the earliest 20% of the run's traffic by event time; "
        "also writes Evidently's HTML report",
    ):
        try:
            data.jobs().submit_drift(run["run_id"], by=ui.identity())
            st.success("Drift report started in the background: see the Replay page for its progress.")
        except WorkbenchError as e:
            st.error(str(e))
    if report is None:
        st.info("This run has no drift report yet: compute it here or with `workbench drift RUN_ID --html PATH`.")
    else:
        ref, cur = report.get("reference") or {}, report.get("current") or {}
        a, b, c, d = st.columns(4)
        a.metric(
            "Drifted features",
            f"{report['share_drifted']:.0%}",
            help=f"dataset drift when at least {report.get('drift_share', 0.5):.0%} drift",
        )
        b.metric("Dataset drift", "yes" if report.get("dataset_drift") else "no")
        c.metric("Reference rows", f"{ref.get('rows', 0):,}", help=ref.get("description"))
        d.metric("Current rows", f"{cur.get('rows', 0):,}")
        st.caption(f"Reference: {ref.get('description', '?')} · report made {report.get('created_at')}")

        st.subheader("Data drift per feature")
        rows = views.feature_drift_rows(report)
        c1, c2 = st.columns([3, 2])
        c1.plotly_chart(charts.feature_drift(rows), key="feature_drift")
        c2.dataframe(
            pd.DataFrame(rows)[["feature", "drifted", "test", "statistic", "threshold", "kind", "method"]],
            hide_index=True,
            placeholder="",
            column_config={"statistic": st.column_config.NumberColumn(format="%.4g")},
        )

        multiclass = run.get("task") == MULTICLASS
        st.subheader("Prediction drift" + (" (predicted-class distribution)" if multiclass else ""))
        st.dataframe(
            pd.DataFrame(views.labelled(views.prediction_drift_rows(report))),
            hide_index=True,
            placeholder="",
            column_config={
                views.label(k): st.column_config.NumberColumn(format="%.4g")
                for k in ("statistic", "mean_abs_score_diff", "class_disagreement", "score")
            },
        )
        residual = views.residual_drift_rows(report)
        if residual:
            st.subheader("Residual drift (prediction - y, reference against current)")
            st.dataframe(
                pd.DataFrame(residual),
                hide_index=True,
                column_config={
                    k: st.column_config.NumberColumn(format="%.4g")
                    for k in ("statistic", "reference_bias", "current_bias", "reference_mae", "current_mae")
                },
            )
        b_ = data.breakdowns(run)
        period = st.radio("Window", ["day", "week", "month"], index=1, horizontal=True, key="wb_drift_period")
        windows = views.breakdown_rows(views.rollup(b_["day"], period)) if b_ else []
        if multiclass:  # the distribution of predicted classes, not a score
            counts = data.class_counts(run)
            shares = views.class_shares(counts, period) if counts else {}
            if any(s["keys"] for s in shares.values()):
                c1, c2 = st.columns(2)
                for col, role in zip((c1, c2), views.ROLES, strict=True):
                    col.plotly_chart(charts.class_shares(shares[role], role), key=f"class_shares_{role}")
        elif windows:
            st.plotly_chart(
                charts.by_group(windows, "mean_score", f"Mean score per {period}", time_axis=True), key="score_time"
            )

        st.subheader("Concept drift")
        concept = report.get("concept_drift") or {}
        cand = concept.get("candidate") or {}
        k1, k2, k3 = st.columns(3)
        k1.metric(
            "Baseline",
            "detected" if concept.get("detected") else "none",
            help=f"{concept.get('detector')} on {concept.get('stream')}",
        )
        k2.metric("Candidate", "detected" if cand.get("detected") else "none")
        k3.metric("Baseline change point", (concept.get("change_point") or "–")[:16])
        if windows and not residual:  # the error-rate timeline is a classifier's
            st.plotly_chart(charts.concept_timeline(windows, concept), key="concept")
        cal = report.get("calibration_drift") or {}
        st.caption(
            f"Calibration drift: baseline {'detected' if cal.get('detected') else 'none'}, candidate "
            f"{'detected' if (cal.get('candidate') or {}).get('detected') else 'none'}. Alarms: "
            f"{concept.get('alarm_count', 0)} (baseline), {cand.get('alarm_count', 0)} (candidate)."
        )

        st.subheader("Data quality (current rows)")
        st.dataframe(pd.DataFrame(views.labelled(views.quality_rows(report))), hide_index=True, placeholder="")

        st.subheader("Evidently report")
        html = report.get("html")
        if not html or not Path(html).is_file():
            st.caption(
                "No Evidently HTML report for this run: `workbench drift RUN_ID --html PATH`, or recompute here."
            )
        elif st.toggle("Show Evidently's report", key="wb_evidently"):
            components.html(Path(html).read_text(encoding="utf-8"), height=900, scrolling=True)
        else:
            st.caption(f"{html} ({Path(html).stat().st_size / 1e6:.1f} MB)")

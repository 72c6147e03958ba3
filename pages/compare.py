"""Compare: the scorecard with intervals, paired deltas, curves, confusion, calibration, latency and what each
model costs to run, segments, time windows and the requests where the two models disagree; for a regression run,
predicted vs actual and the residuals per segment instead of the classifier's curves and disagreements (and, when
its models predict quantiles, the pinball loss per level and the central interval's coverage); for a
multi-class run, each model's confusion matrix and the per-class deltas instead of the binary curves. Every
chart is drawn from aggregates computed in DuckDB (pages/data.py), never from the run's rows."""

import pandas as pd
import streamlit as st

from pages import charts, data, ui
from workbench import views, views_tasks
from workbench.tasks import MULTICLASS, REGRESSION

DIFFERENCE_STYLES = {
    "candidate better": "color: #1a7f37; font-weight: bold",
    "baseline better": "color: #cf222e; font-weight: bold",
    "no significant difference": "color: #6e7781",
}

SECTIONS = ["Scorecard", "Curves", "Latency", "Segments & windows", "Disagreements"]
REGRESSION_SECTIONS = ["Scorecard", "Predicted vs actual", "Latency", "Segments & windows"]
MULTICLASS_SECTIONS = ["Scorecard", "Classes", "Latency", "Segments & windows"]
CLASS_DELTAS = ("recall", "f1")  # drawn per class; the table has every per-class metric


def regression_view(run: dict) -> None:
    """Predicted vs actual per model (binned heat maps) and the residuals per value of a segment column."""
    s = data.regression_summary(run)
    maps = {} if s is None else {r: views_tasks.predicted_vs_actual(s, r, data.REGRESSION_BINS) for r in views.ROLES}
    heat = {r: h for r, h in maps.items() if h is not None}
    if s is None or len(heat) < len(views.ROLES):
        st.info("No labelled rows that both models predicted yet: ingest the numeric labels (`workbench labels`).")
        return
    c1, c2 = st.columns(2)
    for col, role in zip((c1, c2), views.ROLES, strict=True):
        col.plotly_chart(charts.predicted_vs_actual(heat[role], role), key=f"pva_{role}")
    lo, hi = s["range"]
    st.caption(
        f"{data.REGRESSION_BINS} x {data.REGRESSION_BINS} bins from {lo:.4g} to {hi:.4g} (the 0.5 % to 99.5 % "
        "quantiles of targets and predictions; values beyond fall in the edge bins); colour: log10 of the rows."
    )
    cols = [c for c, groups in s["segments"].items() if groups]
    if cols:
        st.subheader("Residuals per segment")
        col = st.selectbox("Segment by", cols, key="wb_reg_segment")
        rows = views_tasks.residual_rows(s, col)
        st.plotly_chart(charts.residuals_by_segment(rows, col), key="residuals_by_segment")
        st.dataframe(
            pd.DataFrame(views.labelled(rows)),
            hide_index=True,
            placeholder="",
            column_config={
                views.label(k): st.column_config.NumberColumn(format="%.4g")
                for k in ("baseline_mae", "candidate_mae", "delta_mae", "baseline_bias", "candidate_bias")
            },
        )


def quantile_view(ev: dict) -> None:
    """A quantile regression run: each model's pinball loss per level with the paired deltas, and the coverage
    of the central interval against its nominal level."""
    rows = views_tasks.quantile_rows(ev)
    if not rows:
        st.info("This run stored no quantiles (its models give none, or not the same levels).")
        return
    cov = views_tasks.interval_coverage(ev)
    if cov is not None:
        st.subheader(f"Central {cov['nominal']:.0%} interval (q{cov['lower']:g} to q{cov['upper']:g})")
        a, b, c = st.columns(3)
        a.metric("Nominal coverage", f"{cov['nominal']:.1%}")
        for col, role in zip((b, c), views.ROLES, strict=True):
            value, lo, hi = cov["coverage"][role]
            col.metric(
                f"{role.capitalize()} coverage",
                ui.num(value, "{:.1%}"),
                delta=None if value is None else f"{100 * (value - cov['nominal']):+.1f} percentage points vs nominal",
                delta_color="off",
                help=f"interval {ui.ci(lo, hi, '{:.1%}')}; width {ui.num(cov['interval_width'][role][0])}",
            )
    st.subheader("Pinball loss per quantile level")
    st.plotly_chart(charts.pinball_by_level(rows), key="pinball_by_level")
    st.plotly_chart(
        charts.deltas(
            [r | {"quantile": f"q{r['level']:g}"} for r in rows],
            y_key="quantile",
            title="Pinball loss: candidate − baseline per level",
            x_title="candidate − baseline pinball loss (the target's unit)",
            y_title="quantile level",
        ),
        key="pinball_deltas",
    )
    st.dataframe(
        pd.DataFrame(
            [
                {"level": r["level"], "baseline": r["baseline"], "candidate": r["candidate"], "delta": r["delta"]}
                | {"delta interval": ui.ci(r["delta_ci_low"], r["delta_ci_high"], "{:+.4g}")}
                | {"difference": views.difference_text(r)}
                for r in rows
            ]
        ),
        hide_index=True,
    )


def multiclass_view(ev: dict) -> None:
    """Each model's confusion matrix (shares of each true class) and the per-class deltas with their intervals."""
    got = {r: views_tasks.class_confusion(ev, r) for r in views.ROLES}
    cms = {r: cm for r, cm in got.items() if cm is not None}
    if len(cms) < len(views.ROLES):
        st.info("No confusion matrices in this run's evaluation: ingest the class labels and evaluate the run.")
        return
    c1, c2 = st.columns(2)
    for col, role in zip((c1, c2), views.ROLES, strict=True):
        col.plotly_chart(charts.class_confusion(cms[role], role), key=f"mc_cm_{role}")
    excluded = sum((ev.get("excluded_labels") or {}).values())
    st.caption(
        "Each row is a true class: the share of its rows each model predicted as each class (counts in the hover)."
        + (f" {excluded:,} labels that are not one of the run's classes are left out." if excluded else "")
    )
    st.subheader("Per-class differences")
    c1, c2 = st.columns(2)
    for col, metric in zip((c1, c2), CLASS_DELTAS, strict=True):
        col.plotly_chart(
            charts.deltas(
                views_tasks.class_rows(ev, metric),
                y_key="class",
                title=f"{metric} per class: candidate − baseline",
                x_title="candidate − baseline",
            ),
            key=f"mc_delta_{metric}",
        )
    rows = [r for m in ev.get("per_class_delta") or {} for r in views_tasks.class_rows(ev, m)]
    table = pd.DataFrame(
        [
            {
                "class": r["class"],
                "metric": r["metric"],
                "baseline": ui.num(r["baseline"]) + " " + ui.ci(r["baseline_ci_low"], r["baseline_ci_high"]),
                "candidate": ui.num(r["candidate"]) + " " + ui.ci(r["candidate_ci_low"], r["candidate_ci_high"]),
                "delta": ui.num(r["delta"], "{:+.4f}") + " " + ui.ci(r["delta_ci_low"], r["delta_ci_high"], "{:+.4f}"),
                "p-value": ui.num(r["p_value"], "{:.3g}"),
                "difference": views.difference_text(r),
            }
            for r in rows
        ]
    )
    st.dataframe(
        table.style.map(lambda v: DIFFERENCE_STYLES.get(v, ""), subset=["difference"]),
        hide_index=True,
        key="mc_class_table",
    )


ui.ensure_navigation()
st.title("Compare")
run = ui.pick_run()
if run is not None:
    ui.run_caption(run)
    ev = data.evaluation(run["run_id"]) or {}
    regression = run.get("task") == REGRESSION
    multiclass = run.get("task") == MULTICLASS
    section = (
        st.segmented_control(
            "Section",
            (REGRESSION_SECTIONS + (["Quantiles"] if ev.get("quantiles") else []))
            if regression
            else MULTICLASS_SECTIONS
            if multiclass
            else SECTIONS,
            default="Scorecard",
            key="wb_compare_section",
            label_visibility="collapsed",
        )
        or "Scorecard"
    )

    if section == "Scorecard":
        if not ev:
            st.info(
                "This run has no evaluation yet: `workbench evaluate RUN_ID` (or tick *Evaluate when done* on "
                "the Replay page)."
            )
        else:
            if ev.get("stale"):
                st.warning(
                    f"This evaluation is out of date: {ev['stale']}. Evaluate the run again: "
                    f"`workbench evaluate {run['run_id']}`."
                )
            conf = ev.get("confidence")
            a, b, c = st.columns(3)
            a.metric("Labelled rows", f"{ev.get('labeled_rows', 0):,}")
            b.metric("Label coverage", f"{ev.get('label_coverage', 0):.1%}")
            c.metric("Confidence", f"{conf:.0%}" if conf else "no intervals")
            rows = views.metric_rows(ev)
            st.subheader("Scorecard")
            table = pd.DataFrame(
                [
                    {
                        "metric": r["metric"],
                        "baseline": ui.num(r["baseline"]) + " " + ui.ci(r["baseline_ci_low"], r["baseline_ci_high"]),
                        "candidate": ui.num(r["candidate"])
                        + " "
                        + ui.ci(r["candidate_ci_low"], r["candidate_ci_high"]),
                        "delta": ui.num(r["delta"], "{:+.4f}")
                        + " "
                        + ui.ci(r["delta_ci_low"], r["delta_ci_high"], "{:+.4f}"),
                        "p-value": ui.num(r["p_value"], "{:.3g}"),
                        "MDE": ui.num(r["mde"]),
                        "difference": views.difference_text(r),
                    }
                    for r in rows
                ]
            ).set_index("metric")
            st.table(table.style.map(lambda v: DIFFERENCE_STYLES.get(v, ""), subset=["difference"]))
            if not conf:
                st.caption(
                    "This evaluation has point values only (no intervals or p-values): re-evaluate with "
                    "the interval engine to judge on bounds."
                )
            st.plotly_chart(charts.deltas(rows), key="deltas")
            st.subheader("Errors")
            st.dataframe(pd.DataFrame(views.labelled(views.error_rows(ev))), hide_index=True, placeholder="")

    elif section == "Curves":
        s = data.summary(run)
        if s:
            bins = data.SCORE_BINS
            curves = {r: views.curves(s["scores"], r, bins) for r in views.ROLES}
            aucs = {r: views.interval((ev.get(r) or {}).get("roc_auc"))[0] or curves[r].roc_auc for r in views.ROLES}
            c1, c2 = st.columns(2)
            c1.plotly_chart(charts.roc(curves, aucs), key="roc")
            c2.plotly_chart(charts.pr(curves), key="pr")
            cal = {r: views.calibration(s["scores"], r, bins, data.CALIBRATION_BINS) for r in views.ROLES}
            c1, c2 = st.columns(2)
            c1.plotly_chart(charts.calibration(cal), key="calibration")
            agree = views.agreement(s["pairs"])
            c2.plotly_chart(charts.paired(agree["paired"]), key="paired")
            c1, c2 = st.columns(2)
            for col, role in zip((c1, c2), views.ROLES, strict=True):
                col.plotly_chart(charts.confusion(views.confusion(s["pairs"], role), role), key=f"cm_{role}")
            st.caption(
                f"Curves at {bins + 1} thresholds (k/{bins}) from score histograms per label; classes at "
                f"each model's own threshold ({(ev.get('thresholds') or {}).get('baseline', '?')} / "
                f"{(ev.get('thresholds') or {}).get('candidate', '?')}). AUC in the legend is the "
                "evaluation's exact value when it has one."
            )

    elif section == "Predicted vs actual":
        regression_view(run)

    elif section == "Quantiles":
        quantile_view(ev)

    elif section == "Classes":
        multiclass_view(ev)

    elif section == "Latency":
        s = data.summary(run)
        q = data.latency_quantiles(run)
        if s:
            rows = views.latency_rows(ev, q, data.LATENCY_PROBS)
            c1, c2 = st.columns([3, 2])
            hists = {r: views.latency_histogram(s["latency"], r, data.LATENCY_PER_DECADE) for r in views.ROLES}
            c1.plotly_chart(charts.latency(hists), key="latency")
            c2.plotly_chart(charts.percentiles(rows), key="percentiles")
            st.dataframe(
                pd.DataFrame(
                    [
                        {
                            "percentile": r["percentile"].upper(),
                            "baseline": views.duration(r["baseline_ms"]),
                            "candidate": views.duration(r["candidate_ms"]),
                            "candidate − baseline": views.duration(r["delta_ms"], signed=True),
                            "interval": views.bounds(r["delta_ci_low"], r["delta_ci_high"], views.duration),
                            "candidate / baseline": f"{views.number(r['ratio'], digits=3)}×" if r["ratio"] else "",
                            "from": r["source"],
                        }
                        for r in rows
                    ]
                ),
                hide_index=True,
            )
            p = (ev.get("latency") or {}).get("mann_whitney_p")
            if p is not None:
                st.caption(f"Mann-Whitney U p-value (candidate vs baseline latency): {p:.4g}")
        st.subheader("Resources")
        res = ev.get("resources")
        if not res:
            st.info("No resource measurements in this run's evaluation: replay and evaluate the run again.")
        else:
            c1, c2 = st.columns([3, 2])
            res_rows = views.resource_rows(res)
            c1.plotly_chart(charts.resource_ratios(res_rows), key="resource_ratios")
            c2.dataframe(
                pd.DataFrame(res_rows).drop(columns="metric").set_index("resource"),
                column_config={
                    k: st.column_config.NumberColumn(format="%.4g") for k in ("baseline", "candidate", "ratio")
                },
            )
            cost = res["cost"]
            st.dataframe(
                pd.DataFrame(views.cost_rows(res)),
                hide_index=True,
                column_config={r: st.column_config.NumberColumn(format="$%.4g") for r in views.ROLES},
            )
            st.caption(
                "Cost per million requests: "
                + ", ".join(f"{k.replace('_', ' ')} ${v:g}" for k, v in cost["prices"].items())
                + f". Assumptions: {cost['assumptions']}. Measured in a {res.get('mode')} replay"
                + (f" at concurrency {res['concurrency']}" if res.get("concurrency") else "")
                + "; CPU scope: "
                + ", ".join(f"{r} {s}" for r, s in (res.get("cpu_scope") or {}).items())
                + "."
            )

    elif section == "Segments & windows":
        seg_rows = views.segment_rows(ev)
        win_rows = views.window_rows(ev)
        if seg_rows or win_rows:
            st.subheader("From the evaluation (with intervals)")
            for got in (seg_rows, win_rows):
                if got:
                    st.dataframe(
                        pd.DataFrame(views.labelled(got, drop=("higher_is_better", "significant"))),
                        hide_index=True,
                        placeholder="",
                    )
        breakdowns = None if regression or multiclass else data.breakdowns(run)  # a binary classifier's accuracy
        if breakdowns:
            st.subheader("Accuracy per time window")
            period = st.radio("Window", ["day", "week", "month"], index=1, horizontal=True, key="wb_period")
            windows = views.breakdown_rows(views.rollup(breakdowns["day"], period))
            st.plotly_chart(
                charts.by_group(windows, "accuracy", f"Accuracy per {period}", time_axis=True), key="by_time"
            )
            cols = [c for c in breakdowns if c != "day"]
            if cols:
                st.subheader("Accuracy per segment")
                col = st.selectbox("Segment by", cols, key="wb_segment")
                segs = views.breakdown_rows(views.largest(breakdowns[col], 40))
                st.plotly_chart(
                    charts.by_group(segs, "accuracy", f"Accuracy per {col} (largest 40 groups)", x_title=col),
                    key="by_segment",
                )
                st.dataframe(pd.DataFrame(views.labelled(segs)), hide_index=True, placeholder="")

    elif section == "Disagreements":
        s = data.summary(run)
        if s:
            agree = views.agreement(s["pairs"])
            a, b_, c = st.columns(3)
            a.metric("Rows both scored", f"{agree['rows']:,}")
            b_.metric("Classes differ", f"{agree['disagree']:,}")
            c.metric("Disagreement rate", ui.num(agree["disagree_rate"], "{:.2%}"))
        limit = st.select_slider(
            "Rows to show (largest score gaps first)", [50, 100, 200, 500], value=100, key="wb_dis_limit"
        )
        df = data.disagreements(run, limit)
        if df is not None:
            st.dataframe(df, hide_index=True)

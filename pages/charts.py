"""Plotly figures over the view data of :mod:`workbench.views` (drawing only, no computation)."""

from __future__ import annotations

import plotly.graph_objects as go

from workbench.roles import ROLES

COLORS = {"baseline": "#636EFA", "candidate": "#EF553B"}


def _layout(fig: go.Figure, height: int = 340, **kw) -> go.Figure:
    fig.update_layout(height=height, margin=dict(t=36, b=10, l=10, r=10), legend=dict(orientation="h", y=-0.18), **kw)
    return fig


def roc(curves: dict, aucs: dict) -> go.Figure:
    fig = go.Figure(
        [
            go.Scatter(
                x=[0, 1],
                y=[0, 1],
                mode="lines",
                line=dict(dash="dot", color="#aaa"),
                showlegend=False,
                hoverinfo="skip",
            )
        ]
    )
    for role in ROLES:
        c = curves[role]
        auc = aucs.get(role)
        fig.add_scatter(
            x=c.fpr,
            y=c.tpr,
            mode="lines",
            name=f"{role}" + (f" (AUC {auc:.3f})" if auc else ""),
            line=dict(color=COLORS[role]),
            customdata=c.thresholds,
            hovertemplate="threshold %{customdata:.3f}<br>FPR %{x:.3f}<br>TPR %{y:.3f}",
        )
    return _layout(fig, title="ROC", xaxis_title="false positive rate", yaxis_title="true positive rate")


def pr(curves: dict) -> go.Figure:
    fig = go.Figure()
    for role in ROLES:
        c = curves[role]
        fig.add_scatter(
            x=c.tpr,
            y=c.precision,
            mode="lines",
            name=role,
            line=dict(color=COLORS[role]),
            customdata=c.thresholds,
            hovertemplate="threshold %{customdata:.3f}<br>recall %{x:.3f}<br>precision %{y:.3f}",
        )
    return _layout(fig, title="Precision-recall", xaxis_title="recall", yaxis_title="precision", yaxis_range=[0, 1.02])


def calibration(cal: dict) -> go.Figure:
    fig = go.Figure(
        [go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="#aaa"), name="perfectly calibrated")]
    )
    for role in ROLES:
        c = cal[role]
        fig.add_scatter(
            x=c.mean_score,
            y=c.positive_rate,
            mode="lines+markers",
            name=role,
            line=dict(color=COLORS[role]),
            customdata=c.rows,
            hovertemplate="mean score %{x:.3f}<br>positive rate %{y:.3f}<br>%{customdata:,} rows",
        )
    return _layout(
        fig, title="Calibration (reliability)", xaxis_title="mean predicted score", yaxis_title="observed positive rate"
    )


def confusion(matrix, role: str) -> go.Figure:
    total = matrix.sum() or 1
    text = [[f"{v:,}<br>{v / total:.1%}" for v in row] for row in matrix]
    fig = go.Figure(
        go.Heatmap(
            z=matrix,
            x=["predicted 0", "predicted 1"],
            y=["label 0", "label 1"],
            text=text,
            texttemplate="%{text}",
            colorscale="Blues",
            showscale=False,
        )
    )
    return _layout(fig, height=280, title=f"{role} confusion", yaxis_autorange="reversed")


def paired(table) -> go.Figure:
    text = [[f"{v:,}" for v in row] for row in table]
    fig = go.Figure(
        go.Heatmap(
            z=table,
            x=["candidate wrong", "candidate right"],
            y=["baseline wrong", "baseline right"],
            text=text,
            texttemplate="%{text}",
            colorscale="Greens",
            showscale=False,
        )
    )
    return _layout(fig, height=280, title="paired outcomes (labelled rows)", yaxis_autorange="reversed")


def latency(hists: dict) -> go.Figure:
    fig = go.Figure()
    for role in ROLES:
        h = hists[role]
        fig.add_bar(
            x=(h["lo"] * h["hi"]) ** 0.5,
            y=h["share"],
            width=h["hi"] - h["lo"],
            name=role,
            opacity=0.6,
            marker_color=COLORS[role],
            customdata=h["rows"],
            hovertemplate="%{x:.3g} ms<br>%{y:.2%} of rows (%{customdata:,})",
        )
    return _layout(
        fig,
        title="Latency distribution",
        barmode="overlay",
        xaxis_type="log",
        xaxis_title="latency per request (ms, log scale)",
        yaxis_title="share of rows",
        yaxis_tickformat=".0%",
    )


def percentiles(rows: list[dict]) -> go.Figure:
    fig = go.Figure()
    for role in ROLES:
        fig.add_bar(
            x=[r["percentile"] for r in rows], y=[r[f"{role}_ms"] for r in rows], name=role, marker_color=COLORS[role]
        )
    return _layout(fig, title="Latency percentiles", barmode="group", yaxis_title="ms")


def resource_ratios(rows: list[dict]) -> go.Figure:
    """Candidate / baseline for each measured resource, on a log axis (1 = the same cost)."""
    rows = [r for r in rows if r["ratio"] is not None and r["ratio"] > 0]
    color = ["#d62728" if r["ratio"] > 1 and r["metric"] != "throughput_rps" else "#2ca02c" for r in rows]
    fig = go.Figure(
        go.Bar(
            x=[r["ratio"] for r in rows],
            y=[r["resource"] for r in rows],
            orientation="h",
            marker_color=color,
            hovertemplate="%{y}: %{x:.3g}x the baseline<extra></extra>",
        )
    )
    fig.add_vline(x=1, line_dash="dot", line_color="#888")
    return _layout(
        fig,
        title="Candidate / baseline (log scale)",
        height=80 + 34 * max(1, len(rows)),
        xaxis_type="log",
    )


def deltas(rows: list[dict]) -> go.Figure:
    """Forest plot: each metric's paired delta with its interval."""
    rows = [r for r in rows if r["delta"] is not None]
    y = [r["metric"] for r in rows]
    x = [r["delta"] for r in rows]
    lo = [r["delta"] - r["delta_ci_low"] if r["delta_ci_low"] is not None else 0 for r in rows]
    hi = [r["delta_ci_high"] - r["delta"] if r["delta_ci_high"] is not None else 0 for r in rows]
    color = ["#2ca02c" if r["improved"] else "#d62728" if r["improved"] is False else "#888" for r in rows]
    fig = go.Figure(
        go.Scatter(
            x=x,
            y=y,
            mode="markers",
            marker=dict(size=10, color=color),
            error_x=dict(type="data", symmetric=False, array=hi, arrayminus=lo),
            hovertemplate="%{y}: %{x:+.4f}<extra></extra>",
        )
    )
    fig.add_vline(x=0, line_dash="dot", line_color="#888")
    return _layout(
        fig,
        height=60 + 34 * max(1, len(rows)),
        title="Candidate − baseline (with intervals)",
        yaxis_autorange="reversed",
    )


def by_group(rows: list[dict], metric: str, title: str, time_axis: bool = False) -> go.Figure:
    fig = go.Figure()
    x = [r["key"] if time_axis else str(r["key"]) for r in rows]
    for role in ROLES:
        y = [r[f"{role}_{metric}"] for r in rows]
        if time_axis:
            fig.add_scatter(x=x, y=y, mode="lines+markers", name=role, line=dict(color=COLORS[role]))
        else:
            fig.add_bar(x=x, y=y, name=role, marker_color=COLORS[role])
    fig.add_bar(x=x, y=[r["rows"] for r in rows], name="rows", yaxis="y2", marker_color="#ccc", opacity=0.35)
    return _layout(
        fig,
        title=title,
        barmode="group",
        yaxis_title=metric.replace("_", " "),
        yaxis2=dict(overlaying="y", side="right", showgrid=False, title="rows"),
    )


def feature_drift(rows: list[dict]) -> go.Figure:
    rows = [r for r in rows if r["score"] is not None]
    fig = go.Figure(
        go.Bar(
            y=[r["feature"] for r in rows],
            x=[min(max(r["score"], 1e-3), 50) for r in rows],
            orientation="h",
            marker_color=["#d62728" if r["drifted"] else "#1f77b4" for r in rows],
            customdata=[[r["test"], r["statistic"], r["threshold"]] for r in rows],
            hovertemplate="%{y}: %{customdata[0]} statistic %{customdata[1]:.4g} (threshold %{customdata[2]})"
            "<extra></extra>",
        )
    )
    fig.add_vline(x=1, line_dash="dash", line_color="#444", annotation_text="threshold")
    return _layout(
        fig,
        height=80 + 26 * max(1, len(rows)),
        title="Drift per feature (red: drifted)",
        xaxis_title="statistic against its threshold (distance / threshold, or log p / log threshold; "
        "> 1 drifts; log scale)",
        xaxis_type="log",
        yaxis_autorange="reversed",
    )


def concept_timeline(rows: list[dict], concept: dict) -> go.Figure:
    """Error rate per window of each model, with the detected change points and alarms."""
    fig = by_group(rows, "error_rate", "Error rate over time (labelled rows)", time_axis=True)
    marks = [("baseline", concept)] + ([("candidate", concept.get("candidate"))] if concept.get("candidate") else [])
    for role, c in marks:
        if c and c.get("change_point"):
            fig.add_vline(
                x=_ms(c["change_point"]),
                line_dash="dash",
                line_color=COLORS[role],
                annotation_text=f"{role} change point",
                annotation_position="top left",
            )
        if c and c.get("detected_at"):
            fig.add_vline(
                x=_ms(c["detected_at"]),
                line_dash="dot",
                line_color=COLORS[role],
                annotation_text=f"{role} alarm",
                annotation_position="bottom right",
            )
    return fig


def _ms(iso: str):
    """An ISO time as plotly's vline wants it on a date axis (milliseconds since the epoch)."""
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000


def ramp(position: dict) -> go.Figure:
    steps = [0] + position["ramp"]
    w = position["weight"]
    fig = go.Figure(
        go.Bar(
            x=[f"{s}%" for s in steps],
            y=[1] * len(steps),
            marker_color=["#EF553B" if s == w else "#ddd" if s > w else "#f4a99b" for s in steps],
            hoverinfo="skip",
        )
    )
    fig.update_yaxes(visible=False)
    fig.update_xaxes(type="category")
    fig.update_layout(height=110, margin=dict(t=4, b=4, l=4, r=4), showlegend=False, bargap=0.15)
    return fig


MARKS = {
    "kill": ("x", "#cf222e", "kill"),
    "pause": ("line-ns-open", "#9a6700", "pause"),
    "resume": ("circle", "#1a7f37", "resume"),
}


def weight_history(rows: list[dict], now) -> go.Figure:
    """The canary weight after each applied record as a step line up to ``now``; kills, pauses and resumes marked."""
    times = [r["time"] for r in rows] + [now]
    weights = [r["weight"] for r in rows] + [rows[-1]["weight"]]
    hover = [f"{r['kind']} · {r['verdict']} → {r['weight']}%<br>{r['signer']}: {r['reason']}" for r in rows] + ["now"]
    fig = go.Figure(
        go.Scatter(
            x=times,
            y=weights,
            mode="lines+markers",
            line=dict(shape="hv", color=COLORS["candidate"]),
            marker=dict(size=5),
            name="weight",
            hovertext=hover,
            hoverinfo="text+x",
        )
    )
    for kind, (symbol, color, label) in MARKS.items():
        marked = [r for r in rows if r["kind"] == kind]
        if marked:
            fig.add_scatter(
                x=[r["time"] for r in marked],
                y=[r["weight"] for r in marked],
                mode="markers",
                marker=dict(symbol=symbol, size=13, color=color, line=dict(width=2, color=color)),
                name=label,
                hovertext=[f"{r['kind']} by {r['signer']}: {r['reason']}" for r in marked],
                hoverinfo="text+x",
            )
    top = max(max(weights), 5)  # a 1 % step stays visible; the axis grows with the ramp
    fig.update_yaxes(title="candidate weight (%)", range=[-top * 0.05, top * 1.05])
    return _layout(fig, height=300)


def live_series(series: list[dict]) -> go.Figure:
    """Requests per second of each arm over the window (bars, top) and each arm's error rate (bottom)."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.6, 0.4], vertical_spacing=0.06)
    for arm in ROLES:
        rows = [s for s in series if s["arm"] == arm]
        x = [s["time"] for s in rows]
        fig.add_bar(x=x, y=[s["per_s"] for s in rows], name=arm, marker_color=COLORS[arm], row=1, col=1)
        fig.add_scatter(
            x=x,
            y=[s["error_rate"] for s in rows],
            name=f"{arm} errors",
            mode="lines+markers",
            line=dict(color=COLORS[arm]),
            marker=dict(size=4),
            connectgaps=False,
            showlegend=False,
            row=2,
            col=1,
        )
    fig.update_layout(barmode="group", bargap=0.1)
    fig.update_yaxes(title_text="requests/s", row=1, col=1)
    fig.update_yaxes(title_text="error rate", tickformat=".0%", rangemode="tozero", row=2, col=1)
    return _layout(fig, height=380)


def predicted_vs_actual(heat: dict, role: str) -> go.Figure:
    """One model's predictions against the targets as a binned heat map (log-scaled counts, so sparse tails
    show), with the diagonal where prediction = target."""
    centers, counts = heat["centers"], heat["counts"]
    fig = go.Figure(
        go.Heatmap(
            z=heat["log_counts"],
            x=centers,
            y=centers,
            customdata=counts,
            hovertemplate="actual %{x:.4g}<br>predicted %{y:.4g}<br>rows %{customdata:,}<extra></extra>",
            colorscale="Blues",
            showscale=False,
        )
    )
    lo, hi = float(centers[0]), float(centers[-1])
    fig.add_trace(
        go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", line={"color": COLORS[role], "dash": "dash"}, name="y = x")
    )
    return _layout(
        fig,
        height=360,
        title=f"{role}: predicted vs actual ({heat['rows']:,} labelled rows)",
        xaxis_title="actual",
        yaxis_title="predicted",
        showlegend=False,
    )


def residuals_by_segment(rows: list[dict], column: str) -> go.Figure:
    """Each model's MAE per value of a segment column (bars) and its mean residual, the bias (markers)."""
    x = [str(r["value"]) for r in rows]
    fig = go.Figure()
    for role in ROLES:
        fig.add_trace(go.Bar(x=x, y=[r[f"{role}_mae"] for r in rows], name=f"{role} MAE", marker_color=COLORS[role]))
        fig.add_trace(
            go.Scatter(
                x=x,
                y=[r[f"{role}_bias"] for r in rows],
                mode="markers",
                name=f"{role} bias",
                marker={"color": COLORS[role], "symbol": "diamond-open", "size": 9},
            )
        )
    return _layout(fig, height=360, title=f"Residuals per {column} (MAE and bias)", barmode="group")

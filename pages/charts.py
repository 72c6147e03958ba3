"""Plotly figures over the view data of :mod:`workbench.views` (drawing only, no computation)."""

from __future__ import annotations

import math
from collections.abc import Callable

import plotly.graph_objects as go

from workbench.roles import ROLES
from workbench.views import duration

COLORS = {"baseline": "#636EFA", "candidate": "#EF553B"}


def _layout(fig: go.Figure, height: int = 340, **kw) -> go.Figure:
    """Common layout: the legend above the plot on the right (clear of the axis titles), titles on the left."""
    if isinstance(kw.get("title"), str):  # the title on a line of its own, above the legend
        kw["title"] = dict(text=kw["title"], x=0, xanchor="left", yref="container", y=1, yanchor="top", pad=dict(t=8))
    fig.update_layout(
        height=height,
        margin=dict(t=80, b=10, l=10, r=10),
        legend=dict(orientation="h", yanchor="bottom", y=1.01, xanchor="right", x=1),
    )
    fig.update_layout(**kw)
    return fig


def log_ticks(values, fmt: Callable[[float], str] = lambda v: f"{v:g}") -> dict:
    """Axis settings for a log axis with a readable label at each tick: powers of ten, and 2 and 5 between them
    when the values span two decades or less (plotly's own minor labels read "2 5 1 2 5 10 2")."""
    vals = [float(v) for v in values if v is not None and v > 0]
    if not vals:
        return {"type": "log"}
    lo, hi = math.floor(math.log10(min(vals))), math.ceil(math.log10(max(vals)))
    hi = max(hi, lo + 1)
    steps = (1, 2, 5) if hi - lo <= 2 else (1,)
    ticks = [m * 10.0**e for e in range(lo, hi + 1) for m in steps if m * 10.0**e <= 10.0**hi]
    return {"type": "log", "tickvals": ticks, "ticktext": [fmt(t) for t in ticks]}


def time_unit(max_ms: float | None) -> tuple[float, str]:
    """(factor, unit) that shows milliseconds up to ``max_ms`` in ns, µs, ms or s (as ``workbench.views.duration``)."""
    if max_ms is not None and 0 < max_ms < 0.001:
        return 1e6, "ns"
    if max_ms is not None and 0 < max_ms < 1:
        return 1000.0, "µs"
    if max_ms is not None and max_ms >= 1000:
        return 0.001, "s"
    return 1.0, "ms"


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
            x=["0", "1"],
            y=["0", "1"],
            text=text,
            texttemplate="%{text}",
            colorscale="Blues",
            showscale=False,
        )
    )
    fig.update_xaxes(type="category", title="predicted class")
    fig.update_yaxes(type="category", title="label", autorange="reversed")
    return _layout(fig, height=300, title=f"{role} confusion")


def class_confusion(cm: dict, role: str) -> go.Figure:
    """One model's multi-class confusion matrix as a heat map of each true class's shares (rows sum to 1), with
    the counts in the cells and the hover."""
    classes, counts, shares = cm["classes"], cm["counts"], cm["shares"]
    fig = go.Figure(
        go.Heatmap(
            z=shares,
            x=classes,
            y=classes,
            zmin=0,
            zmax=1,
            customdata=counts,
            text=[[f"{s:.0%}" if s == s else "" for s in row] for row in shares],
            texttemplate="%{text}",
            hovertemplate="true %{y}, predicted %{x}<br>%{z:.1%} of the true class<br>%{customdata:,} rows"
            "<extra></extra>",
            colorscale="Blues",
            showscale=False,
        )
    )
    fig.update_xaxes(type="category", title="predicted class")
    fig.update_yaxes(type="category", title="true class", autorange="reversed")
    return _layout(fig, height=200 + 40 * len(classes), title=f"{role} confusion ({cm['rows']:,} labelled rows)")


def paired(table) -> go.Figure:
    text = [[f"{v:,}" for v in row] for row in table]
    fig = go.Figure(
        go.Heatmap(
            z=table,
            x=["wrong", "right"],
            y=["wrong", "right"],
            text=text,
            texttemplate="%{text}",
            colorscale="Greens",
            showscale=False,
        )
    )
    fig.update_xaxes(title="candidate")
    fig.update_yaxes(title="baseline", autorange="reversed")
    return _layout(fig, height=300, title="Paired outcomes (labelled rows)")


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
            customdata=[[n, duration(a), duration(b)] for n, a, b in zip(h["rows"], h["lo"], h["hi"], strict=True)],
            hovertemplate="%{customdata[1]} to %{customdata[2]}<br>%{y:.2%} of rows (%{customdata[0]:,})"
            "<extra>%{fullData.name}</extra>",
        )
    edges = [x for role in ROLES for x in (*hists[role]["lo"], *hists[role]["hi"])]
    fig.update_xaxes(title="latency per request (log scale)", **log_ticks(edges, duration))
    return _layout(
        fig, title="Latency distribution", barmode="overlay", yaxis_title="share of rows", yaxis_tickformat=".0%"
    )


def percentiles(rows: list[dict]) -> go.Figure:
    """Each model's latency percentiles, in the unit that reads best (µs, ms or s)."""
    factor, unit = time_unit(max((r[f"{role}_ms"] or 0 for r in rows for role in ROLES), default=None))
    fig = go.Figure()
    for role in ROLES:
        fig.add_bar(
            x=[r["percentile"].upper() for r in rows],
            y=[None if r[f"{role}_ms"] is None else r[f"{role}_ms"] * factor for r in rows],
            name=role,
            marker_color=COLORS[role],
            hovertemplate=f"%{{x}}: %{{y:.3g}} {unit}<extra>{role}</extra>",
        )
    return _layout(
        fig, title="Latency percentiles", barmode="group", yaxis_title=f"latency ({unit})", xaxis_title="percentile"
    )


def resource_ratios(rows: list[dict]) -> go.Figure:
    """Candidate / baseline for each measured resource, on a log axis (1 = the same cost)."""
    rows = [r for r in rows if r["ratio"] is not None and r["ratio"] > 0]
    color = ["#d62728" if r["ratio"] > 1 and r["metric"] != "throughput_rps" else "#2ca02c" for r in rows]
    fig = go.Figure(
        go.Bar(
            x=[r["ratio"] - 1 for r in rows],  # drawn from 1 (the same cost), left when cheaper, right when dearer
            base=1,
            y=[r["resource"] for r in rows],
            orientation="h",
            marker_color=color,
            customdata=[r["ratio"] for r in rows],
            hovertemplate="%{y}: %{customdata:.3g}× the baseline<extra></extra>",
        )
    )
    fig.add_vline(x=1, line_dash="dot", line_color="#888")
    fig.update_xaxes(
        title="candidate / baseline (log scale; 1 = the same)",
        **log_ticks([1, *(r["ratio"] for r in rows)], lambda v: f"{v:g}×"),
    )
    return _layout(fig, title="What the candidate costs, relative to the baseline", height=110 + 34 * max(1, len(rows)))


def deltas(
    rows: list[dict],
    y_key: str = "metric",
    title: str = "Candidate − baseline (with intervals)",
    x_title: str = "candidate − baseline, in each metric's units",
    y_title: str = "",
) -> go.Figure:
    """Forest plot: each row's paired delta with its interval (one row per metric, or per ``y_key``). The rows
    are categories, drawn in order, however their names read (plotly reads "0.1", "0.5", "0.9" as numbers and
    would tick them "0", "0.5", "1")."""
    rows = [r for r in rows if r["delta"] is not None]
    y = [str(r[y_key]) for r in rows]
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
        height=100 + 34 * max(1, len(rows)),
        title=title,
        xaxis_title=f"{x_title} (green: better, red: worse, grey: no significant difference)",
        yaxis=dict(type="category", autorange="reversed", title=y_title),
    )


def by_group(rows: list[dict], metric: str, title: str, time_axis: bool = False, x_title: str = "") -> go.Figure:
    """Each model's ``metric`` per group (lines over time, else bars), with the rows of each group in a panel of
    its own underneath (never drawn over the metric)."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.75, 0.25], vertical_spacing=0.04)
    x = [r["key"] if time_axis else str(r["key"]) for r in rows]
    for role in ROLES:
        y = [r[f"{role}_{metric}"] for r in rows]
        if time_axis:
            fig.add_scatter(x=x, y=y, mode="lines+markers", name=role, line=dict(color=COLORS[role]), row=1, col=1)
        else:
            fig.add_bar(x=x, y=y, name=role, marker_color=COLORS[role], row=1, col=1)
    fig.add_bar(
        x=x,
        y=[r["rows"] for r in rows],
        name="rows",
        marker_color="#bbb",
        showlegend=False,
        hovertemplate="%{x}: %{y:,} rows<extra></extra>",
        row=2,
        col=1,
    )
    fig.update_yaxes(title_text=metric.replace("_", " "), row=1, col=1)
    fig.update_yaxes(title_text="rows", tickformat="~s", rangemode="tozero", nticks=3, row=2, col=1)
    fig.update_xaxes(title_text=x_title or ("time (UTC)" if time_axis else ""), row=2, col=1)
    return _layout(fig, height=420, title=title, barmode="group")


def feature_drift(rows: list[dict]) -> go.Figure:
    rows = [r for r in rows if r["score"] is not None]
    scores = [min(max(r["score"], 1e-3), 50) for r in rows]
    fig = go.Figure(
        go.Bar(
            y=[r["feature"] for r in rows],
            x=scores,
            orientation="h",
            marker_color=["#d62728" if r["drifted"] else "#1f77b4" for r in rows],
            customdata=[[r["test"], r["statistic"], r["threshold"]] for r in rows],
            hovertemplate="%{y}: %{customdata[0]} statistic %{customdata[1]:.4g} (threshold %{customdata[2]})"
            "<extra></extra>",
        )
    )
    fig.add_vline(x=1, line_dash="dash", line_color="#444")
    fig.add_annotation(x=0, y=1, xref="x", yref="paper", yanchor="bottom", text="threshold", showarrow=False)
    fig.update_xaxes(title="statistic / its threshold (log scale; > 1 drifts)", **log_ticks([1e-3, *scores]))
    return _layout(
        fig,
        height=110 + 26 * max(1, len(rows)),
        title="Drift per feature (red: drifted)",
        yaxis_autorange="reversed",
    )


def concept_timeline(rows: list[dict], concept: dict) -> go.Figure:
    """Error rate per window of each model, with each model's detected change point (dashed) and first alarm
    (dotted) as vertical lines named in the legend and the hover, never as text over each other."""
    fig = by_group(rows, "error_rate", "Error rate over time (labelled rows)", time_axis=True)
    ys = [r[f"{role}_error_rate"] for r in rows for role in ROLES if r[f"{role}_error_rate"] is not None]
    lo, hi = (min(ys), max(ys)) if ys else (0, 1)
    marks = [("baseline", concept)] + ([("candidate", concept.get("candidate"))] if concept.get("candidate") else [])
    for role, c in marks:
        for key, what, dash in (("change_point", "change point", "dash"), ("detected_at", "alarm", "dot")):
            if c and c.get(key):
                at = _ms(c[key])
                fig.add_scatter(
                    x=[at, at],
                    y=[lo, hi],
                    mode="lines",
                    line=dict(color=COLORS[role], dash=dash, width=2),
                    name=f"{role} {what}",
                    hovertemplate=f"{role} {what}: {c[key][:16]}<extra></extra>",
                    row=1,
                    col=1,
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
    fig.update_xaxes(title="time (UTC)")
    return _layout(fig, height=320)


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
    fig.update_xaxes(title_text="time (UTC)", row=2, col=1)
    return _layout(fig, height=400)


def class_shares(shares: dict, role: str) -> go.Figure:
    """One model's predicted-class distribution per window (from :func:`workbench.views.class_shares`), stacked."""
    fig = go.Figure()
    for j, name in enumerate(shares["classes"]):
        fig.add_bar(
            x=shares["keys"],
            y=[row[j] for row in shares["shares"]],
            name=str(name),
            customdata=shares["rows"],
            hovertemplate=f"{name}: %{{y:.1%}} of %{{customdata:,}} rows<extra></extra>",
        )
    return _layout(
        fig,
        title=f"{role.capitalize()}: predicted classes per window",
        barmode="stack",
        xaxis_title="window start (event time)",
        yaxis=dict(tickformat=".0%", range=[0, 1], title="share of the model's predictions"),
    )


def pinball_by_level(rows: list[dict]) -> go.Figure:
    """Each model's pinball loss per quantile level (from :func:`workbench.views_tasks.quantile_rows`), with
    intervals."""
    fig = go.Figure()
    for role in ROLES:
        value = [r[role] for r in rows]
        lo = [r[role] - r[f"{role}_ci_low"] if r[f"{role}_ci_low"] is not None else 0 for r in rows]
        hi = [r[f"{role}_ci_high"] - r[role] if r[f"{role}_ci_high"] is not None else 0 for r in rows]
        fig.add_bar(
            x=[f"q{r['level']:g}" for r in rows],
            y=value,
            name=role,
            marker_color=COLORS[role],
            error_y=dict(type="data", symmetric=False, array=hi, arrayminus=lo),
            hovertemplate=f"{role} %{{x}}: %{{y:.4g}}<extra></extra>",
        )
    return _layout(
        fig,
        title="Pinball loss per quantile level (lower is better)",
        barmode="group",
        xaxis_title="quantile level",
        yaxis_title="pinball loss (the target's unit)",
    )


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
    return _layout(
        fig,
        height=360,
        title=f"Residuals per {column} (MAE and bias)",
        barmode="group",
        xaxis_title=column,
        yaxis_title="error (the target's unit)",
    )

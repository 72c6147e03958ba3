"""The ``evaluate`` and ``drift`` commands: their parser entries and text output."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from workbench import WorkbenchError
from workbench.cli.common import _table, emit, open_store, settings_for, use_mlflow


# -- drift -------------------------------------------------------------------------------
def _overrides(items: list[str], cast: Callable[[str], Any], what: str) -> dict:
    """``[COL=]VALUE`` options as {column or "*": value}."""
    out = {}
    for item in items:
        col, sep, value = item.rpartition("=")
        try:
            out[col if sep else "*"] = cast(value)
        except ValueError:
            raise WorkbenchError(f"invalid {what} {item!r}: use [COLUMN=]VALUE") from None
    return out


def cmd_drift(args) -> None:
    from workbench.drift.report import drift_run

    settings = settings_for(args)
    if args.reference and ".." not in args.reference:
        use_mlflow(settings)  # the reference may need MLflow: its artifact, the models that score it
    with open_store(settings) as store:
        res = drift_run(
            store,
            args.run_id,
            args.reference,
            current=args.current,
            tests=_overrides(args.test, str, "--test"),
            thresholds=_overrides(args.threshold, float, "--threshold"),
            drift_share=args.drift_share,
            as_of=args.as_of,
            html=args.html,
        ).to_dict()

    def human(d: dict) -> str:
        rows = [
            (c, f["kind"], f["test"], f["statistic"], f["threshold"], "DRIFT" if f["drifted"] else "", f["method"])
            for c, f in d["features"].items()
        ]
        cd, cal = d["concept_drift"], d["calibration_drift"]
        lines = [
            f"run {d['run_id']}: reference {d['reference']['description']} ({d['reference']['rows']} rows), "
            f"current {d['current']['rows']} rows",
            _table(rows, ("feature", "kind", "test", "statistic", "threshold", "drift", "method")),
            f"drifted share {d['share_drifted']:.2f} -> dataset drift: {d['dataset_drift']}",
            f"concept drift (baseline errors, Page-Hinkley): {cd['detected']}"
            + (f", change point {cd['change_point']}" if cd["detected"] else ""),
        ]
        res_b = (d.get("residual_drift") or {}).get("baseline") or {}
        if res_b.get("available"):
            lines.append(f"residual drift (baseline): {res_b['drifted']} ({res_b['test']} {res_b['statistic']:.4g})")
        else:
            lines.append(f"calibration drift (baseline): {cal['detected']}")
        if d.get("html"):
            lines.append(f"Evidently report: {d['html']}")
        return "\n".join(lines)

    emit(args, res, human)


# -- evaluation: metrics with intervals, paired deltas, latency, slices -------------------
def cmd_evaluate(args) -> None:
    from workbench.evaluate.stored import evaluation

    settings = settings_for(args)
    with open_store(settings) as store:
        res = evaluation(
            store,
            args.run_id,
            recompute=args.recompute,
            segment=args.segment,
            window=args.window,
            confidence=args.confidence,
            seed=args.seed,
            top_k=args.top_k,
            partial=args.partial,
            prices=settings.prices,
        )
    emit(args, res, _evaluation_text)


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def _ci(e: dict) -> str:
    return "-" if e["ci_low"] is None else f"[{e['ci_low']:.4f}, {e['ci_high']:.4f}]"


def _evaluation_text(d: dict) -> str:
    cov = d.get("coverage") or {}
    lines = (
        [
            f"PARTIAL: run {d['run_id']} was {cov.get('status')} with {cov.get('rows_done', 0):,} of "
            f"{cov.get('rows_total', 0):,} rows replayed; evaluate it again once it is finished"
        ]
        if cov and not cov.get("complete")
        else []
    )
    lines += [
        f"run {d['run_id']}{f' ({task})' if (task := d.get('task', 'binary')) != 'binary' else ''}: "
        f"{d['labeled_rows']} labelled rows (coverage {d['label_coverage']:.1%}), "
        f"rows scored baseline {d['rows']['baseline']}, candidate {d['rows']['candidate']}, "
        f"both {d['rows']['paired']}; {d['confidence']:.0%} intervals",
        _table(
            [
                (
                    m,
                    _f(d["baseline"][m]["value"]),
                    _ci(d["baseline"][m]),
                    _f(d["candidate"][m]["value"]),
                    _ci(d["candidate"][m]),
                    _f(dl["value"]),
                    _ci(dl),
                    _f(dl["p_value"]),
                    _f(dl["mde"]),
                )
                for m, dl in d["delta"].items()
            ],
            ("metric", "baseline", "ci", "candidate", "ci", "delta", "ci", "p", "mde"),
        ),
        "",
        _table(
            [
                (k, _f(d["latency"]["baseline"][k]), _f(d["latency"]["candidate"][k]), _f(v["value"]), _ci(v))
                for k, v in d["latency"]["delta"].items()
            ],
            ("latency ms", "baseline", "candidate", "delta", "ci"),
        ),
        f"Mann-Whitney p = {_f(d['latency']['mann_whitney_p'])}; errors: "
        + ", ".join(f"{r} {e['count']}/{e['rows']}" for r, e in d["errors"].items()),
    ]
    lines += _resources_text(d.get("resources"))
    first, second = {"regression": ("mae", "rmse"), "multiclass": ("accuracy", "macro_f1")}.get(
        d.get("task", "binary"), ("accuracy", "roc_auc")
    )
    for kind in ("segments", "windows"):
        for col, slices in d.get(kind, {}).items():
            lines += [
                "",
                _table(
                    [
                        (
                            v,
                            s["rows"],
                            "yes" if s["small"] else "",
                            _f(s["delta"][first]["value"]),
                            _f(s["delta"][first]["p_value"]),
                            _f(s["delta"][second]["value"]),
                            _f(s["delta"][second]["p_value"]),
                        )
                        for v, s in slices.items()
                    ],
                    (col, "rows", "small", f"d {first}", "p", f"d {second}", "p"),
                ),
            ]
    if "confusion" in d:
        lines += ["", f"confusion matrices (rows: true class, columns: predicted class; {', '.join(d['classes'])})"]
        for r, cm in d["confusion"].items():
            lines += [_table([(c, *row) for c, row in zip(d["classes"], cm, strict=True)], (r, *d["classes"]))]
    if d["undefined"]:
        lines += ["", "undefined: " + "; ".join(f"{k}: {v}" for k, v in d["undefined"].items())]
    return "\n".join(lines)


def add_evaluate_parser(sub, common) -> None:
    s = sub.add_parser(
        "evaluate",
        parents=[common],
        help="metrics with intervals, paired deltas, latency and slices of a run's labelled rows",
    )
    s.add_argument("run_id")
    s.add_argument(
        "--segment",
        default=None,
        metavar="COL",
        help="also evaluate per value of this traffic column (top --top-k by volume plus 'other')",
    )
    s.add_argument(
        "--window",
        default=None,
        choices=["hour", "day", "week"],
        help="also evaluate per time window of the event time",
    )
    s.add_argument("--confidence", type=float, default=0.95, help="confidence level of every interval")
    s.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    s.add_argument("--top-k", type=int, default=10, help="segment values to keep before 'other'")
    s.add_argument(
        "--partial",
        action="store_true",
        help="evaluate a run that is not finished (interrupted or still replaying) on its rows so far; "
        "the result's coverage says so",
    )
    s.add_argument(
        "--recompute",
        action="store_true",
        help="evaluate again even when the run's latest stored evaluation was made with the same options from the "
        "same rows, traffic and labels (by default that one is returned, and nothing new is stored)",
    )
    s.set_defaults(fn=cmd_evaluate)


def add_drift_parser(sub, common) -> None:
    s = sub.add_parser("drift", parents=[common], help="data, prediction and concept drift of a run")
    s.add_argument("run_id")
    s.add_argument(
        "--reference",
        default=None,
        metavar="SPEC",
        help="a traffic name, a time window START..END of the run, or 'training' (the sample logged "
        "with the baseline model); default: the earliest 20%% of the run's traffic by event time",
    )
    s.add_argument("--current", default=None, metavar="START..END", help="only this time window of the run")
    s.add_argument(
        "--test",
        action="append",
        default=[],
        metavar="[COL=]NAME",
        help="drift test for a column, or for all (repeatable; 'score=' for prediction drift)",
    )
    s.add_argument(
        "--threshold",
        action="append",
        default=[],
        metavar="[COL=]X",
        help="threshold for a column, or for all (repeatable)",
    )
    s.add_argument("--drift-share", type=float, default=0.5, help="dataset drift when this share of features drift")
    s.add_argument("--as-of", default=None, metavar="TIME", help="labels arriving after TIME count as not yet known")
    s.add_argument("--html", default=None, metavar="PATH", help="also write Evidently's HTML report there")
    s.set_defaults(fn=cmd_drift)


def _resources_text(res: dict | None) -> list[str]:
    """The resources table and the cost line of an evaluation (nothing when the replay measured none)."""
    if not res:
        return []
    cost = res["cost"]
    prices = ", ".join(f"{k} ${v:g}" for k, v in cost["prices"].items())
    rows = [(m, _g(v["baseline"]), _g(v["candidate"]), _g(v["ratio"])) for m, v in res["metrics"].items()]
    return [
        "",
        _table(rows, ("resources", "baseline", "candidate", "ratio")),
        f"cost per million requests (USD): baseline {_g(cost['baseline']['total'])}, candidate "
        f"{_g(cost['candidate']['total'])}, difference {_g(cost['difference'])}; prices {prices}; "
        f"{cost['assumptions']}",
    ]


def _g(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"

"""Data quality of the current window per column, against the reference sketch.

- ``missing_share``: rows whose value is null or NaN, over all current rows;
- ``out_of_range_share`` (numeric columns): finite values outside the reference's [min, max], over the
  current finite values;
- ``unseen_categories`` (categorical columns): distinct current values the reference never had, with
  ``unseen_share`` (their rows over the current non-null values) and up to five examples;
- ``type_violations``: rows of the traffic quarantined at ingest because this column's value could not be
  read as its type or was infinite, plus infinite values in the window itself.
"""

from __future__ import annotations

from workbench.drift.sketch import ColumnSketch

UNSEEN_EXAMPLES = 5


def column_quality(
    sketch: ColumnSketch, kind: str, profile: dict, rows: int, quarantined: int, unseen: list[tuple] | None
) -> dict:
    """One column's quality record for the current window (``profile`` from ``Store.drift_profile``)."""
    n = int(profile["n"])
    out = {
        "missing_share": profile["missing"] / rows if rows else None,
        "out_of_range_share": None,
        "unseen_categories": None,
        "type_violations": int(quarantined) + int(profile["nonfinite"] or 0),
        "reference_missing_share": (
            sketch.missing / (sketch.rows + sketch.missing + sketch.nonfinite)
            if sketch.rows + sketch.missing + sketch.nonfinite
            else None
        ),
    }
    if sketch.domain == "num" and kind == "numerical":
        out["out_of_range_share"] = (profile["out_of_range"] or 0) / n if n else None
        out["reference_range"] = [sketch.min, sketch.max]
    if kind == "categorical" and unseen is not None:
        out["unseen_categories"] = len(unseen)
        out["unseen_share"] = sum(c for _, c in unseen) / n if n else None
        out["unseen_examples"] = [v for v, _ in unseen[:UNSEEN_EXAMPLES]]
    return out

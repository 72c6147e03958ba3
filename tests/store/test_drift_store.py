"""Drift's aggregates in the store: the gap between two samples' cumulative counts, raw or from a sketch."""

import numpy as np
import pyarrow as pa
import pytest

from workbench.drift.sketch import ColumnSource, RowSet
from workbench.store import Store


def expected_gap(ref: np.ndarray, cur: np.ndarray) -> tuple[float, float, float]:
    """(max |G|, integral |G| dx, integral G^2 dx) of G = n_cur * R - n_ref * C, computed with numpy."""
    xs = np.unique(np.concatenate([ref, cur]))
    r = np.searchsorted(np.sort(ref), xs, side="right")
    c = np.searchsorted(np.sort(cur), xs, side="right")
    g = (len(cur) * r - len(ref) * c).astype(np.float64)
    dx = np.diff(xs)
    return float(np.abs(g).max()), float(np.sum(np.abs(g[:-1]) * dx)), float(np.sum(g[:-1] ** 2 * dx))


@pytest.mark.parametrize("sketched", [False, True], ids=["raw_reference", "sketched_reference"])
def test_cdf_gap_matches_numpy(sketched):
    rng = np.random.default_rng(11)
    ref = rng.integers(0, 40, 3000).astype(np.float64) / 4  # ties: many rows share a value
    cur = rng.integers(5, 50, 2000).astype(np.float64) / 4
    with Store() as s:
        s.drift_import_table("ref", pa.table({"v": np.append(ref, [np.nan, np.inf])}))  # non-finite: left out
        s.drift_import_table("cur", pa.table({"v": cur}))
        ref_src = ColumnSource("v", "num", rows=RowSet("ref", kind="table"))
        if sketched:
            assert s.drift_store_values("k", "v", ref_src, cap=1000) == len(np.unique(ref))
            ref_src = ColumnSource("v", "num", key="k")
        got = s.drift_cdf_gap(ref_src, ColumnSource("v", "num", rows=RowSet("cur", kind="table")), len(ref), len(cur))
    want = expected_gap(ref, cur)
    assert got[0] == want[0]
    assert got[1:] == pytest.approx(want[1:], rel=1e-12)

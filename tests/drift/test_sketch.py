"""SqlPair's ECDF distances against scipy, for raw and sketched references."""

import numpy as np
import pyarrow as pa
import pytest
from scipy import stats

from workbench.drift.sketch import RowSet, SqlPair, ensure_sketches
from workbench.store import Store


@pytest.mark.parametrize("ref_rows", [800, 4000], ids=["sketched_reference", "raw_reference"])
def test_ecdf_distances_match_scipy(monkeypatch, ref_rows):
    import workbench.drift.sketch as sketch_mod

    monkeypatch.setattr(sketch_mod, "VALUE_CAP", 1000)  # above it, the continuous reference is read raw
    rng = np.random.default_rng(3)
    ref, cur = rng.normal(0, 1, ref_rows), np.round(rng.normal(0.3, 1.4, 1500), 2)
    with Store() as s:
        s.drift_import_table("ref", pa.table({"x": ref}))
        s.drift_import_table("cur", pa.table({"x": cur}))
        r, c = RowSet("ref", kind="table"), RowSet("cur", kind="table")
        sketch = ensure_sketches(s, r, ["x"], "k")["x"]
        _, profile = s.drift_profile(c, {"x": "num"})
        pair = SqlPair(s, "x", "numerical", sketch, "k", r, c, profile["x"], integer=False)
        ks, l1, l2 = pair.ecdf()
        assert pair.method == ("sketch" if ref_rows < 1000 else "exact")
    assert ks == pytest.approx(stats.ks_2samp(ref, cur).statistic, rel=1e-12)
    assert l1 == pytest.approx(stats.wasserstein_distance(ref, cur), rel=1e-9)
    assert np.sqrt(2 * l2) == pytest.approx(stats.energy_distance(ref, cur), rel=1e-9)

"""Evaluation of a quantile regression run from what the replay stored: the pinball loss at each level (parity
with scikit-learn's mean_pinball_loss) and the coverage of the central interval, with paired deltas, overall and
per segment; a run whose models give different levels says why it has no pinball loss."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from sklearn.metrics import mean_pinball_loss

from regression_helpers import LinearModel, QuantileModel, write_traffic
from workbench.evaluate.evaluation import evaluate_run
from workbench.evaluate.regression import central_interval
from workbench.ingest.traffic import ingest, ingest_labels
from workbench.replay.pipeline import ReplayOptions, replay
from workbench.store import Store

ROWS, UNLABELLED = 2000, 50
LEVELS = (0.1, 0.5, 0.9)


@pytest.fixture(scope="module")
def quantile_store(tmp_path_factory):
    traffic, labels = write_traffic(tmp_path_factory.mktemp("qreg"), ROWS, seed=5, unlabelled=UNLABELLED)
    with Store(":memory:") as store:
        ingest(store, traffic, "q")
        store.declare_segments("q", ["region"])
        ingest_labels(store, labels, "q", label_col="y", task="regression")
        base = QuantileModel("m", "1", 1.0, "zb", spread=2.0, cross="zc")  # a few crossing rows fail
        cand = QuantileModel("m", "2", 0.3, "zc", spread=1.0)
        replay(store, "q", base, cand, run_id="qrun", options=ReplayOptions(writers=1))
        replay(store, "q", LinearModel("m", "1", 1.0, "zb"), cand, run_id="mixed", options=ReplayOptions(writers=1))
        yield store, base, cand, labels


def _truth(store: Store, labels_path, base, cand):
    """(y, baseline output, candidate output) of the labelled rows, recomputed from the traffic."""
    import pyarrow.parquet as pq

    t = store.cursor().sql("SELECT request_id, x, zb, zc FROM traffic_q ORDER BY _row").to_arrow_table()
    lab = pq.read_table(labels_path).to_pandas().set_index("request_id")["y"]
    y = lab.reindex(t.column("request_id").to_pylist()).to_numpy()
    batch = pa.table({c: t.column(c) for c in ("x", "zb", "zc")})
    ok = np.isfinite(y)
    return y[ok], base.predict(batch)[ok], cand.predict(batch)[ok]


def test_pinball_losses_match_scikit_learn(quantile_store):
    store, base, cand, labels = quantile_store
    ev = evaluate_run(store, "qrun", n_boot=200).to_dict()
    y, b, c = _truth(store, labels, base, cand)
    crossed = np.any(np.diff(b[:, 1:], axis=1) < 0, axis=1)
    assert 0 < crossed.sum() < 200
    assert ev["quantiles"] == list(LEVELS)
    assert ev["interval"] == {"lower": 0.1, "upper": 0.9, "nominal": 0.8}
    assert ev["rows"]["baseline"] == len(y) - crossed.sum() and ev["rows"]["candidate"] == len(y)
    for j, q in enumerate(LEVELS, start=1):
        name = f"pinball@{q:g}"
        want_b = mean_pinball_loss(y[~crossed], b[~crossed, j], alpha=q)
        want_c = mean_pinball_loss(y, c[:, j], alpha=q)
        assert ev["baseline"][name]["value"] == pytest.approx(want_b, rel=0, abs=1e-9)
        assert ev["candidate"][name]["value"] == pytest.approx(want_c, rel=0, abs=1e-9)
        paired = mean_pinball_loss(y[~crossed], c[~crossed, j], alpha=q) - want_b
        assert ev["delta"][name]["value"] == pytest.approx(paired, rel=0, abs=1e-9)
        assert ev["delta"][name]["ci_low"] < ev["delta"][name]["value"] < ev["delta"][name]["ci_high"]
    assert ev["delta"]["pinball@0.5"]["ci_high"] < 0  # the candidate is surely sharper


def test_interval_coverage_and_its_paired_delta(quantile_store):
    store, base, cand, labels = quantile_store
    ev = evaluate_run(store, "qrun", n_boot=200).to_dict()
    y, b, c = _truth(store, labels, base, cand)
    crossed = np.any(np.diff(b[:, 1:], axis=1) < 0, axis=1)
    hit_b = (b[:, 1] <= y) & (y <= b[:, 3])
    hit_c = (c[:, 1] <= y) & (y <= c[:, 3])
    assert ev["baseline"]["coverage"]["value"] == pytest.approx(hit_b[~crossed].mean(), abs=1e-12)
    assert ev["candidate"]["coverage"]["value"] == pytest.approx(hit_c.mean(), abs=1e-12)
    delta = hit_c[~crossed].mean() - hit_b[~crossed].mean()
    assert ev["delta"]["coverage"]["value"] == pytest.approx(delta, abs=1e-12)
    assert ev["delta"]["interval_width"]["value"] < 0


def test_segments_carry_the_quantile_metrics(quantile_store):
    store, *_ = quantile_store
    ev = evaluate_run(store, "qrun", segment="region", n_boot=100).to_dict()
    north = ev["segments"]["region"]["north"]
    assert {"pinball@0.1", "pinball@0.9", "coverage"} <= set(north["candidate"])
    assert north["delta"]["coverage"]["value"] is not None


def test_a_run_without_common_levels_says_why_it_has_no_pinball_loss(quantile_store):
    store, *_ = quantile_store
    ev = evaluate_run(store, "mixed", n_boot=100).to_dict()
    assert "quantiles" not in ev and not any(k.startswith("pinball") for k in ev["candidate"])
    assert ev["undefined"]["pinball"].startswith("quantiles not stored: the two models give different")


@pytest.mark.parametrize(
    ("levels", "pair"),
    [((0.1, 0.5, 0.9), (0, 2)), ((0.05, 0.25, 0.75, 0.9), (1, 2)), ((0.5,), None), ((0.2, 0.5), None)],
    ids=["80pct", "inner-pair", "median-only", "no-mirror"],
)
def test_the_central_interval_is_the_widest_symmetric_pair(levels, pair):
    assert central_interval(levels) == pair

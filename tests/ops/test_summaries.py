"""Run summaries stored in the lake: what a page reads on a first visit instead of aggregating or judging the run."""

import json

import pytest

from workbench import WorkbenchError
from workbench.config import load_settings
from workbench.decide.canary import preview_decision
from workbench.decide.policy import load_policy
from workbench.decide.signing import content_hash
from workbench.ops import summaries
from workbench.store import Store


def test_precomputed_summaries_are_what_the_pages_would_compute_until_the_labels_change(seeded_home):
    with Store(load_settings(seeded_home).db_path) as store:
        assert summaries.look_up(store, "run_a", "scores").stored is False
        done = summaries.precompute(store, "run_a")
        assert done == ["scores", "latency_quantiles", "segment_columns", "breakdowns", "evidence"]
        run = store.require_run("run_a")
        columns = store.app_segment_columns(run["traffic"])
        policy = load_policy()
        for name, arg, fresh in [
            ("scores", None, store.app_score_summary("run_a", summaries.SCORE_BINS, summaries.LATENCY_PER_DECADE)),
            ("latency_quantiles", None, store.app_latency_quantiles("run_a", list(summaries.LATENCY_PROBS))),
            ("segment_columns", None, columns),
            ("breakdowns", tuple(columns), store.app_breakdowns("run_a", columns)),
        ]:
            looked = summaries.look_up(store, "run_a", name, arg)
            assert looked.stored, name
            assert looked.value == json.loads(json.dumps(fresh, default=str)) or looked.value == fresh, name
        # the Decide page's preview on the stored evidence says what judging the run now says
        stored = preview_decision(
            store, "run_a", policy, lambda run, drift: summaries.summary(store, "run_a", "evidence", policy)
        )
        fresh = preview_decision(store, "run_a", policy)
        assert stored.scorecard.to_dict() == fresh.scorecard.to_dict()
        assert content_hash(stored.evidence) == content_hash(fresh.evidence)
        assert (stored.verdict, stored.weight_after) == (fresh.verdict, fresh.weight_after)
        # new labels: every stored summary of the run is stale, computed again, and stored again on request
        with store.transaction() as cur:
            store.record_ingest(
                cur,
                ingest_id="more_labels",
                traffic=run["traffic"],
                kind="labels",
                source="test",
                file_sha256=None,
                rows_read=0,
                rows_ingested=0,
                rows_quarantined=0,
            )
        assert not summaries.look_up(store, "run_a", "scores").stored
        assert not summaries.look_up(store, "run_a", "evidence", policy).stored
        summaries.summary(store, "run_a", "scores")
        assert summaries.look_up(store, "run_a", "scores").stored
        # one row per run, summary and key: a new state replaces the old
        n = store.cursor().execute("SELECT count(*) FROM run_summaries WHERE name = 'scores'").fetchall()[0][0]
        assert n == 1


def test_summaries_keep_times_and_refuse_unknown_names(seeded_home):
    from datetime import UTC, date, datetime

    import pytest

    from workbench import WorkbenchError

    value = {"key": datetime(2013, 7, 1, tzinfo=UTC), "day": date(2013, 7, 1), "rows": [(1, 2.5, None)]}
    assert summaries.loads(summaries.dumps(value)) == {**value, "rows": [[1, 2.5, None]]}
    with Store(load_settings(seeded_home).db_path) as store, pytest.raises(WorkbenchError, match="unknown run summary"):
        summaries.look_up(store, "run_a", "histograms")


def test_only_runs_of_at_least_the_configured_rows_are_stored(seeded_home, monkeypatch):
    monkeypatch.delenv("WORKBENCH_SUMMARY_MIN_ROWS", raising=False)
    assert summaries.min_rows() == summaries.DEFAULT_MIN_ROWS
    monkeypatch.setenv("WORKBENCH_SUMMARY_MIN_ROWS", "lots")
    with pytest.raises(WorkbenchError, match=r"SUMMARY_MIN_ROWS must be a whole number of rows, not 'lots'"):
        summaries.min_rows()
    with Store(load_settings(seeded_home).db_path) as store:
        rows = store.require_run("run_a")["rows_done"]
        assert summaries.precompute(store, "run_a", at_least=rows + 1) == []  # small: a page computes it
        assert not summaries.look_up(store, "run_a", "scores").stored
        assert summaries.precompute(store, "run_a", evidence=False, at_least=rows)[-1] == "breakdowns"
        assert summaries.look_up(store, "run_a", "scores").stored

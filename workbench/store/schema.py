"""The workbench storage's tables: their DDL, and the columns added to them since storages were first made."""

# Tables in data-flow order: traffic and labels, runs and their paired results, evaluations, drift, decisions
# and the canary, jobs. DuckLake has no keys: uniqueness is checked inside the writer's transaction.
SCHEMA = [
    """CREATE TABLE IF NOT EXISTS traffic_sets (
        name VARCHAR NOT NULL, table_name VARCHAR NOT NULL, id_col VARCHAR, time_col VARCHAR,
        entity_col VARCHAR, columns JSON NOT NULL, fingerprint VARCHAR NOT NULL, rows BIGINT NOT NULL,
        quarantined BIGINT NOT NULL, created_at TIMESTAMP NOT NULL, updated_at TIMESTAMP NOT NULL)""",
    # the columns a traffic set declares as segments: decisions gate the candidate on each of their values
    """CREATE TABLE IF NOT EXISTS traffic_segments (
        traffic VARCHAR NOT NULL, column_name VARCHAR NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS ingests (
        ingest_id VARCHAR NOT NULL, traffic VARCHAR NOT NULL, kind VARCHAR NOT NULL, source VARCHAR,
        file_sha256 VARCHAR, rows_read BIGINT, rows_ingested BIGINT, rows_quarantined BIGINT, ingested_at TIMESTAMP)""",
    """CREATE TABLE IF NOT EXISTS quarantine (
        traffic VARCHAR NOT NULL, ingest_id VARCHAR NOT NULL, kind VARCHAR NOT NULL, source_row BIGINT,
        request_id VARCHAR, reason VARCHAR NOT NULL, raw VARCHAR)""",
    # one label per (traffic, request_id), kept by upsert_labels; ``_row`` is the request's row in its traffic
    # table, null while the traffic set does not hold the request (evaluations look labels up by it, at a third
    # of the cost of a join on the id); the same in the two label tables below
    """CREATE TABLE IF NOT EXISTS labels (
        traffic VARCHAR NOT NULL, request_id VARCHAR NOT NULL, label INTEGER NOT NULL, label_time TIMESTAMP,
        _row BIGINT)""",
    # numeric labels (the targets of regression runs): one per (traffic, request_id), kept by upsert_labels
    """CREATE TABLE IF NOT EXISTS label_values (
        traffic VARCHAR NOT NULL, request_id VARCHAR NOT NULL, value DOUBLE NOT NULL, label_time TIMESTAMP,
        _row BIGINT)""",
    # class labels (the targets of multi-class runs) as text: one per (traffic, request_id), kept by upsert_labels
    """CREATE TABLE IF NOT EXISTS label_classes (
        traffic VARCHAR NOT NULL, request_id VARCHAR NOT NULL, label VARCHAR NOT NULL, label_time TIMESTAMP,
        _row BIGINT)""",
    """CREATE TABLE IF NOT EXISTS runs (
        run_id VARCHAR NOT NULL, traffic VARCHAR NOT NULL, baseline JSON NOT NULL, candidate JSON NOT NULL,
        status VARCHAR NOT NULL, rows_total BIGINT, batch_size INTEGER, device VARCHAR,
        mode VARCHAR, meta JSON, started_at TIMESTAMP, finished_at TIMESTAMP)""",
    """CREATE TABLE IF NOT EXISTS run_batches (
        run_id VARCHAR NOT NULL, batch_no INTEGER NOT NULL, first_row BIGINT NOT NULL, span INTEGER NOT NULL,
        rows INTEGER NOT NULL, seconds DOUBLE, committed_at TIMESTAMP)""",
    # paired results: one row per request, both models side by side; ``_row`` is the request's row in its
    # traffic table (join it for request_id and features: a number is 3x cheaper to write than the id)
    """CREATE TABLE IF NOT EXISTS predictions (
        run_id VARCHAR NOT NULL, _row BIGINT NOT NULL,
        baseline_score DOUBLE, baseline_class INTEGER, baseline_latency_ms DOUBLE, baseline_error VARCHAR,
        candidate_score DOUBLE, candidate_class INTEGER, candidate_latency_ms DOUBLE, candidate_error VARCHAR)""",
    # each model's class probabilities of a multi-class run (in the order of the run's ``meta.classes``), one
    # row per request beside its row in ``predictions`` (null where the model failed)
    """CREATE TABLE IF NOT EXISTS prediction_probabilities (
        run_id VARCHAR NOT NULL, _row BIGINT NOT NULL, baseline_proba DOUBLE[], candidate_proba DOUBLE[])""",
    # each model's quantiles of a regression run whose models predict them (at the levels of the run's
    # ``meta.quantiles``, ascending), one row per request beside its row in ``predictions`` (null where it failed)
    """CREATE TABLE IF NOT EXISTS prediction_quantiles (
        run_id VARCHAR NOT NULL, _row BIGINT NOT NULL, baseline_quantiles DOUBLE[], candidate_quantiles DOUBLE[])""",
    """CREATE TABLE IF NOT EXISTS evaluations (
        run_id VARCHAR NOT NULL, created_at TIMESTAMP NOT NULL, params JSON, result JSON NOT NULL)""",
    # summaries of a run that the app shows (histograms, breakdowns, a decision's evidence), each stored with the
    # state of the data it summarizes (``token``), so a page reads kilobytes; kept by workbench/ops/summaries.py
    """CREATE TABLE IF NOT EXISTS run_summaries (
        run_id VARCHAR NOT NULL, name VARCHAR NOT NULL, key VARCHAR NOT NULL, token VARCHAR NOT NULL,
        value VARCHAR NOT NULL, created_at TIMESTAMP NOT NULL)""",
    # drift: reference sketches (one row per reference and column, value counts when lossless), stored
    # scores of references that a run did not replay, and the reports
    """CREATE TABLE IF NOT EXISTS drift_sketches (
        key VARCHAR NOT NULL, column_name VARCHAR NOT NULL, sketch JSON NOT NULL, created_at TIMESTAMP NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS drift_sketch_values (
        key VARCHAR NOT NULL, column_name VARCHAR NOT NULL, num_value DOUBLE, str_value VARCHAR, n BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS drift_ref_scores (
        key VARCHAR NOT NULL, role VARCHAR NOT NULL, _row BIGINT NOT NULL, score DOUBLE)""",
    """CREATE TABLE IF NOT EXISTS drift_reports (
        run_id VARCHAR NOT NULL, created_at TIMESTAMP NOT NULL, params JSON, result JSON NOT NULL)""",
    # signed decisions, each model's hash chain of applied records and its canary state
    """CREATE TABLE IF NOT EXISTS decisions (
        decision_id VARCHAR NOT NULL, model VARCHAR NOT NULL, kind VARCHAR NOT NULL, run_id VARCHAR,
        verdict VARCHAR NOT NULL, weight_before INTEGER NOT NULL, weight_after INTEGER NOT NULL,
        record VARCHAR NOT NULL, record_hash VARCHAR NOT NULL, signature VARCHAR NOT NULL,
        created_at TIMESTAMP NOT NULL, mlflow_run_id VARCHAR, pending_sync BOOLEAN NOT NULL DEFAULT FALSE,
        sync_error VARCHAR)""",
    """CREATE TABLE IF NOT EXISTS canary_chain (
        model VARCHAR NOT NULL, sequence INTEGER NOT NULL, decision_id VARCHAR NOT NULL,
        record_hash VARCHAR NOT NULL, applied_at TIMESTAMP NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS canary_state (
        model VARCHAR NOT NULL, baseline_version VARCHAR, candidate_version VARCHAR, weight INTEGER NOT NULL,
        decision_id VARCHAR NOT NULL, record_hash VARCHAR NOT NULL, killed BOOLEAN NOT NULL,
        updated_at TIMESTAMP NOT NULL)""",
    # signed approvals of stored decisions: one per approver and decision, checked by the writer (no constraint)
    """CREATE TABLE IF NOT EXISTS approvals (
        approval_id VARCHAR NOT NULL, decision_id VARCHAR NOT NULL, approver VARCHAR NOT NULL,
        statement VARCHAR NOT NULL, signature VARCHAR NOT NULL, created_at TIMESTAMP NOT NULL)""",
    # jobs: the queue and the job history (spec, trigger, current stage, the process that runs it);
    # job_stages keeps each stage's state so a rerun skips finished stages
    """CREATE TABLE IF NOT EXISTS jobs (
        job_id VARCHAR NOT NULL, kind VARCHAR NOT NULL, delivery_id VARCHAR, event VARCHAR,
        params JSON NOT NULL, status VARCHAR NOT NULL, created_at TIMESTAMP NOT NULL, started_at TIMESTAMP,
        finished_at TIMESTAMP, error VARCHAR, result JSON, spec VARCHAR, triggered_by VARCHAR, stage VARCHAR,
        pid INTEGER, host VARCHAR)""",
    """CREATE TABLE IF NOT EXISTS job_stages (
        job_id VARCHAR NOT NULL, stage VARCHAR NOT NULL, status VARCHAR NOT NULL, attempts INTEGER NOT NULL,
        started_at TIMESTAMP, finished_at TIMESTAMP, seconds DOUBLE, result JSON, error VARCHAR)""",
]


# columns added to the schema's tables after storages were made without them, (table, column, type): a storage
# that lacks one gets it when it is first opened for writing, and the store fills it in the same commit
ADDED_COLUMNS = [("labels", "_row", "BIGINT"), ("label_values", "_row", "BIGINT"), ("label_classes", "_row", "BIGINT")]

"""The lake's data files on an S3-compatible object store (``$WORKBENCH_DATA_PATH=s3://...``), against a real
S3 server on 127.0.0.1 (moto) that checks every request's signature: credentials from the standard AWS
variables, a run written on one machine and read on another, the CLI's ingest, replay (the demo's MLflow models)
and evaluate on a PostgreSQL catalog with the bucket, the objects in the bucket, ``gc`` there, and one-line
errors for a bucket that is missing, a store that does not answer and credentials it refuses. Also what ``gc``
reports for a data path outside the home, and a PostgreSQL catalog that does not answer at all."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time

import duckdb
import pyarrow as pa
import pytest

from conftest import REPO, free_port, run_cli
from workbench.errors import WorkbenchError
from workbench.store import Store
from workbench.store.lake import (
    CATALOG_FILE,
    CONNECT_TIMEOUT_S,
    CatalogUnreachable,
    LakeTarget,
    storage_problem,
    with_connect_timeout,
)
from workbench.store.maintenance import collect
from workbench.store.object_store import PROBE_RETRIES, PROBE_TIMEOUT_S, DataPathUnreachable, secret_from_env


def test_the_secret_is_made_from_the_standard_aws_variables():
    env = {"AWS_ACCESS_KEY_ID": "AKID", "AWS_SECRET_ACCESS_KEY": "s3cret", "AWS_DEFAULT_REGION": "eu-west-1",
           "AWS_ENDPOINT_URL": "http://minio.internal:9000"}  # fmt: skip
    sql, params = secret_from_env("s3://b/lake/", "wb", env)
    assert "s3cret" not in sql and "AKID" not in sql  # bound as parameters, never in the statement's text
    assert "URL_STYLE ?" in sql and "USE_SSL false" in sql and "SCOPE ?" in sql
    assert params == ["AKID", "s3cret", "eu-west-1", "minio.internal:9000", "path", "s3://b/lake/"]
    env |= {"AWS_ENDPOINT_URL_S3": "https://s3.example:8443", "AWS_REGION": "us-east-2", "AWS_SESSION_TOKEN": "tok"}
    sql, params = secret_from_env("s3://b/lake/", "wb", env)
    assert "USE_SSL true" in sql and params[:5] == ["AKID", "s3cret", "tok", "us-east-2", "s3.example:8443"]
    assert secret_from_env("s3://b/lake/", "wb", {}) is None  # none set: DuckDB's own secrets apply
    assert secret_from_env("gs://b/lake/", "wb", env) is None  # the AWS variables are for S3
    with pytest.raises(WorkbenchError, match=r"\$AWS_SECRET_ACCESS_KEY is set but \$AWS_ACCESS_KEY_ID is not"):
        secret_from_env("s3://b/lake/", "wb", {"AWS_SECRET_ACCESS_KEY": "s3cret"})
    with pytest.raises(WorkbenchError, match=r"AWS_ENDPOINT_URL must be .* not 'minio:9000'"):
        secret_from_env("s3://b/lake/", "wb", {"AWS_ENDPOINT_URL": "minio:9000"})


def _write_run(s: Store, run: str, batches: int = 2, rows: int = 1500) -> None:
    """A run of ``batches`` committed batches of ``rows`` paired results (each batch a Parquet file)."""
    s.create_run(run_id=run, traffic="t", baseline={"v": 1}, candidate={"v": 2}, rows_total=batches * rows,
                 batch_size=rows, device="cpu", mode="batch", meta={})  # fmt: skip
    for b in range(batches):
        ids = pa.array(range(b * rows, (b + 1) * rows), pa.int64())
        s.commit_batch(run, b, b * rows, (b + 1) * rows - 1, rows, 0.1, pa.table({"_row": ids, "baseline_score": ids}))
    s.finish_run(run)


def _parquet(s3_server, data_path: str) -> dict[str, int]:
    """The Parquet objects under the data path and their sizes, listed with boto3."""
    bucket, prefix = data_path.removeprefix("s3://").split("/", 1)
    pages = s3_server.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"]: o["Size"] for p in pages for o in p.get("Contents", []) if o["Key"].endswith(".parquet")}


def test_a_run_written_on_one_machine_is_read_on_another_through_postgres_and_s3(
    pg_catalog, s3_data_path, s3_server, tmp_path
):
    home_a, home_b = tmp_path / "machine_a", tmp_path / "machine_b"
    with Store(home_a / "lake") as s:
        assert s.data_path == s3_data_path
        _write_run(s, "r")
    objects = _parquet(s3_server, s3_data_path)
    assert len([k for k in objects if "/main/predictions/" in k]) == 2, objects  # one object per committed batch
    assert not list(tmp_path.rglob("*.parquet")) and not (home_a / "lake" / CATALOG_FILE).exists()
    with Store(home_b / "lake", read_only=True) as s:  # another home: the same catalog and bucket
        assert s.run_counts("r").rows == 3000 and s.committed_ranges("r") == [(0, 2999)]
        assert s.cursor().execute("SELECT sum(baseline_score) FROM predictions").fetchall() == [(sum(range(3000)),)]
    out = run_cli("runs", "--json", home=home_b)  # the CLI of that other machine, from its environment alone
    assert [r["run_id"] for r in json.loads(out.stdout)["runs"]] == ["r"]


def test_a_postgres_catalog_remembers_its_object_store(pg_catalog, s3_data_path, s3_server, tmp_path, monkeypatch):
    with Store(tmp_path / "a" / "lake") as s:
        _write_run(s, "r", batches=1)
    monkeypatch.delenv("WORKBENCH_DATA_PATH")  # unset: the data path the catalog recorded when it was made
    with Store(tmp_path / "b" / "lake", read_only=True) as s:
        assert s.data_path == s3_data_path and s.run_counts("r").rows == 1500


def _scores(s: Store, traffic: str, run: str) -> dict[str, tuple]:
    """request id -> (label or None, baseline score, candidate score) of a run's rows both models scored."""
    rows = s.cursor().execute(
        f"""SELECT t.request_id, l.label, p.baseline_score, p.candidate_score
            FROM predictions p JOIN "traffic_{traffic}" t USING (_row)
            LEFT JOIN labels l ON l.traffic = ? AND l.request_id = t.request_id
            WHERE p.run_id = ? AND p.baseline_error IS NULL AND p.candidate_error IS NULL""",
        [traffic, run],
    )
    return {r[0]: r[1:] for r in rows.fetchall()}


def test_the_cli_ingests_replays_and_evaluates_real_models_on_postgres_and_s3(
    pg_catalog, s3_data_path, s3_server, demo_home, tmp_path
):
    from sklearn.metrics import roc_auc_score

    home = tmp_path / "machine_a"
    shutil.copytree(demo_home, home)  # its MLflow store and data files; the lake is PostgreSQL's and the bucket's
    demo = json.loads((home / "demo.json").read_text())
    out = run_cli("ingest", str(home / "data" / "traffic.parquet"), "--name", "s3flights", "--json", home=home)
    total = json.loads(out.stdout)["rows"]
    run_cli("labels", str(home / "data" / "labels.parquet"), "--traffic", "s3flights", "--json", home=home)
    replay = ["replay", "--baseline", "models:/flight-delay/1", "--candidate", "models:/flight-delay/2"]
    out = run_cli(*replay, "--traffic", "s3flights", "--run-id", "s3run", "--batch-size", "2000", "--json", home=home)
    assert json.loads(out.stdout)["rows"] == total
    keys = _parquet(s3_server, s3_data_path)
    assert any("/main/traffic_s3flights/" in k for k in keys) and any("/main/predictions/" in k for k in keys), keys
    other = tmp_path / "machine_b"  # evaluates what machine A wrote, with nothing of its own
    ev = json.loads(run_cli("evaluate", "s3run", "--json", home=other).stdout)
    with Store(other / "lake", read_only=True) as s:
        got = _scores(s, "s3flights", "s3run")
    y, b, c = zip(*(v for v in got.values() if v[0] is not None), strict=True)
    assert ev["baseline"]["roc_auc"]["value"] == pytest.approx(roc_auc_score(y, b), abs=1e-9)
    assert ev["candidate"]["roc_auc"]["value"] == pytest.approx(roc_auc_score(y, c), abs=1e-9)
    local = home / "lake"  # the demo's own replay of the same requests, in its SQLite lake on local disk
    with Store(local, read_only=True, target=LakeTarget(local, None, str(local / "data") + os.sep)) as s:
        want = _scores(s, "flights", demo["replay"]["run_id"])
    common = got.keys() & want.keys()
    assert len(got) == total and len(common) >= total // 2, (len(got), len(common))
    assert all(got[r][1:] == pytest.approx(want[r][1:], abs=1e-5) for r in common)


def test_an_sqlite_catalog_with_its_data_on_s3(s3_data_path, s3_server, tmp_path):
    with Store(tmp_path / "lake") as s:
        _write_run(s, "r")
    assert (tmp_path / "lake" / CATALOG_FILE).exists() and not list(tmp_path.rglob("*.parquet"))
    assert len(_parquet(s3_server, s3_data_path)) == 2
    with Store(tmp_path / "lake", read_only=True) as s:
        assert s.run_counts("r").rows == 3000
        assert s.settings("http_timeout", "http_retries") == {"http_timeout": 30, "http_retries": 3}  # after the probe


def _job_traffic(s: Store, name: str, run: str, rows: int = 3000) -> None:
    """A traffic set a job ingested for itself 40 days ago, with one run on it (Parquet files, not inlined)."""
    with s.transaction() as cur:
        cur.execute(f'CREATE TABLE "traffic_{name}" AS SELECT range AS _row FROM range(?)', [rows])
        cur.execute(
            "INSERT INTO traffic_sets VALUES (?, ?, 'request_id', NULL, NULL, '[]', 'f', ?, 0, "
            "now() - INTERVAL 40 DAY, now() - INTERVAL 40 DAY)",
            [name, "traffic_" + name, rows],
        )
        cur.execute(
            "INSERT INTO jobs (job_id, kind, params, status, created_at) VALUES (?, 'x', '{}', 'f', now())", [name]
        )
        cur.execute("INSERT INTO runs VALUES (?, ?, '{}', '{}', 'finished', ?, ?, 'cpu', 'batch', '{}', now(), now())",
                    [run, name, rows, rows])  # fmt: skip
        cur.execute(
            "INSERT INTO predictions (run_id, _row, baseline_score) SELECT ?, range, 0.5 FROM range(?)", [run, rows]
        )


def test_gc_on_an_object_store_reports_and_frees_the_objects(pg_catalog, s3_data_path, s3_server, tmp_path):
    home = tmp_path / "home"
    with Store(home / "lake") as s:
        _job_traffic(s, "job_old", "run_old")
        _job_traffic(s, "job_cited", "run_cited")
        s.write(  # a decision cites job_cited's run: it stays
            "INSERT INTO decisions (decision_id, model, kind, run_id, verdict, weight_before, weight_after, record, "
            "record_hash, signature, created_at) VALUES ('d1', 'm', 'decision', 'run_cited', 'HOLD', 0, 0, '{}', "
            "'h', 's', now())"
        )
    before = _parquet(s3_server, s3_data_path)
    assert any("/main/traffic_job_old/" in k for k in before), before
    dry = json.loads(run_cli("gc", "--dry-run", "--json", home=home).stdout)
    assert dry["traffic_sets"] == ["job_old"] and dry["runs"] == ["run_old"] and dry["rows"]["predictions"] == 3000
    assert (dry["files_before"], dry["bytes_before"]) == (len(before), sum(before.values()))
    assert _parquet(s3_server, s3_data_path) == before  # a dry run touches nothing
    rep = json.loads(run_cli("gc", "--json", home=home).stdout)
    after = _parquet(s3_server, s3_data_path)
    assert (rep["files_before"], rep["bytes_before"]) == (len(before), sum(before.values()))
    assert (rep["files_after"], rep["bytes_after"]) == (len(after), sum(after.values()))
    # the dropped rows' objects stay while younger snapshots still reference them (time travel), then go
    assert any("/main/traffic_job_old/" in k for k in after)
    rep = json.loads(run_cli("gc", "--older-than", "0", "--json", home=home).stdout)
    last = _parquet(s3_server, s3_data_path)
    assert rep["traffic_sets"] == [] and rep["snapshots_expired"] > 0
    assert (rep["files_before"], rep["bytes_before"]) == (len(after), sum(after.values()))
    assert (rep["files_after"], rep["bytes_after"]) == (len(last), sum(last.values()))
    assert rep["bytes_freed"] > 0 and not any("/main/traffic_job_old/" in k for k in last), last
    with Store(home / "lake", read_only=True) as s:
        assert s.cursor().execute("SELECT DISTINCT run_id FROM predictions").fetchall() == [("run_cited",)]
        assert [t["name"] for t in s.list_traffic()] == ["job_cited"]


def test_gc_measures_the_data_path_not_the_home(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    monkeypatch.delenv("WORKBENCH_CATALOG", raising=False)
    monkeypatch.setenv("WORKBENCH_DATA_PATH", str(shared))
    lake = tmp_path / "home" / "lake"

    def measured() -> tuple[int, int]:
        files = list(shared.rglob("*.parquet"))
        catalog = sum(f.stat().st_size for f in lake.glob(CATALOG_FILE + "*"))
        return len(files), sum(f.stat().st_size for f in files) + catalog

    with Store(lake) as s:
        _job_traffic(s, "job_old", "run_old")
        _job_traffic(s, "job_new", "run_new")
        s.write("UPDATE traffic_sets SET updated_at = now() WHERE name = 'job_new'")
        files_before, bytes_before = measured()
        assert files_before >= 4 and not list(lake.rglob("*.parquet"))
        rep = collect(s, 30)
        assert rep.runs == ["run_old"] and (rep.files_before, rep.bytes_before) == (files_before, bytes_before)
        assert (rep.files_after, rep.bytes_after) == measured()
        s.write("DELETE FROM traffic_sets WHERE name = 'job_new'")  # not a job's own traffic any more: kept
        files_before, bytes_before = measured()
        rep = collect(s, 0)  # every snapshot expires: the dropped data's files go
        assert (rep.files_before, rep.bytes_before) == (files_before, bytes_before)
        assert (rep.files_after, rep.bytes_after) == measured() and rep.bytes_after < bytes_before


@pytest.mark.parametrize(
    ("case", "change", "expect"),
    [
        ("missing bucket", {"WORKBENCH_DATA_PATH": "s3://no-such-bucket/lake"}, "NoSuchBucket"),
        ("wrong secret", {"AWS_SECRET_ACCESS_KEY": "not-the-secret"}, "HTTP 403"),
        ("unknown key", {"AWS_ACCESS_KEY_ID": "AKIANOSUCHKEY"}, "InvalidAccessKeyId"),
        ("no server", {"AWS_ENDPOINT_URL": "http://127.0.0.1:{port}"}, "Could not connect"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_a_data_path_that_cannot_be_used_is_named_in_one_line(s3_data_path, tmp_path, case, change, expect):
    env = {k: v.format(port=free_port()) for k, v in change.items()}
    path = env.get("WORKBENCH_DATA_PATH", s3_data_path.rstrip("/")) + "/"
    out = run_cli("runs", "--json", home=tmp_path / "home", env=env, check=False)
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr, out.stderr
    assert f"data path {path} ($WORKBENCH_DATA_PATH) cannot be used" in out.stderr and expect in out.stderr
    assert "not-the-secret" not in out.stderr
    with pytest.MonkeyPatch.context() as mp:  # the library raises the same one line
        for k, v in env.items():
            mp.setenv(k, v)
        with pytest.raises(DataPathUnreachable, match=expect):
            Store(tmp_path / "other" / "lake")


def test_an_object_deleted_under_the_catalog_is_named_as_a_missing_data_file(s3_data_path, s3_server, tmp_path):
    with Store(tmp_path / "lake") as s:
        _write_run(s, "r", batches=1)
    (key,) = _parquet(s3_server, s3_data_path)
    s3_server.s3.delete_object(Bucket=s3_data_path.split("/")[2], Key=key)
    with Store(tmp_path / "lake", read_only=True) as s, pytest.raises(duckdb.Error) as e:
        s.cursor().execute("SELECT sum(baseline_score) FROM predictions").fetchall()
    problem = storage_problem(e.value)
    assert problem is not None and problem.startswith("the storage's data file ") and key in problem
    assert problem.endswith("is missing (deleted or moved under the catalog); restore it from a backup of the data "
                            "path (or the bucket's earlier object versions)")  # fmt: skip


def test_a_store_that_never_answers_fails_within_the_probe_timeout(s3_data_path, tmp_path, monkeypatch):
    with socket.socket() as silent:  # accepts connections (the kernel does) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{silent.getsockname()[1]}")
        start = time.monotonic()
        with pytest.raises(DataPathUnreachable, match="Timeout was reached"):
            Store(tmp_path / "lake")
    assert time.monotonic() - start < 2 * (PROBE_RETRIES + 1) * PROBE_TIMEOUT_S  # DuckDB's own: 2 minutes


def test_the_docs_example_sets_what_these_tests_set_and_prints_their_error(s3_server, tmp_path, monkeypatch):
    example = (REPO / "docs" / "operations" / "storage.md").read_text().split("### Example: an existing", 1)[1]
    setup, error = re.findall(r"```\n(.*?)```", example, flags=re.S)[:2]
    names = set(re.findall(r"^export (\w+)=", setup, flags=re.M)) - {"PGPASSWORD"}  # trust auth here
    assert names == {"WORKBENCH_CATALOG", "WORKBENCH_DATA_PATH", *s3_server.env()}
    s3_server.bucket("workbench-lake")
    monkeypatch.delenv("WORKBENCH_CATALOG", raising=False)
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    monkeypatch.setenv("WORKBENCH_DATA_PATH", "s3://workbench-lake/prod")
    with pytest.raises(DataPathUnreachable) as e:
        Store(tmp_path / "lake")
    assert "error: " + str(e.value) == " ".join(error.split())


def test_a_catalog_that_never_answers_fails_within_the_connect_timeout(tmp_path, monkeypatch):
    assert with_connect_timeout("dbname=x host=h") == f"dbname=x host=h connect_timeout={CONNECT_TIMEOUT_S}"
    assert with_connect_timeout("postgresql://h/x?sslmode=disable").endswith(f"&connect_timeout={CONNECT_TIMEOUT_S}")
    assert with_connect_timeout("dbname=x connect_timeout=2") == "dbname=x connect_timeout=2"
    with socket.socket() as silent:  # accepts connections (the kernel does) and never answers: a blackholed host
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        closed = free_port()
        for port, within in ((silent.getsockname()[1], CONNECT_TIMEOUT_S + 10), (closed, 10)):
            monkeypatch.setenv("WORKBENCH_CATALOG", f"postgres:dbname=wb host=127.0.0.1 port={port} user=wb")
            start = time.monotonic()
            with pytest.raises(CatalogUnreachable, match=f"port={port} user=wb' .* cannot be reached") as e:
                Store(tmp_path / "lake")
            assert time.monotonic() - start < within and "connect_timeout" not in str(e.value)
            out = run_cli("runs", "--json", home=tmp_path, check=False, timeout=60)
            assert out.returncode == 2 and out.stderr.count("\n") == 1 and "cannot be reached" in out.stderr

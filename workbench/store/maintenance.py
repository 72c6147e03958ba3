"""Keeping a lake small and moving old homes into it: retention (``workbench gc``) and ``workbench migrate``.

Retention drops what no decision needs: traffic sets that jobs ingested for themselves (with their runs,
labels and reports) once older than the retention and cited by no decision, drift sketches (a cache, rebuilt
on demand) and snapshots older than the retention; then it merges small data files and deletes the files
nothing references any more. Signed records, the chain and every run a decision cites are always kept.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from workbench.clock import db_time, utc_now
from workbench.errors import WorkbenchError
from workbench.store.lake import CATALOG_FILE, LEGACY_FILE
from workbench.store.names import qident, sql_literal, traffic_table
from workbench.store.schema import SCHEMA

# tables whose rows belong to one run, and to one traffic set
RUN_TABLES = (
    "predictions",
    "prediction_probabilities",
    "prediction_quantiles",
    "run_batches",
    "evaluations",
    "drift_reports",
)
TRAFFIC_TABLES = ("labels", "label_values", "label_classes", "quarantine", "ingests", "traffic_segments")


@dataclass
class GcReport:
    """What a retention pass dropped (or, with ``dry_run``, would drop) and what it freed: ``files_*`` count the
    Parquet files under the lake's data path (a folder or an object store), ``bytes_*`` add up those files and,
    with an SQLite catalog, the catalog's file."""

    older_than_days: float
    dry_run: bool
    traffic_sets: list[str] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)
    sketch_keys: int = 0
    snapshots_expired: int = 0
    files_before: int = 0
    files_after: int = 0
    bytes_before: int = 0
    bytes_after: int = 0

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__ | {"bytes_freed": self.bytes_before - self.bytes_after}


def _count(cur, sql: str, params: list) -> int:
    return int(cur.execute(sql, params).fetchall()[0][0])


def collect(store, older_than_days: float, dry_run: bool = False) -> GcReport:
    """Apply retention to ``store`` (a lake): see the module's docstring. Report what went and what was freed."""
    if store.lake is None:
        raise WorkbenchError("retention applies to a home's storage, not to an in-memory store")
    if older_than_days < 0:
        raise WorkbenchError(f"--older-than must be 0 or more days, not {older_than_days:g}")
    cutoff = db_time(utc_now() - timedelta(days=older_than_days))
    rep = GcReport(older_than_days, dry_run)
    rep.files_before, rep.bytes_before = stored_files(store)
    with store.transaction() as cur:
        rep.traffic_sets = [
            r[0]
            for r in cur.execute(
                """SELECT name FROM traffic_sets WHERE updated_at < ? AND name IN (SELECT job_id FROM jobs)
                   AND name NOT IN (SELECT r.traffic FROM runs r JOIN decisions d USING (run_id))
                   ORDER BY name""",
                [cutoff],
            ).fetchall()
        ]
        rep.runs = [
            r[0]
            for r in cur.execute(
                "SELECT run_id FROM runs WHERE list_contains(?, traffic) ORDER BY run_id", [rep.traffic_sets]
            ).fetchall()
        ]
        for t in RUN_TABLES:
            rep.rows[t] = _count(cur, f"SELECT count(*) FROM {t} WHERE list_contains(?, run_id)", [rep.runs])
        for t in TRAFFIC_TABLES:
            rep.rows[t] = _count(cur, f"SELECT count(*) FROM {t} WHERE list_contains(?, traffic)", [rep.traffic_sets])
        rep.rows["traffic rows"] = sum(
            _count(cur, f"SELECT count(*) FROM {traffic_table(n)}", []) for n in rep.traffic_sets
        )
        old_keys = "SELECT key FROM drift_sketches GROUP BY key HAVING max(created_at) < ?"
        rep.sketch_keys = _count(cur, f"SELECT count(*) FROM ({old_keys})", [cutoff])
        if not dry_run:
            for t in RUN_TABLES:
                cur.execute(f"DELETE FROM {t} WHERE list_contains(?, run_id)", [rep.runs])
            cur.execute("DELETE FROM runs WHERE list_contains(?, run_id)", [rep.runs])
            for t in TRAFFIC_TABLES:
                cur.execute(f"DELETE FROM {t} WHERE list_contains(?, traffic)", [rep.traffic_sets])
            for n in rep.traffic_sets:
                cur.execute(f"DROP TABLE IF EXISTS {traffic_table(n)}")
            cur.execute("DELETE FROM traffic_sets WHERE list_contains(?, name)", [rep.traffic_sets])
            for t in ("drift_sketch_values", "drift_ref_scores", "drift_sketches"):
                cur.execute(f"DELETE FROM {t} WHERE key IN ({old_keys})", [cutoff])
    if not dry_run:
        with store._writer():
            cur, lake = store.cursor(), store.catalog
            before = _count(cur, f"SELECT count(*) FROM ducklake_snapshots('{lake}')", [])
            cur.execute(
                f"CALL ducklake_expire_snapshots('{lake}', older_than => CAST(? AS TIMESTAMPTZ))", [cutoff.isoformat()]
            )
            rep.snapshots_expired = before - _count(cur, f"SELECT count(*) FROM ducklake_snapshots('{lake}')", [])
            cur.execute(f"CALL ducklake_flush_inlined_data('{lake}')")
            cur.execute(f"CALL ducklake_merge_adjacent_files('{lake}')")
            cur.execute(f"CALL ducklake_cleanup_old_files('{lake}', cleanup_all => true)")
    rep.files_after, rep.bytes_after = stored_files(store)
    return rep


def stored_files(store) -> tuple[int, int]:
    """The Parquet files under ``store``'s data path (listed through DuckDB, so an object store counts too), and
    their bytes plus those of an SQLite catalog's files."""
    pattern = store.data_path + "**/*.parquet"
    cur = store.cursor()
    files, size = 0, 0
    if cur.execute("SELECT count(*) FROM glob(?)", [pattern]).fetchall()[0][0]:  # read_blob refuses no match
        files, size = cur.execute("SELECT count(*), sum(size) FROM read_blob(?)", [pattern]).fetchall()[0]
    catalog = [store.lake / CATALOG_FILE, store.lake / (CATALOG_FILE + "-wal")] if store.target.postgres is None else []
    return int(files), int(size) + sum(f.stat().st_size for f in catalog if f.exists())


# -- migrate ---------------------------------------------------------------------------------------
EXPORT_SCRIPT = """
import duckdb, json, sys
src, out = sys.argv[1], sys.argv[2]
con = duckdb.connect(src, read_only=True)
counts = {}
for (name,) in con.execute("SELECT table_name FROM duckdb_tables() WHERE NOT temporary ORDER BY 1").fetchall():
    q = '"' + name.replace('"', '""') + '"'
    con.execute(f"COPY {q} TO '{out}/{name}.parquet' (FORMAT parquet)")
    counts[name] = con.execute(f"SELECT count(*) FROM {q}").fetchall()[0][0]
print(json.dumps({"duckdb": duckdb.__version__, "tables": counts}))
"""


def legacy_readers() -> list[tuple[str, dict[str, str]]]:
    """Interpreter environments that can read an old single-file home: this one, then the side copy of the
    DuckDB that wrote it (``$WORKBENCH_LEGACY_DUCKDB``, installed by ``make install`` under the virtualenv)."""
    side = os.environ.get("WORKBENCH_LEGACY_DUCKDB") or str(Path(sys.prefix) / "legacy-duckdb")
    envs = [("this environment", dict(os.environ))]
    if Path(side).is_dir():
        envs.append((f"DuckDB from {side}", dict(os.environ) | {"PYTHONPATH": side}))
    return envs


def export_legacy(legacy: Path, out: Path) -> dict[str, Any]:
    """Export every table of an old home's DuckDB file to Parquet files in ``out``; the counts per table."""
    tried = []
    for what, env in legacy_readers():
        proc = subprocess.run(
            [sys.executable, "-c", EXPORT_SCRIPT, str(legacy), str(out)], env=env, capture_output=True, text=True
        )
        if proc.returncode == 0:
            return json.loads(proc.stdout.strip().splitlines()[-1])
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        tried.append(f"{what}: {last}")
    raise WorkbenchError(f"cannot read {legacy}: " + "; ".join(tried))


def migrate(home: Path, open_lake: Callable[[Path], Any], progress: Callable[[str], None] = print) -> dict:
    """Move ``home``'s old single-file database into its lake (``open_lake(path)`` opens the new store), with
    the rows of every table counted on both sides; the old file is kept, renamed ``*.migrated``."""
    legacy, lake = home / LEGACY_FILE, home / "lake"
    if not legacy.is_file():
        raise WorkbenchError(f"nothing to migrate: {home} has no {LEGACY_FILE}")
    if (lake / CATALOG_FILE).exists():
        raise WorkbenchError(f"{lake} exists already; move it away to migrate {legacy} again")
    export = lake.parent / "migrate-export"
    export.mkdir(parents=True, exist_ok=True)
    progress(f"exporting {legacy}")
    exported = export_legacy(legacy, export)
    known = {ddl.split("EXISTS", 1)[1].split("(", 1)[0].strip() for ddl in SCHEMA}
    tables: dict[str, dict[str, int]] = {}
    os.replace(legacy, legacy.with_name(LEGACY_FILE + ".migrating"))
    try:
        with open_lake(lake) as store, store.transaction() as cur:
            for name, n in exported["tables"].items():
                src = sql_literal(str(export / f"{name}.parquet"))
                if name in known:  # columns added since (ADDED_COLUMNS) are filled below
                    have = {r[0] for r in cur.execute(f"DESCRIBE SELECT * FROM read_parquet({src})").fetchall()}
                    cols = ", ".join(qident(c) for c in store._table_columns(name) if c in have)
                    cur.execute(f"INSERT INTO {qident(name)} ({cols}) SELECT {cols} FROM read_parquet({src})")
                else:
                    cur.execute(f"CREATE TABLE {qident(name)} AS SELECT * FROM read_parquet({src})")
                got = _count(cur, f"SELECT count(*) FROM {qident(name)}", [])
                if got != n:
                    raise WorkbenchError(f"table {name}: {n} rows in {legacy}, {got} in the lake; nothing was moved")
                tables[name] = {"rows": n}
                progress(f"  {name}: {n:,} rows")
            store.fill_label_rows(cur)
    except BaseException:
        os.replace(legacy.with_name(LEGACY_FILE + ".migrating"), legacy)
        shutil.rmtree(lake, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(export, ignore_errors=True)
    os.replace(legacy.with_name(LEGACY_FILE + ".migrating"), legacy.with_name(LEGACY_FILE + ".migrated"))
    return {"from": str(legacy), "to": str(lake), "read_with": exported["duckdb"], "tables": tables}

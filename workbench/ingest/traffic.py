"""Ingest traffic logs and labels under a schema contract, with a quarantine for rows that break it.

Contract (see CONTRACT.md): the request id, the event time and every feature column are required
(``nullable`` lifts that per column; a name may be a shell-style pattern such as ``live_*``). A row with a
null gets ``null:<col>``, a value that cannot be read as its column's type ``type:<col>``, an infinite number
``nonfinite:<col>``, a later copy of a request id ``duplicate_id``, a CSV line with the wrong number of cells
``malformed_row``. Rows read = rows ingested + rows quarantined, always. A file that cannot be read at all,
or whose column names are empty, duplicated (DuckDB names are case-insensitive) or reserved, raises
:class:`WorkbenchError` and changes nothing (one transaction per ingest). In CSV files only an empty cell
is null: text such as ``NA`` or ``null`` is a value.
"""

from __future__ import annotations

import codecs
import fnmatch
import glob
import hashlib
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from workbench import WorkbenchError
from workbench.store import ArrowView, Store, check_name, name_problem, qident, sql_literal, traffic_table
from workbench.tasks import BINARY, MULTICLASS, REGRESSION, check_task

BATCH_ROWS = 262_144
RAW_MAX_CHARS = 4096
NUMERIC_TYPES = ("BIGINT", "DOUBLE")
INTEGER_TYPES = (
    "TINYINT",
    "SMALLINT",
    "INTEGER",
    "BIGINT",
    "HUGEINT",
    "UTINYINT",
    "USMALLINT",
    "UINTEGER",
    "UBIGINT",
    "UHUGEINT",
)
RESERVED_PREFIX = "_wb_"  # staging columns and views of the ingest; a source column may not use it


@dataclass(frozen=True)
class IngestResult:
    traffic: str
    rows_read: int
    rows: int
    quarantined: int
    reasons: dict
    fingerprint: str

    def to_dict(self) -> dict:
        return {
            "traffic": self.traffic,
            "rows": self.rows,
            "quarantined": self.quarantined,
            "rows_read": self.rows_read,
            "reasons": self.reasons,
            "fingerprint": self.fingerprint,
        }


@dataclass(frozen=True)
class LabelsResult:
    traffic: str
    rows_read: int
    labels: int
    unmatched: int
    quarantined: int
    reasons: dict

    def to_dict(self) -> dict:
        return asdict(self)


# -- reading --------------------------------------------------------------------------------------
def resolve_paths(path: str | Path) -> list[Path]:
    """Expand a file path or glob into a sorted list of files; an empty match is an error."""
    p = str(path)
    files = sorted(Path(f) for f in glob.glob(p, recursive=True)) if any(c in p for c in "*?[") else [Path(p)]
    if not files:
        raise WorkbenchError(f"no file matches {p}")
    for f in files:
        if not f.is_file():
            raise WorkbenchError(f"traffic file not found: {f}")
    return files


def file_sha256(files: Iterable[Path], *, check_text: bool = False) -> str:
    """SHA-256 over the files' bytes. With ``check_text``, an uncompressed CSV file must also be UTF-8 (checked
    in the same pass): the CSV reader cannot report a malformed line that is not."""
    h = hashlib.sha256()
    for f in files:
        decoder = (
            codecs.getincrementaldecoder("utf-8")()
            if check_text and _format(f) == "csv" and not f.name.lower().endswith(".gz")
            else None
        )
        offset = 0
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
                if decoder is not None:
                    try:
                        decoder.decode(chunk, final=len(chunk) < 1 << 20)
                    except UnicodeDecodeError as e:
                        raise WorkbenchError(
                            f"cannot read {f}: not UTF-8 text (byte 0x{chunk[e.start]:02x} at "
                            f"offset {offset + e.start}); convert it to UTF-8"
                        ) from None
                offset += len(chunk)
        if decoder is not None:
            try:
                decoder.decode(b"", final=True)
            except UnicodeDecodeError:
                raise WorkbenchError(f"cannot read {f}: not UTF-8 text (it ends inside a character)") from None
    return h.hexdigest()


def _format(f: Path) -> str:
    s = "".join(f.suffixes[-2:]).lower()
    if s.endswith((".parquet", ".pq")):
        return "parquet"
    if s.endswith((".csv", ".csv.gz", ".tsv")):
        return "csv"
    if s.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    raise WorkbenchError(f"unsupported file type {f.name}: use .parquet, .csv or .jsonl")


def read_batches(
    files: list[Path], batch_rows: int = BATCH_ROWS, on_malformed: Callable[[str], None] | None = None
) -> Iterator[pa.RecordBatch]:
    """Stream record batches from Parquet, CSV (every column read as text) or JSON-lines files.

    A CSV line with the wrong number of cells is skipped and handed to ``on_malformed`` (its text); without
    the callback it makes the file unreadable.
    """
    for f in files:
        kind = _format(f)
        try:
            if kind == "parquet":
                # pre_buffer (pyarrow's default) keeps every column chunk it read until the file is closed:
                # 1.36 GB held while streaming a 1.2 GB file; without it the reader holds ~one row group
                pf = pq.ParquetFile(f, pre_buffer=False)
                if pf.metadata.num_rows == 0:
                    yield pa.RecordBatch.from_pylist([], schema=pf.schema_arrow)
                yield from pf.iter_batches(batch_size=batch_rows)
            elif kind == "csv":
                delim = "\t" if f.suffix.lower() == ".tsv" else ","
                handler = None if on_malformed is None else (lambda row: on_malformed(row.text) or "skip")
                probe = pacsv.ParseOptions(
                    delimiter=delim, newlines_in_values=True, invalid_row_handler=lambda row: "skip"
                )
                names = pacsv.open_csv(f, parse_options=probe).schema.names
                check_column_names(names, f)
                conv = pacsv.ConvertOptions(
                    column_types={n: pa.string() for n in names}, null_values=[""], strings_can_be_null=True
                )
                parse = pacsv.ParseOptions(delimiter=delim, newlines_in_values=True, invalid_row_handler=handler)
                reader = pacsv.open_csv(
                    f, parse_options=parse, convert_options=conv, read_options=pacsv.ReadOptions(block_size=16 << 20)
                )
                empty = True
                for batch in reader:
                    empty = False
                    yield batch
                if empty:  # a header without rows: its names are still checked against the contract
                    yield pa.RecordBatch.from_pylist([], schema=pa.schema([(n, pa.string()) for n in names]))
            else:
                yield from pajson.read_json(f).to_batches(batch_rows)
        except WorkbenchError:
            raise
        except (pa.ArrowException, OSError, ValueError) as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            msg = "".join(c if c.isprintable() else "?" for c in msg)[:300]  # parse errors quote raw bytes
            raise WorkbenchError(f"cannot read {f}: {msg}") from None


def check_column_names(names: list[str], source) -> None:
    """Refuse column names DuckDB would rename or that clash with the ingest's own: empty names, names
    equal up to case (DuckDB identifiers are case-insensitive), names starting with ``_wb_``, and names
    with whitespace or a control character at either end or a control character anywhere (``x`` and
    ``x\\n`` would otherwise be two columns that print alike)."""
    seen: dict[str, str] = {}
    for i, n in enumerate(names):
        if not n or not n.strip():
            raise WorkbenchError(f"{source}: column {i + 1} has no name")
        problem = name_problem(n)
        if problem is not None:
            raise WorkbenchError(f"{source}: column name {n!r} is refused: {problem}")
        key = n.casefold()
        if key in seen:
            raise WorkbenchError(
                f"{source}: duplicate column name {n!r}"
                + (f" (same as {seen[key]!r}: column names are case-insensitive)" if seen[key] != n else "")
            )
        if key.startswith(RESERVED_PREFIX):
            raise WorkbenchError(
                f"{source}: column name {n!r} is reserved (names starting with "
                f"{RESERVED_PREFIX!r} are the workbench's own)"
            )
        seen[key] = n


# -- typing ---------------------------------------------------------------------------------------
def _query(view: ArrowView, sql: str) -> list[tuple]:
    """The rows of a query over the view."""
    rel = view.execute(sql)
    if rel is None:
        raise ValueError(f"not a query: {sql}")
    return rel.fetchall()


def _column_types(view: ArrowView) -> dict[str, str]:
    return {r[0]: r[1] for r in _query(view, f"DESCRIBE SELECT * FROM {view.name}")}


def _infer_text_type(view: ArrowView, col: str) -> str:
    """Type of a text column: numeric when at least 90% of its values read as numbers."""
    q = qident(col)
    n, as_int, as_num = _query(
        view,
        f"SELECT count({q}), count({_strict_int(q, 'VARCHAR', 'BIGINT')}), count(TRY_CAST({q} AS DOUBLE)) "
        f"FROM {view.name}",
    )[0]
    if n == 0:
        return "VARCHAR"
    if as_int >= 0.9 * n and as_int == as_num:
        return "BIGINT"
    if as_num >= 0.9 * n:
        return "DOUBLE"
    return "VARCHAR"


def _target_types(view: ArrowView, src_types: dict[str, str], existing: dict[str, str] | None) -> dict[str, str]:
    if existing:
        return existing
    out = {}
    for c, t in src_types.items():
        # a column with no value at all (Arrow's null type) is stored as text: DuckDB's NULL type holds nothing
        out[c] = _infer_text_type(view, c) if t == "VARCHAR" else "VARCHAR" if t.strip('"') == "NULL" else t
    return out


def _cast_expr(col: str, src_type: str, target: str) -> str:
    q = f"_wb_src.{qident(col)}"
    if target == "TIMESTAMP":
        if src_type.startswith("TIMESTAMP") and "TIME ZONE" not in src_type:
            return f"CAST({q} AS TIMESTAMP)"
        return f"CAST(TRY_CAST({q} AS TIMESTAMPTZ) AS TIMESTAMP)"
    if src_type == target:
        return q
    if target in INTEGER_TYPES:
        return _strict_int(q, src_type, target)
    return f"TRY_CAST({q} AS {target})"


def _label_expr(q: str, src_type: str) -> str:
    """A binary label as 0 or 1, NULL for any other value: numbers equal to 0 or 1, booleans, and text
    ``0``/``1`` or a boolean word DuckDB reads (``true``, ``false``, ``t``, ``f``, ``yes``, ``no``, ``y``,
    ``n``, any case). ``0.5``, ``2`` or ``1e300`` is not a label (never rounded or read as true)."""
    if src_type == "BOOLEAN":
        return f"CAST({q} AS INTEGER)"
    if src_type == "VARCHAR":
        # DuckDB reads text as a boolean only from those words and '0'/'1': '2', '0.5', '1e300' give NULL
        word = f"CAST(TRY_CAST({q} AS BOOLEAN) AS INTEGER)"
        return f"CASE WHEN trim({q}) IN ('0', '1') THEN CAST(trim({q}) AS INTEGER) ELSE {word} END"
    if src_type in INTEGER_TYPES or src_type in ("DOUBLE", "FLOAT") or src_type.startswith("DECIMAL"):
        return f"CASE WHEN {q} = 0 THEN 0 WHEN {q} = 1 THEN 1 END"
    return "CAST(NULL AS INTEGER)"


def _value_expr(q: str, src_type: str) -> str:
    """A numeric label (a regression target) as a finite DOUBLE, NULL for anything else: numbers, and text that
    reads as a number. Infinities, booleans and other text are not targets."""
    if src_type == "VARCHAR":
        value = f"TRY_CAST(trim({q}) AS DOUBLE)"
    elif src_type in INTEGER_TYPES or src_type in ("DOUBLE", "FLOAT") or src_type.startswith("DECIMAL"):
        value = f"CAST({q} AS DOUBLE)"
    else:
        return "CAST(NULL AS DOUBLE)"
    return f"CASE WHEN isfinite({value}) THEN {value} END"


def _class_expr(q: str, src_type: str) -> str:
    """A class label (a multi-class target) as text, NULL for anything else: text (trimmed, not empty),
    integers, and floats that hold an integer (``2.0`` is class ``2``, ``2.5`` is no class)."""
    if src_type == "VARCHAR":
        return f"NULLIF(trim({q}), '')"
    if src_type in INTEGER_TYPES:
        return f"CAST({q} AS VARCHAR)"
    if src_type in ("DOUBLE", "FLOAT") or src_type.startswith("DECIMAL"):
        return f"CASE WHEN isfinite({q}) AND {q} = floor({q}) THEN CAST(CAST({q} AS HUGEINT) AS VARCHAR) END"
    return "CAST(NULL AS VARCHAR)"


def _label_missing(q: str, src_type: str) -> str:
    """SQL that is true where a label is missing: NULL, or NaN in a float column."""
    return f"({q} IS NULL OR isnan({q}))" if src_type in ("DOUBLE", "FLOAT") else f"{q} IS NULL"


def _strict_int(q: str, src_type: str, target: str) -> str:
    """Cast to an integer type only what is an integer: DuckDB's own cast rounds '1.5' and 1.5 to 2."""
    if src_type == "VARCHAR":
        return f"CASE WHEN regexp_full_match(trim({q}), '[+-]?[0-9]+') THEN TRY_CAST(trim({q}) AS {target}) END"
    if src_type in ("DOUBLE", "FLOAT") or src_type.startswith("DECIMAL"):
        return f"CASE WHEN {q} = trunc({q}) THEN TRY_CAST({q} AS {target}) END"
    return f"TRY_CAST({q} AS {target})"


# -- ingest ---------------------------------------------------------------------------------------
def chain_fingerprint(previous: str, files_sha: str) -> str:
    """A traffic set's fingerprint after ingesting files with ``file_sha256`` ``files_sha`` into it."""
    return hashlib.sha256((previous + files_sha).encode()).hexdigest()


def files_fingerprint(path: str | Path) -> str:
    """The fingerprint of a traffic set ingested from exactly these files."""
    return chain_fingerprint("", file_sha256(resolve_paths(path), check_text=True))


def ingest(
    store: Store,
    path: str | Path,
    name: str,
    *,
    id_col: str = "request_id",
    time_col: str = "event_time",
    entity_col: str | None = None,
    label_col: str | None = None,
    nullable: Iterable[str] = (),
    progress: Callable[[int], None] | None = None,
) -> IngestResult:
    """Ingest a traffic file (or glob) into traffic set ``name``; return the reconciled counts.

    ``progress(rows_read)`` is called after each batch.
    """
    check_name(name, "traffic name")
    files = resolve_paths(path)
    sha = file_sha256(files, check_text=True)
    nullable = set(nullable)
    info = store.traffic_info(name)
    if info and (info["id_col"], info["time_col"]) != (id_col, time_col):
        raise WorkbenchError(
            f"traffic {name!r} was ingested with id column {info['id_col']!r} and time column "
            f"{info['time_col']!r}; use the same columns to append"
        )
    ingest_id = uuid.uuid4().hex[:12]
    read = 0
    reasons: dict[str, int] = {}
    malformed: list[str] = []
    with store.transaction() as cur:
        existing_types = _stored_feature_types(cur, name) if info else None
        row_offset = _next_row(cur, name) if info else 0
        features: list[str] | None = None
        for batch in read_batches(files, on_malformed=malformed.append):
            check_column_names(batch.schema.names, path)
            if features is None:
                features = _check_columns(batch.schema.names, id_col, time_col, entity_col, label_col, existing_types)
            else:
                _check_same_columns(batch.schema.names, features, id_col, time_col, entity_col, label_col)
            if len(batch) == 0:
                continue  # column types come from rows: an empty file or batch only has its names checked
            view = ArrowView(cur, "_wb_batch", pa.Table.from_batches([batch]))
            src_types = _column_types(view)
            if not _staged(cur):
                targets = _target_types(view, {c: src_types[c] for c in features}, existing_types)
                if info is None:
                    _create_table(cur, name, features, targets)
            _stage_batch(
                cur,
                view,
                src_types,
                features,
                targets,
                id_col,
                time_col,
                entity_col,
                label_col,
                nullable,
                row_offset + read,
            )
            read += len(batch)
            if progress:
                progress(read)
        if not _staged(cur):
            if info is None and not malformed:
                raise WorkbenchError(
                    f"{path} holds no rows: nothing to ingest (a new traffic set takes its column types from its rows)"
                )
            if info is None:
                raise WorkbenchError(
                    f"{path} holds no readable rows ({len(malformed)} malformed line(s)): nothing to ingest"
                )
            ingested = 0
        else:
            ingested = _commit_stage(
                cur, name, ingest_id, features, row_offset, appending=info is not None, reasons=reasons
            )
            if info is not None:
                store.fill_label_rows(cur, name)  # labels that came before these requests
            if label_col:
                store.upsert_labels(
                    cur,
                    name,
                    cur.sql(
                        "SELECT request_id, _wb_label AS label, CAST(NULL AS TIMESTAMP) AS label_time, _row "
                        "FROM _wb_stage WHERE _wb_reason IS NULL AND _wb_label IS NOT NULL"
                    ).to_arrow_table(),
                )
            cur.execute("DROP TABLE _wb_stage")
        read += _quarantine_malformed(cur, name, ingest_id, "traffic", malformed, reasons)
        quarantined = read - ingested
        fingerprint = chain_fingerprint((info or {}).get("fingerprint", ""), sha)
        if features is None:  # no batch was read: only an append gets here, and it keeps the set's columns
            features = list(info["columns"]) if info else []
        store.upsert_traffic_set(
            cur,
            name,
            id_col=id_col,
            time_col=time_col,
            entity_col=entity_col,
            columns=features,
            fingerprint=fingerprint,
            added_rows=ingested,
            added_quarantined=quarantined,
        )
        store.record_ingest(
            cur,
            ingest_id=ingest_id,
            traffic=name,
            kind="traffic",
            source=str(path),
            file_sha256=sha,
            rows_read=read,
            rows_ingested=ingested,
            rows_quarantined=quarantined,
        )
    return IngestResult(name, read, ingested, quarantined, dict(sorted(reasons.items())), fingerprint)


def _staged(cur) -> bool:
    """Whether this ingest has staged rows yet (its temporary ``_wb_stage`` table exists)."""
    return (
        cur.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = '_wb_stage' AND temporary").fetchall()[0][
            0
        ]
        > 0
    )


def _quarantine_malformed(cur, traffic: str, ingest_id: str, kind: str, lines: list[str], reasons: dict) -> int:
    """Quarantine CSV lines that could not be split into the header's cells; returns their number."""
    if lines:
        cur.executemany(
            "INSERT INTO quarantine VALUES (?, ?, ?, NULL, NULL, 'malformed_row', ?)",
            [[traffic, ingest_id, kind, text[:RAW_MAX_CHARS]] for text in lines],
        )
        reasons["malformed_row"] = reasons.get("malformed_row", 0) + len(lines)
    return len(lines)


def _stored_feature_types(cur, name: str) -> dict[str, str]:
    rows = cur.execute(f"DESCRIBE SELECT * FROM {traffic_table(name)}").fetchall()
    return {r[0]: r[1] for r in rows if r[0] not in ("_row", "request_id", "event_time", "entity_key")}


def _next_row(cur, name: str) -> int:
    return int(cur.execute(f"SELECT coalesce(max(_row) + 1, 0) FROM {traffic_table(name)}").fetchall()[0][0])


def _check_columns(cols, id_col, time_col, entity_col, label_col, existing_types) -> list[str]:
    missing = [c for c in (id_col, time_col, entity_col, label_col) if c and c not in cols]
    if missing:
        raise WorkbenchError(
            f"missing required column(s) {', '.join(missing)}; the file has: {', '.join(repr(c) for c in cols[:30])}"
        )
    reserved = {"_row", "request_id", "event_time", "entity_key"} - {
        c.casefold() for c in (id_col, time_col, entity_col) if c
    }
    clash = sorted(c for c in cols if c.casefold() in reserved and c not in (id_col, time_col, entity_col))
    if clash:
        raise WorkbenchError(f"column name(s) {', '.join(clash)} are reserved by the workbench; rename them")
    features = [c for c in cols if c not in (id_col, time_col, entity_col, label_col)]
    if existing_types is not None:
        missing = [c for c in existing_types if c not in features]
        if missing:
            raise WorkbenchError(f"missing column(s) {', '.join(missing)} that the traffic set already has")
        features = list(existing_types)
    return features


def _check_same_columns(cols, features, id_col, time_col, entity_col, label_col) -> None:
    missing = [c for c in [id_col, time_col, entity_col, label_col, *features] if c and c not in cols]
    if missing:
        raise WorkbenchError(f"a later file or batch lacks column(s) {', '.join(missing)}")


def _create_table(cur, name: str, features: list[str], targets: dict[str, str]) -> None:
    cols = ["_row BIGINT", "request_id VARCHAR", "event_time TIMESTAMP", "entity_key VARCHAR"]
    cols += [f"{qident(c)} {targets[c]}" for c in features]
    cur.execute(f"CREATE TABLE {traffic_table(name)} ({', '.join(cols)})")


def _stage_batch(
    cur, view: ArrowView, src_types, features, targets, id_col, time_col, entity_col, label_col, nullable, row_offset
) -> None:
    """Type-check one batch in SQL and append it, with each row's first failing reason, to ``_wb_stage``."""
    sel = [
        f"{row_offset} + (row_number() OVER () - 1) AS _row",
        f"CAST(_wb_src.{qident(id_col)} AS VARCHAR) AS request_id",
        f"{_cast_expr(time_col, src_types[time_col], 'TIMESTAMP')} AS event_time",
        (f"CAST(_wb_src.{qident(entity_col)} AS VARCHAR)" if entity_col else "CAST(NULL AS VARCHAR)")
        + " AS entity_key",
    ]
    id_nan = f" OR isnan(_wb_src.{qident(id_col)})" if src_types[id_col] in ("DOUBLE", "FLOAT") else ""
    checks = [
        f"WHEN _wb_src.{qident(id_col)} IS NULL OR CAST(_wb_src.{qident(id_col)} AS VARCHAR) = ''{id_nan} "
        f"THEN {sql_literal('null:' + id_col)}",
        f"WHEN _wb_src.{qident(time_col)} IS NULL THEN {sql_literal('null:' + time_col)}",
        f"WHEN {_cast_expr(time_col, src_types[time_col], 'TIMESTAMP')} IS NULL THEN {sql_literal('type:' + time_col)}",
    ]
    for c in features:
        expr = _cast_expr(c, src_types[c], targets[c])
        sel.append(f"{expr} AS {qident(c)}")
        src = f"_wb_src.{qident(c)}"
        if not any(fnmatch.fnmatchcase(c, pat) for pat in nullable):
            null_test = f"{src} IS NULL"
            if targets[c] in ("DOUBLE", "FLOAT"):  # NaN is missing, whether it came as a float or as text
                null_test += f" OR isnan({expr})"
            checks.append(f"WHEN {null_test} THEN {sql_literal('null:' + c)}")
        checks.append(f"WHEN {src} IS NOT NULL AND {expr} IS NULL THEN {sql_literal('type:' + c)}")
        if targets[c] in ("DOUBLE", "FLOAT"):
            checks.append(f"WHEN isinf({expr}) THEN {sql_literal('nonfinite:' + c)}")
    if label_col:
        lab = f"_wb_src.{qident(label_col)}"
        lab_expr = _label_expr(lab, src_types[label_col])
        sel.append(f"{lab_expr} AS _wb_label")
        checks.append(
            f"WHEN NOT {_label_missing(lab, src_types[label_col])} AND {lab_expr} IS NULL "
            f"THEN {sql_literal('type:' + label_col)}"
        )
    reason = "CASE " + " ".join(checks) + " END"
    # the raw row (as it came in) is kept only for rows that fail here; duplicates get theirs at commit
    raw = f"CASE WHEN _wb_reason IS NOT NULL THEN left(CAST(to_json(_wb_src) AS VARCHAR), {RAW_MAX_CHARS}) END"
    query = f"""SELECT *, {raw} AS _wb_raw FROM (SELECT {", ".join(sel)}, {reason} AS _wb_reason, _wb_src
                FROM {view.name} AS _wb_src)"""
    query = f"SELECT * EXCLUDE (_wb_src) FROM ({query})"
    if not _staged(cur):
        view.execute(f"CREATE TEMP TABLE _wb_stage AS {query} LIMIT 0")
    view.execute(f"INSERT INTO _wb_stage {query}")


def _commit_stage(cur, name, ingest_id, features, row_offset, *, appending: bool, reasons: dict) -> int:
    """Mark later copies of a request id (in this ingest or already stored), then move good rows into the
    traffic table in file order and bad ones into the quarantine; return the number ingested. The copy kept
    is the first that passed the other checks: a quarantined copy never displaces a good one."""
    stored = f" OR request_id IN (SELECT request_id FROM {traffic_table(name)})" if appending else ""
    cur.execute(f"""UPDATE _wb_stage SET _wb_reason = 'duplicate_id'
                    WHERE _wb_reason IS NULL AND (_row IN (
                        SELECT _row FROM (SELECT _row, row_number() OVER (PARTITION BY request_id ORDER BY _row) AS k
                                          FROM _wb_stage WHERE _wb_reason IS NULL) WHERE k > 1){stored})""")
    cols = ", ".join(["_row", "request_id", "event_time", "entity_key"] + [qident(c) for c in features])
    # ORDER BY (the stage is in _row order already) makes DuckDB write full row groups: a plain insert keeps
    # the source's partial ones, and the next checkpoint of any later write (a replay's) merges and rewrites
    # them, about 0.1 s per million rows
    cur.execute(
        f"INSERT INTO {traffic_table(name)} ({cols}) SELECT {cols} FROM _wb_stage "
        "WHERE _wb_reason IS NULL ORDER BY _row"
    )
    typed = (
        "struct_pack("
        + ", ".join(f"{qident(c)} := {qident(c)}" for c in ["request_id", "event_time", "entity_key", *features])
        + ")"
    )
    cur.execute(
        f"""INSERT INTO quarantine SELECT ?, ?, 'traffic', _row - ?, request_id, _wb_reason,
                        coalesce(_wb_raw, left(CAST(to_json({typed}) AS VARCHAR), {RAW_MAX_CHARS}))
                    FROM _wb_stage WHERE _wb_reason IS NOT NULL ORDER BY _row""",
        [name, ingest_id, row_offset],
    )
    for r, n in cur.execute(
        "SELECT _wb_reason, count(*) FROM _wb_stage WHERE _wb_reason IS NOT NULL GROUP BY 1"
    ).fetchall():
        reasons[r] = reasons.get(r, 0) + int(n)
    return int(cur.execute("SELECT count(*) FROM _wb_stage WHERE _wb_reason IS NULL").fetchall()[0][0])


# -- labels ---------------------------------------------------------------------------------------
def ingest_labels(
    store: Store,
    path: str | Path,
    traffic: str,
    *,
    id_col: str = "request_id",
    label_col: str = "label",
    time_col: str | None = "label_time",
    task: str = BINARY,
    classes: Sequence[str] | None = None,
) -> LabelsResult:
    """Ingest labels for a traffic set; a later file's label for the same id replaces the earlier one.

    ``task`` says what the label column holds: 0/1 classes (``binary``), numbers, the targets of regression
    runs (``regression``), or class names or numbers, the targets of multi-class runs (``multiclass``), each
    kept apart, so one traffic set can hold all three for the same requests. ``classes`` (multi-class only):
    the classes a label may name; any other is quarantined (``unknown_class:<column>``)."""
    check_task(task)
    if classes is not None and task != MULTICLASS:
        raise WorkbenchError("--classes applies to multi-class labels only (--task multiclass)")
    known = sorted({str(c).strip() for c in classes or ()} - {""}) if classes is not None else None
    if known == []:
        raise WorkbenchError("--classes names no class")
    expr = {BINARY: _label_expr, REGRESSION: _value_expr, MULTICLASS: _class_expr}[task]
    store.require_traffic(traffic)
    files = resolve_paths(path)
    sha = file_sha256(files, check_text=True)
    ingest_id = uuid.uuid4().hex[:12]
    read = stored = unmatched = 0
    reasons: dict[str, int] = {}
    malformed: list[str] = []
    with store.transaction() as cur:
        for batch in read_batches(files, on_malformed=malformed.append):
            check_column_names(batch.schema.names, path)
            view = ArrowView(cur, "_wb_batch", pa.Table.from_batches([batch]))
            src_types = _column_types(view)
            missing = [c for c in (id_col, label_col) if c not in src_types]
            if missing:
                raise WorkbenchError(
                    f"labels file lacks column(s) {', '.join(missing)}; it has: "
                    f"{', '.join(repr(c) for c in list(src_types)[:30])}"
                )
            time_name = time_col if time_col and time_col in src_types else None
            lab = f"_wb_src.{qident(label_col)}"
            lab_expr = expr(lab, src_types[label_col])
            t_expr = (
                _cast_expr(time_name, src_types[time_name], "TIMESTAMP")
                if time_name is not None
                else "CAST(NULL AS TIMESTAMP)"
            )
            checks = [
                f"WHEN _wb_src.{qident(id_col)} IS NULL THEN {sql_literal('null:' + id_col)}",
                f"WHEN {_label_missing(lab, src_types[label_col])} THEN {sql_literal('null:' + label_col)}",
                f"WHEN {lab_expr} IS NULL THEN {sql_literal('type:' + label_col)}",
            ]
            if known is not None:
                listed = ", ".join(sql_literal(c) for c in known)
                checks.append(f"WHEN {lab_expr} NOT IN ({listed}) THEN {sql_literal('unknown_class:' + label_col)}")
            if time_name is not None:
                checks.append(
                    f"WHEN _wb_src.{qident(time_name)} IS NOT NULL AND {t_expr} IS NULL "
                    f"THEN {sql_literal('type:' + time_name)}"
                )
            view.execute(f"""CREATE OR REPLACE TEMP TABLE _wb_checked AS
                SELECT {read} + (row_number() OVER () - 1) AS _row,
                       CAST(_wb_src.{qident(id_col)} AS VARCHAR) AS request_id, {lab_expr} AS label,
                       {t_expr} AS label_time, CASE {" ".join(checks)} END AS _reason,
                       left(CAST(to_json(_wb_src) AS VARCHAR), {RAW_MAX_CHARS}) AS _raw
                FROM {view.name} AS _wb_src""")
            cur.execute("""UPDATE _wb_checked SET _reason = 'duplicate_id' WHERE _reason IS NULL AND _row IN (
                SELECT _row FROM (SELECT _row, row_number() OVER (PARTITION BY request_id ORDER BY _row) AS k
                FROM _wb_checked WHERE _reason IS NULL) WHERE k > 1)""")
            good = cur.sql(
                "SELECT request_id, label, label_time FROM _wb_checked WHERE _reason IS NULL"
            ).to_arrow_table()
            unmatched += store.upsert_labels(cur, traffic, good, task)
            cur.execute(
                """INSERT INTO quarantine SELECT ?, ?, 'labels', _row, request_id, _reason, _raw
                           FROM _wb_checked WHERE _reason IS NOT NULL""",
                [traffic, ingest_id],
            )
            for r, n in cur.execute(
                "SELECT _reason, count(*) FROM _wb_checked WHERE _reason IS NOT NULL GROUP BY 1"
            ).fetchall():
                reasons[r] = reasons.get(r, 0) + int(n)
            cur.execute("DROP TABLE _wb_checked")
            read += len(batch)
            stored += good.num_rows
        read += _quarantine_malformed(cur, traffic, ingest_id, "labels", malformed, reasons)
        store.record_ingest(
            cur,
            ingest_id=ingest_id,
            traffic=traffic,
            kind="labels",
            source=str(path),
            file_sha256=sha,
            rows_read=read,
            rows_ingested=stored,
            rows_quarantined=read - stored,
        )
    return LabelsResult(traffic, read, stored, unmatched, read - stored, dict(sorted(reasons.items())))

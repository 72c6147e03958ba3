"""The lake's data files on an object store (``$WORKBENCH_DATA_PATH=s3://bucket/prefix``).

DuckDB reads and writes them through its ``httpfs`` extension. The credentials come from the variables every
AWS tool reads: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION`` (or
``AWS_DEFAULT_REGION``) and, for an S3-compatible store (MinIO, Ceph, R2, ...), ``AWS_ENDPOINT_URL_S3`` or
``AWS_ENDPOINT_URL``. When any of them is set, each process's DuckDB gets a temporary secret made from them and
scoped to the data path (values bound as parameters: they never appear in SQL text, logs or errors); when none
is, DuckDB's own persistent secrets apply. A store that does not answer is named in one line.
"""

from __future__ import annotations

import os
import re
from urllib.parse import urlsplit

import duckdb

from workbench.errors import WorkbenchError

S3_SCHEMES = ("s3://", "s3a://", "s3n://")  # what DuckDB's S3 secrets cover
# the variables :func:`secret_from_env` reads
AWS_VARS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL",
)
PROBE = "workbench-probe-*"  # listed under the data path when a process attaches: matches nothing, costs one request
# the probe's HTTP timeout and retries: a store that never answers fails in about 10 s, not DuckDB's 2 minutes
# (30 s and 3 retries, kept for the data itself)
PROBE_TIMEOUT_S, PROBE_RETRIES = 5, 1
# the text of DuckDB's httpfs errors: an HTTP status from the store, or no connection to it at all
HTTP_ERROR = re.compile(r"HTTP Error|Could not (?:connect to server|resolve hostname|establish connection)|for HTTP ")


class DataPathUnreachable(WorkbenchError):
    """The lake's object-store data path does not answer, or refuses these credentials."""


def secret_from_env(data_path: str, name: str, env: dict[str, str] | None = None) -> tuple[str, list[str]] | None:
    """The ``CREATE SECRET`` statement (of secret ``name``) and its parameters for an S3 data path, from the
    standard AWS variables in ``env`` (default: this process's); None when the path is not S3 or none is set."""
    env = dict(os.environ) if env is None else env
    if not data_path.startswith(S3_SCHEMES):
        return None

    def var(*names: str) -> str | None:
        return next((env[n].strip() for n in names if env.get(n, "").strip()), None)

    key, secret, token = var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY"), var("AWS_SESSION_TOKEN")
    region, endpoint = var("AWS_REGION", "AWS_DEFAULT_REGION"), var("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
    if (key is None) != (secret is None):
        have, lacks = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")[:: 1 if key else -1]
        raise WorkbenchError(f"${have} is set but ${lacks} is not: set both for the data path {data_path}, or neither")
    options: list[tuple[str, str]] = []
    if key is not None and secret is not None:
        options += [("KEY_ID", key), ("SECRET", secret)] + ([("SESSION_TOKEN", token)] if token else [])
    if region is not None:
        options.append(("REGION", region))
    if endpoint is not None:
        url = urlsplit(endpoint)
        if url.scheme not in ("http", "https") or not url.netloc or url.path.strip("/"):
            raise WorkbenchError(
                f"$AWS_ENDPOINT_URL must be the store's address such as http://minio.internal:9000, not {endpoint!r}"
            )
        # an S3-compatible store: addressed by path (bucket in the path, as MinIO, Ceph and R2 accept)
        options += [("ENDPOINT", url.netloc), ("URL_STYLE", "path")]
    if not options:
        return None
    sql = f"CREATE OR REPLACE TEMPORARY SECRET {name} (TYPE s3, "
    sql += ", ".join(f"{k} ?" for k, _ in options)
    if endpoint is not None:
        sql += f", USE_SSL {'true' if urlsplit(endpoint).scheme == 'https' else 'false'}"
    return sql + ", SCOPE ?)", [v for _, v in options] + [data_path]


def aws_env() -> dict[str, str]:
    """The :data:`AWS_VARS` set in this process: what a worker elsewhere (a Ray actor) needs to reach the data
    path as this process does."""
    return {name: os.environ[name] for name in AWS_VARS if os.environ.get(name, "").strip()}


def connect_data_path(con: duckdb.DuckDBPyConnection, data_path: str, secret: str) -> None:
    """Give ``con``'s DuckDB (httpfs loaded) the credentials for ``data_path`` (as secret ``secret``) and check
    that the store answers there (one listing that matches nothing, with a short timeout); a store that does not
    raises :class:`DataPathUnreachable`."""
    made = secret_from_env(data_path, secret)
    if made is not None:
        try:
            con.execute(*made)
        except duckdb.Error as e:  # the statement's text is not repeated: its values are credentials
            raise WorkbenchError(
                f"cannot make DuckDB's secret for the data path {data_path} from the AWS_* variables "
                f"({type(e).__name__})"
            ) from None
    settings = ("http_timeout", "http_retries")
    before = con.execute("SELECT current_setting(?), current_setting(?)", list(settings)).fetchall()[0]
    for name, value in zip(settings, (PROBE_TIMEOUT_S, PROBE_RETRIES), strict=True):
        con.execute(f"SET {name} = ?", [value])
    try:
        con.execute("SELECT count(*) FROM glob(?)", [data_path + PROBE]).fetchall()
    except duckdb.Error as e:
        raise DataPathUnreachable(unreachable(data_path, str(e))) from None
    finally:
        for name, value in zip(settings, before, strict=True):
            con.execute(f"SET {name} = ?", [value])


def data_path_problem(exc: BaseException, data_path: str | None) -> str | None:
    """The one-line explanation when ``exc`` is DuckDB failing to reach an object store; None otherwise.
    ``data_path``: the configured data path (None: the URL in the error is named)."""
    text = str(exc)
    if not isinstance(exc, duckdb.Error) or HTTP_ERROR.search(text) is None or "install the required" in text:
        return None  # (DuckDB trying to download an extension is no object store's fault)
    if data_path is None:
        m = re.search(r"'((?:s3a?|s3n|gcs?|gs|r2|az|azure|abfss?|https?)://[^']*)'", text)
        data_path = m.group(1) if m else "(the object store)"
    return unreachable(data_path, text)


def unreachable(data_path: str, error: str) -> str:
    """The one-line error for an object-store data path that does not answer or refuses the credentials."""
    lines = [line.strip() for line in error.splitlines() if line.strip()]
    reason = re.sub(r"^(?:HTTP|IO) Error:\s*", "", lines[0]) if lines else "no answer"
    code = next((line for line in lines[1:] if re.match(r"^[A-Z][A-Za-z]+: ", line)), None)
    if code is not None:
        reason += f": {code}"
    return (
        f"the workbench's data path {data_path} ($WORKBENCH_DATA_PATH) cannot be used ({reason.rstrip('.')}); "
        "check that the bucket exists, the endpoint ($AWS_ENDPOINT_URL) and the credentials ($AWS_ACCESS_KEY_ID, "
        "$AWS_SECRET_ACCESS_KEY, or DuckDB's persistent secrets), then run the command again"
    )

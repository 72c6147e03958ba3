"""The model registry read for browsing (the app's Candidates, Replay and Audit pages) without importing MLflow.

Importing MLflow and setting up its SQL store costs about 2 s of CPU, which a page's first visit would pay
for a list of names, aliases and tags. So :class:`~workbench.decide.registry.Registry` reads that list here
when the tracking URI allows it: an HTTP(S) server through MLflow's REST API (``registered-models/search``,
``model-versions/search``, ``runs/get``), a local SQLite store through its tables, opened read-only. Anything
else (another database, a file store, a plugin's URI, workspaces, TLS or authentication settings other than
a token or a user and password) is read with MLflow's client, as is a SQLite store whose tables are not laid
out as expected (:class:`LayoutChanged`). Both ways give the same rows (a test compares them).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from urllib.parse import quote

from workbench import WorkbenchError

TAG_PREFIX = "canary."
MAX_MODELS = 200  # as many as one page of MLflow's registered-model search
DELETED = "Deleted_Internal"  # MLflow's stage of a deleted model version (hidden from its searches)
DEFAULT_WORKSPACE = "default"  # the only workspace of a store without MLflow's workspaces
# MLflow's client settings that the REST read does not apply: with any of them set, MLflow's client reads
CLIENT_ONLY_SETTINGS = (
    "MLFLOW_ENABLE_WORKSPACES",
    "MLFLOW_TRACKING_AUTH",
    "MLFLOW_TRACKING_AWS_SIGV4",
    "MLFLOW_TRACKING_INSECURE_TLS",
    "MLFLOW_TRACKING_CLIENT_CERT_PATH",
    "MLFLOW_TRACKING_SERVER_CERT_PATH",
    "MLFLOW_WORKSPACE",
)


class LayoutChanged(Exception):
    """A SQLite store's tables are not the ones this module reads (another MLflow version): use MLflow's client."""


def model_entry(name: str, description: str | None, aliases: dict, tags: dict, versions: list[dict]) -> dict:
    """One registered model as the pages show it: its aliases, ``canary.*`` tags and versions (newest first),
    each version with its own aliases and ``canary.*`` tags."""
    aliases = {a: str(v) for a, v in aliases.items()}
    by_version: dict[str, list[str]] = {}
    for a, v in aliases.items():
        by_version.setdefault(v, []).append(a)
    return {
        "name": name,
        "description": description or None,
        "aliases": aliases,
        "tags": {k: v for k, v in tags.items() if k.startswith(TAG_PREFIX)},
        "versions": [
            {
                "version": str(v["version"]),
                "aliases": sorted(by_version.get(str(v["version"]), [])),
                "status": v["status"],
                "run_id": v["run_id"] or None,
                "created_at": v["created_at"],
                "tags": {k: t for k, t in v["tags"].items() if k.startswith(TAG_PREFIX)},
            }
            for v in versions
        ],
    }


def direct_reader(uri: str, timeout_s: float = 30.0) -> RestRegistry | SqliteRegistry | None:
    """The reader for ``uri`` that needs no MLflow import, or None where MLflow's client must read."""
    if any(os.environ.get(k) for k in CLIENT_ONLY_SETTINGS):
        return None
    if uri.startswith(("http://", "https://")):
        return RestRegistry(uri, timeout_s)
    if uri.startswith("sqlite:///") and "?" not in uri:
        return SqliteRegistry(Path(uri.removeprefix("sqlite:///")))
    return None


class RestRegistry:
    """An MLflow tracking server's registry through its REST API (a token or a user and password as MLflow's
    ``MLFLOW_TRACKING_TOKEN`` / ``MLFLOW_TRACKING_USERNAME`` and ``MLFLOW_TRACKING_PASSWORD`` set them)."""

    def __init__(self, uri: str, timeout_s: float = 30.0):
        self.base = uri.rstrip("/") + "/api/2.0/mlflow/"
        self.timeout_s = timeout_s

    def _get(self, path: str, params: dict, missing_ok: bool = False) -> dict | None:
        import httpx

        headers, auth = {}, None
        if os.environ.get("MLFLOW_TRACKING_TOKEN"):
            headers["Authorization"] = f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"
        elif os.environ.get("MLFLOW_TRACKING_USERNAME"):
            auth = (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ.get("MLFLOW_TRACKING_PASSWORD", ""))
        try:
            r = httpx.get(self.base + path, params=params, headers=headers, auth=auth, timeout=self.timeout_s)
        except httpx.HTTPError as e:
            raise WorkbenchError(f"MLflow at {self.base} did not answer {path}: {type(e).__name__}") from None
        if r.status_code == 404 and missing_ok:
            return None
        if r.status_code != 200:
            try:
                detail = r.json().get("message") or r.text
            except ValueError:
                detail = r.text
            raise WorkbenchError(f"MLflow answered {path} with HTTP {r.status_code}: {detail[:300]}")
        return r.json()

    def list_models(self, max_versions: int) -> list[dict]:
        """Registered models with their aliases, tags and newest versions (see :func:`model_entry`)."""
        out = []
        found = self._get("registered-models/search", {"max_results": MAX_MODELS}) or {}
        for m in found.get("registered_models", []):
            found_versions = self._get(
                "model-versions/search",
                {
                    "filter": f"name = '{filter_value(m['name'])}'",
                    "max_results": max_versions,
                    "order_by": ["version_number DESC"],
                },
            )
            versions = [
                {
                    "version": v["version"],
                    "status": v.get("status"),
                    "run_id": v.get("run_id"),
                    "created_at": v.get("creation_timestamp"),
                    "tags": _pairs(v.get("tags")),
                }
                for v in (found_versions or {}).get("model_versions", [])
            ]
            aliases = {a["alias"]: a["version"] for a in m.get("aliases", [])}
            out.append(model_entry(m["name"], m.get("description"), aliases, _pairs(m.get("tags")), versions))
        return sorted(out, key=lambda m: m["name"])

    def run_experiments(self, run_ids: list[str]) -> dict[str, str]:
        """The experiment id of each run that exists."""
        out = {}
        for run_id in run_ids:
            found = self._get("runs/get", {"run_id": run_id}, missing_ok=True)
            if found is not None:
                out[run_id] = str(found["run"]["info"]["experiment_id"])
        return out


class SqliteRegistry:
    """A local SQLite tracking store's registry, read from its tables on a read-only connection (a store not
    created yet has no models: it is not created here)."""

    def __init__(self, path: Path):
        self.path = path

    def _rows(self, sql: str, params: tuple = ()) -> list[tuple]:
        uri = f"file:{quote(str(self.path.resolve()))}?mode=ro"
        try:
            con = sqlite3.connect(uri, uri=True, timeout=30)
        except sqlite3.Error as e:
            raise WorkbenchError(f"the MLflow store {self.path} could not be opened: {e}") from None
        try:
            return con.execute(sql, params).fetchall()
        except sqlite3.OperationalError as e:
            if "no such" in str(e):  # no such table / column: another layout
                raise LayoutChanged(str(e)) from None
            raise WorkbenchError(f"the MLflow store {self.path} could not be read: {e}") from None
        finally:
            con.close()

    def list_models(self, max_versions: int) -> list[dict]:
        """Registered models with their aliases, tags and newest versions (see :func:`model_entry`)."""
        if not self.path.exists():
            return []
        w = (DEFAULT_WORKSPACE,)
        models = self._rows(
            "SELECT name, description FROM registered_models WHERE workspace = ? ORDER BY name LIMIT ?",
            (*w, MAX_MODELS),
        )
        aliases = _grouped(
            self._rows("SELECT name, alias, version FROM registered_model_aliases WHERE workspace = ?", w)
        )
        tags = _grouped(self._rows("SELECT name, key, value FROM registered_model_tags WHERE workspace = ?", w))
        out = []
        for name, description in models:
            rows = self._rows(
                "SELECT version, status, run_id, creation_time FROM model_versions WHERE workspace = ? AND name = ? "
                "AND current_stage != ? ORDER BY version DESC LIMIT ?",
                (*w, name, DELETED, max_versions),
            )
            version_tags = _grouped(
                self._rows(
                    "SELECT version, key, value FROM model_version_tags WHERE workspace = ? AND name = ?", (*w, name)
                )
            )
            versions = [
                {
                    "version": v,
                    "status": status,
                    "run_id": run_id,
                    "created_at": created,
                    "tags": version_tags.get(v, {}),
                }
                for v, status, run_id, created in rows
            ]
            out.append(model_entry(name, description, aliases.get(name, {}), tags.get(name, {}), versions))
        return out

    def run_experiments(self, run_ids: list[str]) -> dict[str, str]:
        """The experiment id of each run that exists."""
        if not run_ids or not self.path.exists():
            return {}
        marks = ", ".join("?" * len(run_ids))
        rows = self._rows(f"SELECT run_uuid, experiment_id FROM runs WHERE run_uuid IN ({marks})", tuple(run_ids))
        return {run_id: str(exp) for run_id, exp in rows}


def _grouped(rows: list[tuple]) -> dict:
    """``(owner, key, value)`` rows as ``{owner: {key: value}}``."""
    out: dict = {}
    for owner, key, value in rows:
        out.setdefault(owner, {})[key] = value
    return out


def _pairs(items: list[dict] | None) -> dict:
    """MLflow's REST ``[{"key", "value"}]`` tags as a dict."""
    return {i["key"]: i.get("value") for i in items or []}


def filter_value(text: str) -> str:
    """A value inside a single-quoted MLflow search filter."""
    return text.replace("\\", "\\\\").replace("'", "\\'")

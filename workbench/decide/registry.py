"""MLflow as the system of record for decisions: a run per decision, version tags, aliases, stages, webhooks.

Each applied decision logs an MLflow run (params, metrics, and the signed record, its canonical bytes
and signature, the scorecard, the evaluation and the drift report as artifacts; one run per decision id,
however often it is published) and tags the candidate version with ``canary.verdict``, ``canary.weight``,
``canary.decision_id``, ``canary.signature``, and the registered model with the chain head
(``canary.sequence``, ``canary.record_hash``, ``canary.decision_id``: a witness, see
:class:`RegistryWitness`). At 100 % the candidate takes the champion alias and the old champion keeps the
previous alias; a ROLLBACK (or the kill switch) after a promotion hands the champion
alias back to the baseline. Decisions applied while MLflow was down are pushed later by
:func:`sync_pending` (``workbench sync``).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import re
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from workbench import WorkbenchError
from workbench.decide.canary import SignedDecision, sync
from workbench.decide.policy import RegistryOptions, Verdict
from workbench.decide.registry_read import (
    MAX_MODELS,
    TAG_PREFIX,
    LayoutChanged,
    direct_reader,
    filter_value,
    model_entry,
)
from workbench.decide.signing import SignatureError, canonical_bytes, record_hash, verify_signature
from workbench.decide.witness import WitnessHead, WitnessUnavailable
from workbench.paths import within
from workbench.roles import ROLES
from workbench.store import Store

log = logging.getLogger(__name__)
WEBHOOK_EVENTS = ("model_version.created", "model_version_alias.created")
_DECISION_ID = re.compile(r"[A-Za-z0-9_.-]{1,100}")  # whole-string matches only (fullmatch: no trailing newline)


def _metric_key(text: str) -> str:
    return "".join(c if c.isalnum() or c in "_-. /" else "_" for c in text)[:250]


class Registry:
    """An MLflow client bound to one tracking/registry URI (MLflow is imported here, lazily)."""

    def __init__(
        self,
        tracking_uri: str,
        artifact_root: Path | None = None,
        health_timeout_s: float = 3.0,
        direct_reads: bool = True,
    ):
        """``artifact_root``: where a new decisions experiment keeps artifacts when MLflow is a local store
        (a server keeps them where it is configured to). ``direct_reads``: browse the registry without MLflow's
        client where the URI allows (:mod:`workbench.decide.registry_read`); False reads everything with it."""
        self.uri = tracking_uri
        self.direct_reads = direct_reads
        self._client = None
        self.artifact_root = artifact_root
        self.health_timeout_s = health_timeout_s

    @property
    def client(self):
        """The MLflow client, made on first use (a down server is found by :meth:`check_reachable` without
        importing MLflow)."""
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        return self._client

    @property
    def remote(self) -> bool:
        return self.uri.startswith(("http://", "https://"))

    def check_reachable(self) -> None:
        """Fail fast when an MLflow server does not answer ``/health`` (local stores need no check)."""
        if not self.remote:
            return
        import httpx

        try:
            r = httpx.get(self.uri.rstrip("/") + "/health", timeout=self.health_timeout_s)
        except httpx.HTTPError as e:
            raise WorkbenchError(f"MLflow at {self.uri} is unreachable: {type(e).__name__}") from None
        if r.status_code != 200:
            raise WorkbenchError(f"MLflow at {self.uri} answered /health with HTTP {r.status_code}")

    # -- decisions ------------------------------------------------------------------------------
    def publish(self, signed, evaluation: dict | None = None, drift: dict | None = None) -> str:
        """Log the decision run, tag the candidate version, move aliases/stages. Returns the run id."""
        self.check_reachable()
        r = signed.record
        opts = RegistryOptions.model_validate(r.get("registry") or {})
        # MLflow prints run links on stdout for a tracking server: stdout is the CLI's JSON
        with contextlib.redirect_stdout(sys.stderr):
            run_id = self.decision_run(r["decision_id"], opts.experiment) or self._log_run(
                signed, opts, evaluation, drift
            )
            self._tag_versions(signed, run_id)
            self._move_aliases(r, opts)
            if opts.stage_transitions:
                self._move_stages(r)
        return run_id

    def decision_run(self, decision_id: str, experiment: str) -> str | None:
        """The finished MLflow run of an earlier publish of ``decision_id``, so that publishing again (after a
        crash or a timeout, or by ``workbench sync``) logs nothing twice. An unfinished run of it, left by an
        interrupted publish, is deleted (it is logged again in full)."""
        from mlflow.entities import ViewType

        if not _DECISION_ID.fullmatch(decision_id):  # it goes into a filter string: nothing but id characters
            raise WorkbenchError(f"invalid decision id {decision_id!r}")
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            return None
        finished = None
        for run in self.client.search_runs(
            [exp.experiment_id],
            f"tags.`canary.decision_id` = '{decision_id}'",
            run_view_type=ViewType.ACTIVE_ONLY,
            order_by=["attributes.start_time"],
        ):
            if run.info.status == "FINISHED" and finished is None:
                finished = run.info.run_id
            else:
                self.client.delete_run(run.info.run_id)
        return finished

    def _log_run(self, signed, opts: RegistryOptions, evaluation: dict | None, drift: dict | None) -> str:
        from mlflow.entities import Metric, Param, RunStatus

        r = signed.record
        exp = self.client.get_experiment_by_name(opts.experiment)
        if exp is not None:
            exp_id = exp.experiment_id
        else:
            location = (
                None
                if self.remote or self.artifact_root is None
                else within(self.artifact_root, opts.experiment, "decision experiment folder").as_uri()
            )
            exp_id = self.client.create_experiment(opts.experiment, artifact_location=location)
        run = self.client.create_run(
            exp_id,
            run_name=r["decision_id"],
            tags={
                "canary.decision_id": r["decision_id"],
                "canary.model": r["model"],
                "canary.kind": r["kind"],
                "canary.verdict": r["verdict"],
            },
        )
        run_id = run.info.run_id
        params = {
            "model": r["model"],
            "kind": r["kind"],
            "verdict": r["verdict"],
            "sequence": r["sequence"],
            "baseline_version": r["baseline"]["version"],
            "candidate_version": r["candidate"]["version"],
            "replay_run_id": r["run_id"],
            "traffic": r["traffic"],
            "traffic_fingerprint": r["traffic_fingerprint"],
            "policy_hash": r["policy_hash"],
            "evaluation_hash": r["evaluation_hash"],
            "drift_hash": r["drift_hash"],
            "key_fingerprint": r["key_fingerprint"],
            "signer": r["signer"],
            "created_at": r["created_at"],
        }
        now = int(time.time() * 1000)
        metrics = {"weight_before": r["weight_before"], "weight_after": r["weight_after"]}
        card = r.get("scorecard") or {}
        for outcome, n in (card.get("counts") or {}).items():
            metrics[f"checks_{outcome}"] = n
        for c in card.get("checks") or []:
            if c["kind"] not in ("metric", "latency", "errors"):
                continue
            for role in ROLES:
                if c.get(role) is not None:
                    metrics[_metric_key(f"{c['metric']}_{role}")] = c[role]
            for part, v in (c.get("delta") or {}).items():
                if v is not None and c["kind"] != "errors":
                    metrics[_metric_key(f"{c['metric']}_delta" + ("" if part == "value" else f"_{part}"))] = v
        self.client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
            params=[Param(k, "" if v is None else str(v)) for k, v in params.items()],
        )
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            (d / "decision.json").write_text(json.dumps(signed.to_dict(), indent=2, ensure_ascii=False))
            (d / "record.bin").write_bytes(canonical_bytes(r))
            (d / "record.sig").write_bytes(base64.b64decode(signed.signature))
            (d / "scorecard.json").write_text(json.dumps(card, indent=2))
            if evaluation is not None:
                (d / "evaluation.json").write_text(json.dumps(evaluation, indent=2, default=str))
            if drift is not None:
                (d / "drift.json").write_text(json.dumps(drift, indent=2, default=str))
            self.client.log_artifacts(run_id, tmp, artifact_path="decision")
        self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
        return run_id

    def _tag_versions(self, signed, run_id: str) -> None:
        r = signed.record
        name, version = r["model"], r["candidate"]["version"]
        tags = {
            "verdict": r["verdict"],
            "weight": str(r["weight_after"]),
            "decision_id": r["decision_id"],
            "signature": signed.signature,
            "record_sha256": record_hash(r),
            "decision_run_id": run_id,
            "reason": r["reason"][:4000],
        }
        for k, v in tags.items():
            self.client.set_model_version_tag(name, version, TAG_PREFIX + k, v)
        published = self.client.get_registered_model(name).tags.get(TAG_PREFIX + "sequence")
        if published is not None and published.isdigit() and int(published) > int(r["sequence"]):
            return  # a later record is already the model's head in MLflow (published out of order)
        model_tags = {
            "weight": str(r["weight_after"]),
            "decision_id": r["decision_id"],
            "candidate_version": version,
            "baseline_version": r["baseline"]["version"] or "",
            "kind": r["kind"],
            "record_hash": record_hash(r),
            "sequence": str(r["sequence"]),  # last: a reader seeing it sees the tags above (the chain head witness)
        }
        for k, v in model_tags.items():
            self.client.set_registered_model_tag(name, TAG_PREFIX + k, v)

    def alias_version(self, name: str, alias: str) -> str | None:
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_model_version_by_alias(name, alias).version)
        except MlflowException:
            return None

    def _move_aliases(self, r: dict, opts: RegistryOptions) -> None:
        name, cand, base = r["model"], r["candidate"]["version"], r["baseline"]["version"]
        champion = self.alias_version(name, opts.champion_alias)
        if r["weight_after"] == 100 and champion != cand:
            if champion is not None:
                self.client.set_registered_model_alias(name, opts.previous_alias, champion)
            self.client.set_registered_model_alias(name, opts.champion_alias, cand)
            log.info(
                "%s v%s is now %s (v%s kept as %s)", name, cand, opts.champion_alias, champion, opts.previous_alias
            )
        elif r["verdict"] == Verdict.ROLLBACK and champion == cand and base and base != cand:
            self.client.set_registered_model_alias(name, opts.champion_alias, base)
            self.client.set_model_version_tag(name, cand, TAG_PREFIX + "rolled_back_from", opts.champion_alias)
            log.info("%s: %s handed back to v%s after rollback", name, opts.champion_alias, base)

    def _move_stages(self, r: dict) -> None:
        name, cand = r["model"], r["candidate"]["version"]
        before, after = r["weight_before"], r["weight_after"]
        if after == 100 and before < 100:
            self.client.transition_model_version_stage(name, cand, "Production", archive_existing_versions=True)
        elif after > 0 and before == 0:
            self.client.transition_model_version_stage(name, cand, "Staging")
        elif r["verdict"] == Verdict.ROLLBACK:
            self.client.transition_model_version_stage(name, cand, "Archived")

    # -- webhooks -------------------------------------------------------------------------------
    def ensure_webhook(self, url: str, secret: str, name: str = "canary-workbench") -> str:
        """Create (or update, by name) the webhook that sends new versions and aliases to ``url``."""
        for hook in self.client.list_webhooks():
            if hook.name == name:
                return self.client.update_webhook(
                    hook.webhook_id, url=url, events=list(WEBHOOK_EVENTS), secret=secret, status="ACTIVE"
                ).webhook_id
        return self.client.create_webhook(name=name, url=url, events=list(WEBHOOK_EVENTS), secret=secret).webhook_id

    # -- browsing (the app's Candidates and Audit pages) ----------------------------------------
    def list_models(self, max_versions: int = 50) -> list[dict]:
        """Registered models with their aliases, ``canary.*`` tags and newest versions (each with its aliases,
        status, source run and ``canary.*`` tags); read without MLflow's client where the URI allows
        (:mod:`workbench.decide.registry_read`)."""
        self.check_reachable()
        found = self._read_directly(lambda reader: reader.list_models(max_versions))
        if found is not None:
            return found
        out = []
        for m in self.client.search_registered_models(max_results=MAX_MODELS):
            versions = self.client.search_model_versions(
                f"name = '{filter_value(m.name)}'", max_results=max_versions, order_by=["version_number DESC"]
            )
            rows = [
                {
                    "version": v.version,
                    "status": v.status,
                    "run_id": v.run_id,
                    "created_at": v.creation_timestamp,
                    "tags": v.tags or {},
                }
                for v in versions
            ]
            out.append(model_entry(m.name, m.description, m.aliases or {}, m.tags or {}, rows))
        return sorted(out, key=lambda m: m["name"])

    def run_experiments(self, run_ids: list[str]) -> dict[str, str]:
        """The experiment id of each MLflow run that exists (for links to the MLflow UI)."""
        found = self._read_directly(lambda reader: reader.run_experiments(run_ids))
        if found is not None:
            return found
        from mlflow.exceptions import MlflowException

        out = {}
        for run_id in run_ids:
            try:
                out[run_id] = self.client.get_run(run_id).info.experiment_id
            except MlflowException:
                continue
        return out

    def _read_directly(self, read: Callable):
        """``read(reader)`` with the reader that needs no MLflow import; None where MLflow's client must read."""
        reader = direct_reader(self.uri) if self.direct_reads else None
        if reader is None:
            return None
        try:
            return read(reader)
        except LayoutChanged as e:
            log.info("the MLflow store at %s is read with MLflow's client (%s)", self.uri, e)
            return None


class RegistryWitness:
    """The registered model's ``canary.sequence`` / ``canary.record_hash`` / ``canary.decision_id`` tags as a
    witness of the chain head outside the database (:mod:`workbench.decide.witness`). They lag while a record
    waits for ``workbench sync``; MLflow being down makes the witness unavailable, never agreeing."""

    name = "MLflow"

    def __init__(self, registry: Registry):
        self.registry = registry

    def head(self, model: str, trusted) -> WitnessHead | None:
        """The head MLflow names for ``model`` (None when it names none: no such model, no decision published)."""
        from mlflow.exceptions import MlflowException

        try:
            self.registry.check_reachable()
            with contextlib.redirect_stdout(sys.stderr):
                tags = self.registry.client.get_registered_model(model).tags or {}
        except WorkbenchError as e:
            raise WitnessUnavailable(str(e)) from None
        except MlflowException as e:
            if e.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise WitnessUnavailable(f"MLflow: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        seq, digest = tags.get(TAG_PREFIX + "sequence"), tags.get(TAG_PREFIX + "record_hash")
        if seq is None or digest is None:
            return None
        if not seq.isdigit() or int(seq) < 1:
            raise SignatureError(f"MLflow's canary.sequence tag of {model} is not a sequence number: {seq!r}")
        return WitnessHead(self.name, int(seq), digest, tags.get(TAG_PREFIX + "decision_id"))


def mlflow_ui_base(tracking_uri: str) -> str | None:
    """The MLflow UI's address for links: ``WORKBENCH_MLFLOW_UI``, else the tracking URI when it is an HTTP(S)
    server, else None (a local store has no UI of its own)."""
    import os

    if os.environ.get("WORKBENCH_MLFLOW_UI"):
        return os.environ["WORKBENCH_MLFLOW_UI"].rstrip("/")
    return tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else None


def run_url(ui_base: str | None, experiment_id: str | None, run_id: str) -> str | None:
    """The MLflow UI page of a run, when the UI's address is known."""
    if not ui_base or experiment_id is None:
        return None
    return f"{ui_base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def model_version_url(ui_base: str | None, model: str, version: str) -> str | None:
    """The MLflow UI page of a registered model's version, when the UI's address is known."""
    if not ui_base:
        return None
    return f"{ui_base.rstrip('/')}/#/models/{quote(model, safe='')}/versions/{version}"


def publisher(store, tracking_uri: str, artifact_root: Path | None = None) -> Callable[[SignedDecision], str]:
    """``publish(signed) -> MLflow run id``: an applied record with its run's latest evaluation when it covers
    the finished run and its labels as they are now (the fixed-horizon numbers people read; the judged numbers
    are in the record's scorecard) and the drift report it was judged with (only when it is the one the
    record's hash names)."""
    from workbench.decide.canary import load_drift
    from workbench.decide.signing import content_hash
    from workbench.evaluate.stored import evaluation_is_current

    registry = Registry(tracking_uri, artifact_root)

    def publish(signed: SignedDecision) -> str:
        r = signed.record
        evaluation = drift = None
        if r.get("run_id"):
            evaluation = store.latest_evaluation(r["run_id"])
            if evaluation is not None and evaluation_is_current(store, evaluation) is not None:
                evaluation = None  # a partial or out-of-date evaluation is not published beside the decision
            dr = load_drift(store, r["run_id"])
            drift = dr if content_hash(dr) == r.get("drift_hash") else None
        return registry.publish(signed, evaluation, drift)

    return publish


def publish_applied(store, signed, tracking_uri: str, artifact_root: Path | None = None) -> dict:
    """Publish an applied record to MLflow (see :func:`publisher`). On failure the record stays stored with
    ``pending_sync``. Returns ``{"mlflow_run_id", "pending_sync", "sync_error"}``.
    """
    run_id, err = sync(store, signed, publisher(store, tracking_uri, artifact_root))
    return {"mlflow_run_id": run_id, "pending_sync": err is not None, "sync_error": err}


# -- pending decisions: decisions applied while MLflow was down, pushed later ------------------
@dataclass(frozen=True)
class SyncResult:
    synced: list = field(default_factory=list)  # [{"decision_id", "model", "mlflow_run_id"}]
    failed: list = field(default_factory=list)  # [{"decision_id", "model", "error"}], still pending

    def to_dict(self) -> dict:
        return {"synced": self.synced, "failed": self.failed, "pending": len(self.failed)}


def sync_pending(store: Store, publish: Callable[[SignedDecision], str], trusted: Mapping) -> SyncResult:
    """Publish every applied decision still marked ``pending_sync``, per model in chain order.

    Each stored record is verified first (a tampered one is never pushed); publishing is idempotent on
    the decision id (:meth:`Registry.decision_run`), so a decision reaches MLflow once however often this
    runs or is interrupted. After a model's first failure its later decisions wait (aliases and tags must
    move in chain order).
    """
    result = SyncResult()
    blocked: set[str] = set()
    for row in store.pending_sync_records():
        did, model = row["decision_id"], row["model"]
        if model in blocked:
            result.failed.append(
                {
                    "decision_id": did,
                    "model": model,
                    "error": "waiting: an earlier decision of this model is still pending",
                }
            )
            continue
        signed = SignedDecision(json.loads(row["record"]), row["signature"])
        err: str | None
        try:
            verify_signature(signed.record, signed.signature, trusted)
            if signed.decision_id != did:
                raise SignatureError(f"decision {did}: the stored record names another id")
        except SignatureError as e:
            err = str(e)
        else:
            run_id, err = sync(store, signed, publish)
        if err is None:
            result.synced.append({"decision_id": did, "model": model, "mlflow_run_id": run_id})
        else:
            blocked.add(model)
            result.failed.append({"decision_id": did, "model": model, "error": err})
    return result

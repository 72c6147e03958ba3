"""The workbench HTTP service (FastAPI): MLflow webhooks in, a job queue out; the weight API; health.

``create_app(settings)`` builds the app from routers, so further endpoints (the weight API, a job
runner) are added as routers of their own. Each request opens the DuckDB store briefly, so the service
does not hold the database's single-writer lock between requests.

Webhooks: ``POST /webhooks/mlflow`` verifies ``X-MLflow-Signature`` (``v1,<base64 HMAC-SHA256 of
"{delivery_id}.{timestamp}.{payload}">`` with the shared secret) and rejects timestamps outside the
tolerance (replays); a bad or old delivery gets 401 and changes nothing. ``model_version.created`` and
``model_version_alias.created`` queue one replay-evaluate-decide job per delivery id (idempotent).

Weight API: ``GET /v1/canary/{model}`` (weight, versions, decision id, signature, verified, verdict: what
Argo Rollouts' web metric gates on), ``GET /v1/decisions/{id}``, ``POST /v1/flagger/{model}/{hook}``
(Flagger's confirm-traffic-increase, confirm-promotion and rollback webhooks: 200 or 412 from the latest
verified decision). State changes (``POST /v1/canary/{model}/kill``, ``POST /v1/canary/{model}/resume``,
``POST /v1/decisions``) need ``Authorization: Bearer $WORKBENCH_API_TOKEN``. Everything served about a weight
or a decision comes from the verified signed records (:mod:`workbench.decide.chain`), cross-checked against the
published weight documents; anything that disagrees is served as unverified with weight 0. FastAPI serves the
OpenAPI spec at ``/openapi.json``.

Hostile clients (see :mod:`workbench.live.limits`): bodies over the limit get 413 before they are read;
credentials (the bearer token, the webhook's signature headers and timestamp) are checked before a body is
read; error answers never repeat the request's body; a malformed payload (wrong shapes, nesting too deep
to parse) gets 400 or 422; a write that loses a race with another one (two kills at once) gets 409.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import time
import uuid
from collections.abc import Callable

from fastapi import APIRouter, BackgroundTasks, Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from workbench import WorkbenchError
from workbench.config import Settings
from workbench.decide.canary import SignedDecision, apply_decision, build_kill, build_resume, record_sync, try_publish
from workbench.decide.chain import COLUMNS, live_view, verify_decision
from workbench.decide.decisions import witnesses
from workbench.decide.policy import load_policy
from workbench.decide.signing import KeyRing, SignatureError
from workbench.live.limits import BodyLimit, ServiceLimits
from workbench.live.mesh import FLAGGER_HOOKS, flagger_gate
from workbench.ops.jobs import JOB_KIND
from workbench.ops.observability import metrics_router
from workbench.store import WRITE_CONFLICTS, Store

log = logging.getLogger(__name__)
DEFAULT_TOLERANCE_S = 300
HANDLED_EVENTS = ("model_version.created", "model_version_alias.created")
WORKBENCH_ALIASES = ("champion", "previous")  # set by the workbench itself: never a new candidate
EVENT_PART_RE = re.compile(r"[a-z][a-z_]{0,63}")


def signature_of(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    """The ``X-MLflow-Signature`` value MLflow sends for a delivery."""
    mac = hmac.new(secret.encode("utf-8"), f"{delivery_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode("ascii")


def check_delivery_headers(headers, now: float, tolerance_s: float) -> tuple[str, str, str]:
    """(delivery id, timestamp, signature) of a fresh delivery, checked before its body is read; 401 otherwise."""
    delivery_id = headers.get("x-mlflow-delivery-id")
    timestamp = headers.get("x-mlflow-timestamp")
    given = headers.get("x-mlflow-signature")
    if not (delivery_id and timestamp and given):
        raise HTTPException(401, "missing X-MLflow-Signature, X-MLflow-Timestamp or X-MLflow-Delivery-Id")
    try:
        ts = int(timestamp)
    except ValueError:
        raise HTTPException(401, "X-MLflow-Timestamp is not a unix time") from None
    if abs(now - ts) > tolerance_s:
        raise HTTPException(401, f"timestamp outside the {tolerance_s:g} s tolerance (replayed or clock skew)")
    return delivery_id, timestamp, given


def check_signature(secret: str, headers, body: bytes, now: float, tolerance_s: float) -> str:
    """The delivery id of an authentic, fresh delivery; raises 401 otherwise."""
    delivery_id, timestamp, given = check_delivery_headers(headers, now, tolerance_s)
    expected = signature_of(secret, delivery_id, timestamp, body)
    if not any(hmac.compare_digest(expected, part.strip()) for part in given.split(" ") if part.strip()):
        raise HTTPException(401, "X-MLflow-Signature does not match")
    return delivery_id


def parse_event(body: bytes) -> tuple[str, dict]:
    """(event, data) of an MLflow webhook payload; 400 for anything else (never echoing the body)."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
        raise HTTPException(400, "the payload is not JSON (or is nested too deeply)") from None
    if not isinstance(payload, dict):
        raise HTTPException(400, "the payload is not an MLflow webhook event (not a JSON object)")
    entity, action, data = payload.get("entity"), payload.get("action"), payload.get("data")
    if not all(isinstance(v, str) and EVENT_PART_RE.fullmatch(v) for v in (entity, action)):
        raise HTTPException(400, "the payload is not an MLflow webhook event (entity and action must be names)")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise HTTPException(400, "the payload's data must be a JSON object")
    return f"{entity}.{action}", data


def job_params(event: str, data: dict) -> dict | None:
    """What a replay-evaluate-decide job needs from a webhook payload; None when the event is not a candidate.
    A name, version or alias of the wrong type is a 400."""
    name, version, alias = data.get("name"), data.get("version"), data.get("alias")
    if name is not None and not isinstance(name, str):
        raise HTTPException(400, "data.name must be a string")
    if version is not None and (isinstance(version, bool) or not isinstance(version, str | int)):
        raise HTTPException(400, "data.version must be a string or an integer")
    if alias is not None and not isinstance(alias, str):
        raise HTTPException(400, "data.alias must be a string")
    if not name or version is None:
        return None
    alias = alias if event == "model_version_alias.created" else None
    if alias in WORKBENCH_ALIASES:
        return None
    return {
        "model": name,
        "version": str(version),
        "alias": alias,
        "candidate_uri": f"models:/{name}/{version}",
        "baseline_uri": f"models:/{name}@champion",
    }


def _enqueue(settings: Settings, delivery_id: str, event: str, params: dict) -> tuple[dict, bool]:
    with Store(settings.db_path) as store:
        return store.enqueue_job(
            job_id="job_" + uuid.uuid4().hex[:12], kind=JOB_KIND, delivery_id=delivery_id, event=event, params=params
        )


def webhook_router(settings: Settings, tolerance_s: float, clock: Callable[[], float]) -> APIRouter:
    router = APIRouter()

    @router.post("/webhooks/mlflow", status_code=202)
    async def mlflow_webhook(request: Request):
        if not settings.webhook_secret:
            raise HTTPException(503, "no webhook secret configured (WORKBENCH_WEBHOOK_SECRET)")
        check_delivery_headers(request.headers, clock(), tolerance_s)  # before a byte of the body is read
        body = await request.body()  # bounded by BodyLimit
        delivery_id = check_signature(settings.webhook_secret, request.headers, body, clock(), tolerance_s)
        event, data = parse_event(body)
        params = job_params(event, data) if event in HANDLED_EVENTS else None
        if params is None:
            return {"status": "ignored", "event": event, "delivery_id": delivery_id}
        job, created = await run_in_threadpool(_enqueue, settings, delivery_id, event, params)
        log.info("webhook %s %s: job %s %s", event, delivery_id, job["job_id"], "queued" if created else "duplicate")
        return {
            "status": "queued" if created else "duplicate",
            "job_id": job["job_id"],
            "event": event,
            "delivery_id": delivery_id,
        }

    return router


def health_router() -> APIRouter:
    router = APIRouter()

    @router.get("/healthz")
    async def healthz():  # on the event loop: answers at once while database work fills the thread pool
        return {"status": "ok"}

    return router


# -- the weight API: canary state for routers, Argo Rollouts and Flagger -----------------------
class CanaryView(BaseModel):
    """The live canary state of a model, from the head of its signed decision chain."""

    model: str
    weight: int = Field(description="percent of traffic on the candidate (0-100)")
    baseline_version: str | None
    candidate_version: str | None
    decision_id: str | None
    signature: str | None = Field(description="base64 Ed25519 signature of the head record")
    verified: bool = Field(
        description="the whole chain verifies, the cached state is its head and no witness (the published weight "
        "document) shows a later or another head; weight is 0 otherwise"
    )
    verdict: str | None = Field(
        description='latest decision\'s verdict in lower case ("promote", "hold", '
        '"rollback") when verified, else "unverified"; Argo Rollouts: '
        'successCondition: result.verdict == "promote"'
    )
    killed: bool = Field(description="the kill switch holds this candidate version at 0 until a signed resume")
    paused: bool = Field(
        default=False, description="an approver paused the canary at its weight: no decision moves it up until a resume"
    )
    sequence: int | None
    ramp: list[int] | None
    witnesses: dict[str, str] = Field(default_factory=dict, description="what each witness of the head said")
    problem: str | None = None


class DecisionView(BaseModel):
    """A stored signed decision record and whether it verifies now."""

    decision_id: str
    model: str
    kind: str
    verdict: str
    weight_before: int
    weight_after: int
    created_at: str
    record: dict
    signature: str
    applied: bool
    sequence: int | None
    verified: bool
    note: str | None = None
    problem: str | None = None


class GateAnswer(BaseModel):
    """A Flagger webhook's answer: HTTP 200 when ``allowed``, 412 otherwise."""

    model: str
    hook: str
    allowed: bool
    reason: str
    weight: int
    verdict: str | None
    decision_id: str | None


class KillRequest(BaseModel):
    reason: str


class ResumeRequest(BaseModel):
    version: str
    reason: str


class SignedRecord(BaseModel):
    """What ``workbench decide --no-apply --json`` printed (other keys are ignored)."""

    record: dict
    signature: str


def _view(settings: Settings, keys: KeyRing, model: str) -> dict:
    with Store(settings.db_path) as store:  # read-write like every request here: DuckDB refuses mixed modes
        view = live_view(store, model, keys.trusted, witnesses(settings))
    if view["decision_id"] is None:
        raise HTTPException(404, f"model {model} has no canary decision")
    return view


def _decision(settings: Settings, keys: KeyRing, decision_id: str) -> dict:
    with Store(settings.db_path) as store:
        row = store.get_decision(decision_id)
        if row is None:
            raise HTTPException(404, f"no decision {decision_id}")
        signed = SignedDecision(json.loads(row["record"]), row["signature"])
        r = signed.record  # what is shown comes from the signed record, never from the table's copies
        out = {
            "decision_id": decision_id,
            "model": r.get("model", row["model"]),
            "kind": r.get("kind", "?"),
            "verdict": r.get("verdict", "?"),
            "weight_before": r.get("weight_before", 0),
            "weight_after": r.get("weight_after", 0),
            "created_at": r.get("created_at"),
            "record": r,
            "signature": row["signature"],
            "applied": row["applied_sequence"] is not None,
            "sequence": row["applied_sequence"],
        }
        try:
            note = verify_decision(store, signed, keys.trusted).note
            edited = [c for c in (*COLUMNS, "model") if row[c] != r.get(c)]
            if edited:
                raise SignatureError(
                    f"decision {decision_id}: the decisions table's {', '.join(edited)} disagree with the signed "
                    "record (edited columns)"
                )
            out |= {"verified": True, "note": note}
        except SignatureError as e:
            out |= {"verified": False, "problem": str(e)}
    return out


def _publish(settings: Settings, signed: SignedDecision) -> None:
    """Publish an applied record to MLflow after the answer went out (a down MLflow leaves pending_sync)."""
    from workbench.decide.registry import Registry

    run_id, err = try_publish(
        signed, lambda d: Registry(settings.mlflow_tracking_uri, settings.artifacts_dir).publish(d)
    )
    with Store(settings.db_path) as store:
        record_sync(store, signed.decision_id, run_id, err)


def _apply(
    settings: Settings, keys: KeyRing, make: Callable[[Store], SignedDecision], model: str | None = None
) -> tuple[dict, SignedDecision]:
    try:
        with Store(settings.db_path) as store:
            signed = make(store)
            witness = witnesses(settings)
            apply_decision(store, signed, keys.trusted, witnesses=witness)
            return live_view(store, signed.model, keys.trusted, witness), signed
    except WorkbenchError as e:  # refused records, no key, no state: the client can act on the message
        raise HTTPException(409, str(e)) from None
    except WRITE_CONFLICTS:  # another request moved the same chain at the same moment; it won, this one rolled back
        log.info("concurrent canary write refused (%s)", model or "a signed record")
        where = f"GET /v1/canary/{model}" if model else "GET /v1/canary/MODEL"
        raise HTTPException(
            409,
            "another decision for this model was applied at the same moment; this request changed nothing "
            f"(read {where} and retry if it is still needed)",
        ) from None


def token_problem(settings: Settings, authorization: str | None) -> HTTPException | None:
    """Why a request's ``Authorization`` header does not carry the API token (None when it does)."""
    if not settings.api_token:
        return HTTPException(503, "no API token configured (WORKBENCH_API_TOKEN): state changes are disabled")
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), settings.api_token.encode()):
        return HTTPException(
            401,
            "a valid bearer token is required (Authorization: Bearer <token>)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return None


def _bearer(settings: Settings):
    scheme = HTTPBearer(auto_error=False, description="WORKBENCH_API_TOKEN")

    def require_token(creds: HTTPAuthorizationCredentials | None = Depends(scheme)) -> None:
        header = f"{creds.scheme} {creds.credentials}" if creds is not None else None
        problem = token_problem(settings, header)
        if problem is not None:
            raise problem

    return require_token


class _TokenFirst:
    """Check the API token of the routes that need it before their body is read (FastAPI reads a route's body
    before it runs the route's dependencies)."""

    def __init__(self, app: ASGIApp, settings: Settings, routes: list[APIRoute]):
        self.app, self.settings, self.routes = app, settings, routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and any(
            scope["method"] in (r.methods or ()) and r.path_regex.match(scope["path"]) for r in self.routes
        ):
            problem = token_problem(self.settings, Headers(scope=scope).get("authorization"))
            if problem is not None:
                headers = {**(problem.headers or {}), "connection": "close"}  # the body is never read
                response = JSONResponse({"error": problem.detail}, status_code=problem.status_code, headers=headers)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def weights_router(settings: Settings, keys: KeyRing, require_token: Callable | None = None) -> APIRouter:
    """``/v1/canary``, ``/v1/decisions`` and ``/v1/flagger``: reads are open, state changes need the token.
    Records verify against ``keys`` (the service's ring); the kill switch signs with its signer."""
    router = APIRouter(prefix="/v1")
    auth = [Depends(require_token or _bearer(settings))]

    @router.get("/canary/{model}", response_model=CanaryView, tags=["canary"])
    async def canary(model: str):
        """The model's canary weight, versions and latest decision (Argo Rollouts' web metric reads this)."""
        return await run_in_threadpool(_view, settings, keys, model)

    @router.get("/decisions/{decision_id}", response_model=DecisionView, tags=["canary"])
    async def decision(decision_id: str):
        """A stored decision record, its signature, and whether it verifies in its chain."""
        return await run_in_threadpool(_decision, settings, keys, decision_id)

    @router.post(
        "/flagger/{model}/{hook}",
        response_model=GateAnswer,
        tags=["flagger"],
        responses={412: {"model": GateAnswer, "description": "the gate is closed"}},
    )
    async def flagger(model: str, hook: str, request: Request):
        """Flagger webhooks: ``confirm-traffic-increase``, ``confirm-promotion``, ``rollback``."""
        if hook not in FLAGGER_HOOKS:
            raise HTTPException(404, f"unknown Flagger webhook {hook!r}: use one of {', '.join(FLAGGER_HOOKS)}")
        view = await run_in_threadpool(_view, settings, keys, model)
        allowed, reason = flagger_gate(view, hook)
        answer = {
            "model": model,
            "hook": hook,
            "allowed": allowed,
            "reason": reason,
            "weight": view["weight"],
            "verdict": view["verdict"],
            "decision_id": view["decision_id"],
        }
        return JSONResponse(answer, status_code=200 if allowed else 412)

    @router.post("/canary/{model}/kill", response_model=CanaryView, tags=["canary"], dependencies=auth)
    async def kill(model: str, body: KillRequest, background: BackgroundTasks):
        """The kill switch: a signed ROLLBACK record (the service's key) sets the weight to 0 at once."""

        def make(store: Store) -> SignedDecision:
            return build_kill(store, model, body.reason, keys.signer, load_policy())

        view, signed = await run_in_threadpool(_apply, settings, keys, make, model)
        background.add_task(run_in_threadpool, _publish, settings, signed)
        return view

    @router.post("/canary/{model}/resume", response_model=CanaryView, tags=["canary"], dependencies=auth)
    async def resume(model: str, body: ResumeRequest, background: BackgroundTasks):
        """Release a killed candidate version (a signed ``resume`` record; the weight stays 0 until new
        decisions ramp it). Needs the same token as the kill switch and a non-empty reason."""

        def make(store: Store) -> SignedDecision:
            return build_resume(store, model, body.version, body.reason, keys.signer, load_policy())

        view, signed = await run_in_threadpool(_apply, settings, keys, make, model)
        background.add_task(run_in_threadpool, _publish, settings, signed)
        return view

    @router.post("/decisions", response_model=CanaryView, tags=["canary"], dependencies=auth)
    async def apply(body: SignedRecord, background: BackgroundTasks):
        """Apply a signed record made elsewhere (``decide --no-apply``); refused records answer 409."""
        view, signed = await run_in_threadpool(
            _apply, settings, keys, lambda _s: SignedDecision(body.record, body.signature)
        )
        background.add_task(run_in_threadpool, _publish, settings, signed)
        return view

    return router


def _validation_error(errors: list) -> list[dict]:
    """Where and why a body failed validation, without the offending input (never echo a body)."""
    return [
        {
            "loc": [str(part)[:64] for part in e.get("loc", ())][:8],
            "msg": str(e.get("msg", ""))[:200],
            "type": str(e.get("type", ""))[:64],
        }
        for e in errors[:10]
    ]


def create_app(
    settings: Settings,
    *,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    clock: Callable[[], float] = time.time,
    limits: ServiceLimits | None = None,
) -> FastAPI:
    """The service app; add routers with ``app.include_router`` to extend it. The key ring is made here, once:
    a key added or rotated later counts after a restart. Bodies over ``limits.max_body_bytes`` get 413."""
    limits = limits or ServiceLimits()
    settings.ensure()
    keys = KeyRing.from_settings(settings)
    app = FastAPI(
        title="canary-workbench",
        version="1",
        description="Signed canary decisions: weights for routers, meshes, Argo Rollouts and Flagger; "
        "MLflow webhooks in.",
    )
    app.state.settings = settings
    require_token = _bearer(settings)
    app.include_router(health_router())
    app.include_router(webhook_router(settings, tolerance_s, clock))
    app.include_router(metrics_router(settings, keys.trusted))
    weights = weights_router(settings, keys, require_token)
    app.include_router(weights)
    guarded = [
        r
        for r in weights.routes
        if isinstance(r, APIRoute) and any(d.dependency is require_token for d in r.dependencies)
    ]
    if not guarded:
        raise RuntimeError("no route needs the API token: the check before the body would guard nothing")
    app.add_middleware(_TokenFirst, settings=settings, routes=guarded)
    app.add_middleware(BodyLimit, max_body_bytes=limits.max_body_bytes)

    @app.exception_handler(HTTPException)
    async def _errors(request: Request, exc: HTTPException):
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return JSONResponse(
            {"error": "the request body is not valid", "problems": _validation_error(list(exc.errors()))},
            status_code=422,
        )

    return app

"""The workbench HTTP service (FastAPI): MLflow webhooks in, a job queue out; health.

``create_app(settings)`` builds the app from routers, so further endpoints (the weight API, a job
runner) are added as routers of their own. Each request opens the DuckDB store briefly, so the service
does not hold the database's single-writer lock between requests.

Webhooks: ``POST /webhooks/mlflow`` verifies ``X-MLflow-Signature`` (``v1,<base64 HMAC-SHA256 of
"{delivery_id}.{timestamp}.{payload}">`` with the shared secret) and rejects timestamps outside the
tolerance (replays); a bad or old delivery gets 401 and changes nothing. ``model_version.created`` and
``model_version_alias.created`` queue one replay-evaluate-decide job per delivery id (idempotent).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
import uuid
from typing import Callable

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from .config import Settings
from .observability import metrics_router
from .store import Store

log = logging.getLogger(__name__)
DEFAULT_TOLERANCE_S = 300
JOB_KIND = "replay_evaluate_decide"
HANDLED_EVENTS = ("model_version.created", "model_version_alias.created")
WORKBENCH_ALIASES = ("champion", "previous")  # set by the workbench itself: never a new candidate


def signature_of(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    """The ``X-MLflow-Signature`` value MLflow sends for a delivery."""
    mac = hmac.new(secret.encode("utf-8"), f"{delivery_id}.{timestamp}.".encode("utf-8") + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode("ascii")


def check_signature(secret: str, headers, body: bytes, now: float, tolerance_s: float) -> str:
    """The delivery id of an authentic, fresh delivery; raises 401 otherwise."""
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
    expected = signature_of(secret, delivery_id, timestamp, body)
    if not any(hmac.compare_digest(expected, part.strip()) for part in given.split(" ") if part.strip()):
        raise HTTPException(401, "X-MLflow-Signature does not match")
    return delivery_id


def job_params(event: str, data: dict) -> dict | None:
    """What a replay-evaluate-decide job needs from a webhook payload; None when the event is not a candidate."""
    name, version = data.get("name"), data.get("version")
    if not name or version is None:
        return None
    alias = data.get("alias") if event == "model_version_alias.created" else None
    if alias in WORKBENCH_ALIASES:
        return None
    return {"model": name, "version": str(version), "alias": alias,
            "candidate_uri": f"models:/{name}/{version}", "baseline_uri": f"models:/{name}@champion"}


def _enqueue(settings: Settings, delivery_id: str, event: str, params: dict) -> tuple[dict, bool]:
    with Store(settings.db_path) as store:
        return store.enqueue_job(job_id="job_" + uuid.uuid4().hex[:12], kind=JOB_KIND, delivery_id=delivery_id,
                                 event=event, params=params)


def webhook_router(settings: Settings, tolerance_s: float, clock: Callable[[], float]) -> APIRouter:
    router = APIRouter()

    @router.post("/webhooks/mlflow", status_code=202)
    async def mlflow_webhook(request: Request):
        if not settings.webhook_secret:
            raise HTTPException(503, "no webhook secret configured (WORKBENCH_WEBHOOK_SECRET)")
        body = await request.body()
        delivery_id = check_signature(settings.webhook_secret, request.headers, body, clock(), tolerance_s)
        try:
            payload = json.loads(body)
            event = f"{payload['entity']}.{payload['action']}"
            data = payload.get("data") or {}
        except (ValueError, KeyError, TypeError):
            raise HTTPException(400, "the payload is not an MLflow webhook event") from None
        params = job_params(event, data) if event in HANDLED_EVENTS else None
        if params is None:
            return {"status": "ignored", "event": event, "delivery_id": delivery_id}
        job, created = await run_in_threadpool(_enqueue, settings, delivery_id, event, params)
        log.info("webhook %s %s: job %s %s", event, delivery_id, job["job_id"], "queued" if created else "duplicate")
        return {"status": "queued" if created else "duplicate", "job_id": job["job_id"], "event": event,
                "delivery_id": delivery_id}

    return router


def health_router() -> APIRouter:
    router = APIRouter()

    @router.get("/healthz")
    def healthz():
        return {"status": "ok"}

    return router


def create_app(settings: Settings, *, tolerance_s: float = DEFAULT_TOLERANCE_S,
               clock: Callable[[], float] = time.time) -> FastAPI:
    """The service app; add routers with ``app.include_router`` to extend it."""
    settings.ensure()
    app = FastAPI(title="canary-workbench", version="1")
    app.state.settings = settings
    app.include_router(health_router())
    app.include_router(webhook_router(settings, tolerance_s, clock))
    app.include_router(metrics_router(settings.db_path))

    @app.exception_handler(HTTPException)
    async def _errors(request: Request, exc: HTTPException):
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code)

    return app

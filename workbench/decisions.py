"""Decisions for a configured workbench: sign with the home's key, apply, publish to MLflow.

The entry points (CLI, demo, jobs, app) use these so that the wiring of settings, keys, the canary chain
and the MLflow registry exists once. The rules themselves live in :mod:`workbench.canary` and
:mod:`workbench.policy`.
"""
from __future__ import annotations

from .config import Settings
from .store import Store


def trusted(settings: Settings) -> dict:
    """The public keys whose signatures may move a weight."""
    from .signing import trusted_keys

    return trusted_keys(settings.keys_dir, settings.trusted_keys_dir, settings.trusted_keys)


def signer(settings: Settings):
    """The home's signer (its private key stays in the key file)."""
    from .canary import Signer

    return Signer.from_keys_dir(settings.keys_dir, settings.signer)


def publish(settings: Settings, store: Store, signed) -> dict:
    """Publish an applied record to MLflow, with the evaluation and drift report it was judged on.

    MLflow being down leaves the record stored locally with ``pending_sync`` set (see ``canary.sync``).
    """
    from .registry import publish_applied

    return publish_applied(store, signed, settings.mlflow_tracking_uri, settings.artifacts_dir)


def decide(settings: Settings, store: Store, run_id: str, policy_path: str | None = None,
           apply: bool = True) -> dict:
    """Judge a run under a policy (the shipped default when None), sign the decision, and with ``apply``
    move the weight and publish it. Returns the ``decide --json`` object."""
    from .canary import apply_decision, build_decision
    from .policy import load_policy

    signed, card = build_decision(store, run_id, load_policy(policy_path), signer(settings))
    r = signed.record
    card_d = card.to_dict()
    out = {"decision_id": signed.decision_id, "verdict": r["verdict"], "reason": r["reason"],
           "weight_before": r["weight_before"], "weight_after": r["weight_after"], "checks": card_d["checks"],
           "skipped": card_d["skipped"], "record": r, "signature": signed.signature, "applied": False}
    if apply:
        apply_decision(store, signed, trusted(settings))
        out["applied"] = True
        out.update(publish(settings, store, signed))
    return out


def sync_pending(settings: Settings, store: Store) -> dict:
    """Publish the applied decisions still marked ``pending_sync`` (MLflow was down), in chain order, each
    once; returns ``{"synced", "failed", "pending"}`` (see :func:`workbench.registry.sync_pending`)."""
    from .registry import publisher, sync_pending as push

    return push(store, publisher(store, settings.mlflow_tracking_uri, settings.artifacts_dir),
                trusted(settings)).to_dict()


def apply_and_publish(settings: Settings, store: Store, signed) -> dict:
    """Apply a signed record to the canary state and publish it; returns the new status."""
    from .canary import apply_decision

    out = apply_decision(store, signed, trusted(settings)).to_dict()
    out.update(publish(settings, store, signed), verdict=signed.record["verdict"], signature=signed.signature)
    return out

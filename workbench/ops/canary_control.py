"""An approver's hand on a live canary: pause it at its weight, resume it, or abort it (the kill switch: weight 0).

Each is a signed record (:func:`workbench.decide.canary.build_pause`, :func:`~workbench.decide.canary.build_resume`,
:func:`~workbench.decide.canary.build_kill`) applied to the model's chain and published, so routers and the weight
API follow it. The role and the reason are checked here, not only by the page that offers the buttons.
"""

from __future__ import annotations

from workbench import WorkbenchError
from workbench.config import Settings
from workbench.decide.canary import build_kill, build_pause, build_resume, claimed_head
from workbench.decide.decisions import apply_and_publish
from workbench.decide.policy import Policy, load_policy
from workbench.decide.signing import KeyRing
from workbench.decide.signoff import required_text
from workbench.ops.access import Identity, signer_for
from workbench.store import Store

ACTIONS = {"pause": "pause a canary", "resume": "resume a canary", "abort": "abort a canary"}


def control_canary(
    settings: Settings,
    store: Store,
    keys: KeyRing,
    identity: Identity | None,
    model: str,
    action: str,
    reason: str | None,
    policy: Policy | None = None,
) -> dict:
    """Pause (hold at the current weight until a resume), resume (release the head's paused or killed candidate;
    the weight stays) or abort (weight 0, the version held there) ``model``'s canary as ``identity``, an approver,
    with a reason; returns the new status. Refused
    (:class:`~workbench.ops.access.AccessDenied`) for viewers and operators, and without a reason."""
    if action not in ACTIONS:
        raise WorkbenchError(f"unknown canary action {action!r}: one of {', '.join(ACTIONS)}")
    signer = signer_for(identity, keys, ACTIONS[action])
    why = required_text(reason, "reason")
    policy = policy or load_policy()
    if action == "pause":
        signed = build_pause(store, model, why, signer, policy)
    elif action == "resume":
        head = claimed_head(store, model)
        signed = build_resume(store, model, "" if head is None else str(head.pair[1]), why, signer, policy)
    else:
        signed = build_kill(store, model, why, signer, policy)
    return apply_and_publish(settings, store, keys, signed)

"""Decision, key, canary weight, service, webhook and sync commands, with their parser entries."""

from __future__ import annotations

import argparse
import sys

from workbench import WorkbenchError
from workbench.cli.common import _table, emit, log, open_store, settings_for


# -- decisions, keys, canary weight, service (policy / signing / canary / registry / service) -------
def _scorecard_text(d: dict) -> str:
    rows = [
        (
            c["gate"],
            c["outcome"].upper() if c["outcome"] == "fail" else c["outcome"],
            "yes" if c["critical"] else "",
            c["reason"],
        )
        for c in d["checks"]
    ]
    lines = [_table(rows, ("gate", "outcome", "critical", "reason"))]
    lines += [f"skipped {s['gate']}: {s['reason']}" for s in d.get("skipped", [])]
    lines += [f"context {c['name']}: {c['detail']}" for c in d.get("context", [])]
    if d.get("summary"):
        lines.append(d["summary"])
    lines.append(
        f"verdict {d['verdict']} ({d['reason']}); weight {d['weight_before']}% -> {d['weight_after']}%"
        + ("" if d.get("applied", True) else " (not applied)")
    )
    if d.get("override"):
        lines.append(f"override: the policy said {d['override']['verdict']}; {d['override']['reason']}")
    lines.append(f"decision {d['decision_id']} signed by {d['record']['signer']}: {d['record'].get('justification')}")
    if d.get("awaiting_approval"):
        lines.append(
            f"awaiting approval: {len(d['signed_by'])} of {d['quorum']} distinct approvers signed; another approver "
            f"runs `workbench decision approve {d['decision_id']} --justification TEXT`"
        )
    if d.get("pending_sync"):
        lines.append(f"not yet in MLflow ({d['sync_error']}); stored locally with pending_sync")
    return "\n".join(lines)


def _unreviewed(settings, run_id: str) -> str:
    """The justification of a decision signed without one (``decide`` without ``--justification``, kept
    working for scripts): the record says so, in the signed text."""
    return f"unreviewed: {settings.signer} signed the policy's verdict on run {run_id} without a justification"


def cmd_decide(args) -> None:
    from workbench.decide.decisions import decide
    from workbench.decide.signing import KeyRing

    if (args.override is None) != (args.reason is None):
        raise WorkbenchError("--override VERDICT and --reason TEXT go together: say why the verdict is overridden")
    settings = settings_for(args)
    keys = KeyRing.from_settings(settings, sign=True)
    with open_store(settings) as store:
        out = decide(
            settings,
            store,
            keys,
            args.run_id,
            args.policy,
            apply=args.apply,
            justification=args.justification or _unreviewed(settings, args.run_id),
            override=args.override,
            override_reason=args.reason,
        )
    emit(args, out, _scorecard_text)


def _approval_text(d: dict) -> str:
    line = f"{d['approver']} approved decision {d['decision_id']}: {len(d['signed_by'])} of {d['quorum']} signed"
    if d["applied"]:
        return line + f"; applied: weight {d['weight']}%"
    return line + " (awaiting more approvals)" if d["awaiting_approval"] else line


def cmd_decision_approve(args) -> None:
    from workbench.decide.decisions import approve
    from workbench.decide.signing import KeyRing

    settings = settings_for(args)
    keys = KeyRing.from_settings(settings, sign=True)
    with open_store(settings) as store:
        out = approve(settings, store, keys, args.decision_id, args.justification, keys.signer)
    emit(args, out, _approval_text)


def cmd_keys_init(args) -> None:
    from workbench.decide.signing import init_keys

    info = init_keys(settings_for(args).keys_dir)
    emit(
        args,
        info.to_dict(),
        lambda d: (
            f"key pair created: {d['fingerprint']}\n  private {d['private_key_path']} "
            f"(mode 0600)\n  public  {d['public_key_path']}"
        ),
    )


def cmd_keys_export(args) -> None:
    from workbench.decide.signing import key_fingerprint, own_public_key, public_pem

    key = own_public_key(settings_for(args).keys_dir)
    if args.json:
        emit(args, {"fingerprint": key_fingerprint(key), "public_key_pem": public_pem(key)})
    else:
        sys.stdout.write(public_pem(key))


def cmd_decision_verify(args) -> None:
    from workbench.decide.canary import load_signed
    from workbench.decide.chain import verify_decision
    from workbench.decide.signing import KeyRing

    settings = settings_for(args)
    keys = KeyRing.from_settings(settings)
    with open_store(settings) as store:
        res = verify_decision(store, load_signed(store, args.path_or_id), keys.trusted)
    emit(
        args,
        res.to_dict(),
        lambda d: (
            f"decision {d['decision_id']} ({d['model']}, {d['verdict']}"
            + (f", override of {d['override']['verdict']}" if d.get("override") else "")
            + f"): signature valid ({d['key_fingerprint']}, {d['signer']}), chain valid; "
            + (f"signed off by {', '.join(d['signed_by'])} ({len(d['approvals'])} approvals verified); ")
            + d["note"]
        ),
    )


def _status_text(d: dict) -> str:
    return (
        f"{d['model']}: candidate v{d['candidate_version']} at {d['weight']}% against baseline "
        f"v{d['baseline_version']} (decision {d['decision_id']}, "
        + ("verified)" if d["verified"] else f"NOT verified: {d.get('problem')})")
        + (", killed" if d.get("killed") else "")
        + (", paused" if d.get("paused") else "")
        + "".join(
            f"\ndecision {a['decision_id']} ({a['verdict']} to {a['weight_after']}%) awaits approval: "
            f"{len(a['signed_by'])} of {a['quorum']} signed ({', '.join(a['signed_by'])})"
            for a in d.get("awaiting_approval", [])
        )
    )


def cmd_canary_status(args) -> None:
    from workbench.decide.approvals import awaiting
    from workbench.decide.chain import status
    from workbench.decide.decisions import witnesses
    from workbench.decide.signing import KeyRing

    settings = settings_for(args)
    keys = KeyRing.from_settings(settings)
    with open_store(settings) as store:
        out = status(store, args.model, keys.trusted, witnesses(settings, mlflow=True)).to_dict()
        out["awaiting_approval"] = awaiting(store, args.model, keys.trusted)
    emit(args, out, _status_text)


def _apply_signed(args, build, *, sign: bool = True) -> None:
    """Apply the record ``build(store, keys)`` returns to its model's chain, publish it and print the status."""
    from workbench.decide.decisions import apply_and_publish
    from workbench.decide.signing import KeyRing

    settings = settings_for(args)
    keys = KeyRing.from_settings(settings, sign=sign)
    with open_store(settings) as store:
        out = apply_and_publish(settings, store, keys, build(store, keys))
    emit(args, out, _status_text)


def cmd_canary_kill(args) -> None:
    from workbench.decide.canary import build_kill
    from workbench.decide.policy import load_policy

    _apply_signed(args, lambda store, keys: build_kill(store, args.model, args.reason, keys.signer, load_policy()))


def cmd_canary_pause(args) -> None:
    from workbench.decide.canary import build_pause
    from workbench.decide.policy import load_policy

    _apply_signed(args, lambda store, keys: build_pause(store, args.model, args.reason, keys.signer, load_policy()))


def cmd_canary_resume(args) -> None:
    from workbench.decide.canary import build_resume
    from workbench.decide.policy import load_policy

    _apply_signed(
        args,
        lambda store, keys: build_resume(store, args.model, args.version, args.reason, keys.signer, load_policy()),
    )


def cmd_canary_apply(args) -> None:
    from workbench.decide.canary import load_signed

    _apply_signed(args, lambda store, keys: load_signed(store, args.path_or_id), sign=False)


def cmd_serve(args) -> None:
    from workbench.live.limits import ServiceLimits, serve
    from workbench.live.service import create_app

    settings = settings_for(args)
    given = {"max_body_bytes": args.max_body, "header_timeout_s": args.header_timeout}
    try:
        limits = ServiceLimits(**{k: v for k, v in given.items() if v is not None})
    except ValueError:
        raise WorkbenchError("--max-body must be >= 0 and --header-timeout > 0") from None
    serve(create_app(settings, limits=limits), args.host, args.port, limits)


def cmd_webhook_register(args) -> None:
    from workbench.decide.registry import WEBHOOK_EVENTS, Registry

    settings = settings_for(args)
    if not settings.webhook_secret:
        raise WorkbenchError("set WORKBENCH_WEBHOOK_SECRET: MLflow signs deliveries with it, the service checks them")
    webhook_id = Registry(settings.mlflow_tracking_uri).ensure_webhook(args.url, settings.webhook_secret)
    emit(
        args,
        {"webhook_id": webhook_id, "url": args.url, "events": list(WEBHOOK_EVENTS)},
        lambda d: f"webhook {d['webhook_id']} -> {d['url']} ({', '.join(d['events'])})",
    )


# -- reliability: decisions recorded while MLflow was down ------------------------------------
def cmd_sync(args) -> None:
    from workbench.decide.decisions import sync_pending
    from workbench.decide.signing import KeyRing

    settings = settings_for(args)
    keys = KeyRing.from_settings(settings)
    with open_store(settings) as store:
        res = sync_pending(settings, store, keys)
    for d in res["synced"]:
        log.info("decision %s (%s) is in MLflow: run %s", d["decision_id"], d["model"], d["mlflow_run_id"])
    if res["failed"]:
        first = res["failed"][0]
        raise WorkbenchError(
            f"{len(res['failed'])} decision(s) still pending after syncing {len(res['synced'])}: "
            f"{first['decision_id']} ({first['model']}): {first['error']}"
        )
    emit(args, res, lambda d: f"synced {len(d['synced'])} decision(s) to MLflow; none pending")


def add_decision_commands(sub, common):
    """Parser entries of the decision, key, canary and service commands; returns the ``canary`` actions."""
    s = sub.add_parser("decide", parents=[common], help="judge a replay run under a policy; sign and apply")
    s.add_argument("run_id")
    s.add_argument("--policy", default=None, help="policy file (.toml/.yaml/.json); default: the shipped policy")
    s.add_argument(
        "--justification",
        metavar="TEXT",
        default=None,
        help="why you sign it (signed into the record); without it the record says it was signed unreviewed",
    )
    s.add_argument(
        "--override",
        metavar="VERDICT",
        default=None,
        help="sign this verdict (PROMOTE, HOLD, ROLLBACK) instead of the policy's; the record keeps both",
    )
    s.add_argument("--reason", metavar="TEXT", default=None, help="why the verdict is overridden (with --override)")
    s.add_argument(
        "--apply",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="move the canary weight and publish to MLflow (default); --no-apply only signs and stores",
    )
    s.set_defaults(fn=cmd_decide)

    keys = sub.add_parser("keys", help="the Ed25519 signing key pair").add_subparsers(
        dest="keys_command", required=True, metavar="ACTION"
    )
    s = keys.add_parser("init", parents=[common], help="create the key pair (private key mode 0600)")
    s.set_defaults(fn=cmd_keys_init)
    s = keys.add_parser("export", parents=[common], help="print the PEM public key")
    s.set_defaults(fn=cmd_keys_export)

    dec = sub.add_parser("decision", help="signed decision records").add_subparsers(
        dest="decision_command", required=True, metavar="ACTION"
    )
    s = dec.add_parser("verify", parents=[common], help="check a record's signature and chain")
    s.add_argument("path_or_id", metavar="PATH_OR_ID", help="the JSON `decide --json` printed, or a decision id")
    s.set_defaults(fn=cmd_decision_verify)
    s = dec.add_parser(
        "approve",
        parents=[common],
        help="sign your approval of a decision that awaits approval; its quorum reached, it applies",
    )
    s.add_argument("decision_id", metavar="ID")
    s.add_argument("--justification", metavar="TEXT", required=True, help="why you approve it (signed)")
    s.set_defaults(fn=cmd_decision_approve)

    can = sub.add_parser("canary", help="the canary weight of a registered model").add_subparsers(
        dest="canary_command", required=True, metavar="ACTION"
    )
    s = can.add_parser("status", parents=[common], help="weight, versions and whether the chain verifies")
    s.add_argument("model")
    s.set_defaults(fn=cmd_canary_status)
    for action, fn, text in (
        ("kill", cmd_canary_kill, "set the weight to 0 at once and hold the candidate version there until resumed"),
        (
            "pause",
            cmd_canary_pause,
            "hold the canary at its current weight until resumed: decisions no longer move it up",
        ),
    ):
        s = can.add_parser(action, parents=[common], help=f"{text} (a signed record)")
        s.add_argument("model")
        s.add_argument("--reason", required=True)
        s.set_defaults(fn=fn)
    s = can.add_parser(
        "resume",
        parents=[common],
        help="release a killed or paused candidate version (a signed record; the weight stays until new decisions)",
    )
    s.add_argument("model")
    s.add_argument("--version", required=True, help="the killed or paused candidate version")
    s.add_argument("--reason", required=True)
    s.set_defaults(fn=cmd_canary_resume)
    s = can.add_parser("apply", parents=[common], help="apply a signed decision made with --no-apply")
    s.add_argument("path_or_id", metavar="PATH_OR_ID")
    s.set_defaults(fn=cmd_canary_apply)

    s = sub.add_parser(
        "sync",
        parents=[common],
        help="push decisions recorded while MLflow was unreachable (each exactly once, in chain order)",
    )
    s.set_defaults(fn=cmd_sync)

    s = sub.add_parser(
        "serve", parents=[common], help="the HTTP service (weight API, Flagger webhooks, MLflow webhooks, health)"
    )
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument(
        "--max-body",
        type=int,
        default=None,
        metavar="BYTES",
        help="request bodies over BYTES get 413 before they are read (default: 1 MiB)",
    )
    s.add_argument(
        "--header-timeout",
        type=float,
        default=None,
        metavar="S",
        help="a connection that has not sent a complete request header within S seconds is closed (default: 5)",
    )
    s.set_defaults(fn=cmd_serve)

    hook = sub.add_parser("webhook", help="MLflow webhooks").add_subparsers(
        dest="webhook_command", required=True, metavar="ACTION"
    )
    s = hook.add_parser("register", parents=[common], help="make MLflow send new versions and aliases to URL")
    s.add_argument("--url", required=True, help="e.g. http://127.0.0.1:8000/webhooks/mlflow")
    s.set_defaults(fn=cmd_webhook_register)
    return can

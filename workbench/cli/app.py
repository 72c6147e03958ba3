"""The Streamlit app command and its approvers (``app``, ``approver add/list/remove``)."""

from __future__ import annotations

import sys

from workbench import WorkbenchError
from workbench.cli.common import _table, emit, settings_for

NO_MLFLOW_UI_HELP = (
    "do not serve the MLflow UI beside the app (by default it serves on a free 127.0.0.1 port when the tracking "
    "URI is a local store and WORKBENCH_MLFLOW_UI is unset, so the app's MLflow links resolve)"
)


# -- the app and its approvers -----------------------------------------------------------
def _read_password(args) -> str | None:
    if args.no_password:
        return None
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif sys.stdin.isatty():
        import getpass

        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            raise WorkbenchError("the passwords differ")
    else:
        raise WorkbenchError(
            "no terminal to ask for the password: pipe it with --password-stdin, or use "
            "--no-password with --email for an OIDC-only approver"
        )
    if not password:
        raise WorkbenchError("the password must not be empty")
    return password


def cmd_approver_add(args) -> None:
    from workbench.ops.access import add_approver, approvers_path

    settings = settings_for(args)
    path = approvers_path(settings.home)
    approver = add_approver(path, args.name, password=_read_password(args), email=args.email, role=args.role)
    emit(
        args,
        approver.to_dict() | {"file": str(path)},
        lambda d: f"{d['role']} {d['name']} saved in {d['file']}" + (f" (e-mail {d['email']})" if d["email"] else ""),
    )


def cmd_approver_list(args) -> None:
    from workbench.ops.access import approvers_path, load_approvers

    approvers = load_approvers(approvers_path(settings_for(args).home))
    emit(
        args,
        {"approvers": [a.to_dict() for a in approvers.values()]},
        lambda d: _table(
            [(a["name"], a["role"], a["email"] or "", "yes" if a["password"] else "no") for a in d["approvers"]],
            ("name", "role", "email", "password"),
        ),
    )


def cmd_approver_remove(args) -> None:
    from workbench.ops.access import approvers_path, remove_approver

    remove_approver(approvers_path(settings_for(args).home), args.name)
    emit(args, {"removed": args.name}, lambda d: f"approver {d['removed']} removed")


def cmd_app(args) -> None:
    from pipelines.demo import serve_app

    serve_app(settings_for(args), args.port, lambda m: print(m, file=sys.stderr, flush=True), not args.no_mlflow_ui)


def add_app_commands(sub, common) -> None:
    """Parser entries of the app and approver commands."""
    s = sub.add_parser("app", parents=[common], help="serve the Streamlit workbench on 127.0.0.1")
    s.add_argument("--port", type=int, default=8501)
    s.add_argument("--no-mlflow-ui", action="store_true", help=NO_MLFLOW_UI_HELP)
    s.set_defaults(fn=cmd_app)
    appr = sub.add_parser("approver", help="who may start jobs or sign decisions in the app").add_subparsers(
        dest="approver_command", required=True, metavar="ACTION"
    )
    s = appr.add_parser("add", parents=[common], help="add (or replace) an approver or an operator")
    s.add_argument("name")
    s.add_argument("--email", default=None, help="the person's OIDC e-mail (when the app uses st.login)")
    s.add_argument(
        "--role",
        choices=["operator", "approver"],
        default="approver",
        help="operator: starts replays, jobs and drift; approver: also signs decisions (default)",
    )
    s.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    s.add_argument("--no-password", action="store_true", help="no local password (OIDC sign-in only)")
    s.set_defaults(fn=cmd_approver_add)
    s = appr.add_parser("list", parents=[common], help="list approvers and operators (never their hashes)")
    s.set_defaults(fn=cmd_approver_list)
    s = appr.add_parser("remove", parents=[common], help="remove an approver or an operator")
    s.add_argument("name")
    s.set_defaults(fn=cmd_approver_remove)

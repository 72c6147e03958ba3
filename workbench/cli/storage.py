"""Commands that look after the home's storage: ``gc`` (retention and compaction) and ``migrate``."""

from __future__ import annotations

import os
import sys

from workbench import WorkbenchError
from workbench.cli.common import emit, open_store, settings_for

DEFAULT_RETENTION_DAYS = 30.0  # $WORKBENCH_RETENTION_DAYS


def retention_days() -> float:
    """The retention setting: ``$WORKBENCH_RETENTION_DAYS`` or 30 days."""
    text = os.environ.get("WORKBENCH_RETENTION_DAYS", str(DEFAULT_RETENTION_DAYS))
    try:
        return float(text)
    except ValueError:
        raise WorkbenchError(f"WORKBENCH_RETENTION_DAYS must be a number of days, not {text!r}") from None


def cmd_gc(args) -> None:
    from workbench.store.maintenance import collect

    settings = settings_for(args)
    days = retention_days() if args.older_than is None else args.older_than
    with open_store(settings) as store:
        rep = collect(store, days, dry_run=args.dry_run).to_dict()
    emit(args, rep, _gc_text)


def _gc_text(d: dict) -> str:
    verb = "would drop" if d["dry_run"] else "dropped"
    rows = ", ".join(f"{k} {v:,}" for k, v in d["rows"].items() if v) or "no rows"
    lines = [
        f"retention {d['older_than_days']:g} days: {verb} {len(d['traffic_sets'])} job traffic set(s), "
        f"{len(d['runs'])} run(s) ({rows}) and {d['sketch_keys']} drift sketch(es)",
    ]
    if not d["dry_run"]:
        lines.append(
            f"expired {d['snapshots_expired']} snapshot(s); data files {d['files_before']} -> {d['files_after']}; "
            f"freed {d['bytes_freed'] / 1e6:,.1f} MB "
            f"({d['bytes_before'] / 1e6:,.1f} -> {d['bytes_after'] / 1e6:,.1f} MB)"
        )
    return "\n".join(lines)


def cmd_migrate(args) -> None:
    from workbench.store import Store
    from workbench.store.maintenance import migrate

    settings = settings_for(args)
    out = migrate(settings.home, Store, progress=lambda m: print(m, file=sys.stderr))
    emit(
        args,
        out,
        lambda d: (
            f"moved {len(d['tables'])} tables from {d['from']} into {d['to']} "
            f"({sum(t['rows'] for t in d['tables'].values()):,} rows, counts checked table by table)"
        ),
    )


def add_storage_commands(sub, common) -> None:
    s = sub.add_parser("gc", parents=[common], help="apply retention: drop old job data, merge small files")
    s.add_argument(
        "--older-than",
        type=float,
        default=None,
        metavar="DAYS",
        help="keep what is newer (default: $WORKBENCH_RETENTION_DAYS or 30)",
    )
    s.add_argument("--dry-run", action="store_true", help="report what would go, change nothing")
    s.set_defaults(fn=cmd_gc)
    s = sub.add_parser("migrate", parents=[common], help="move a home's old single-file database into the lake")
    s.set_defaults(fn=cmd_migrate)
